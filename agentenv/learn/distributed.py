"""Data parallelism for the learner with torch.distributed: each rank holds a full copy of the model, collects
its own share of the step's tasks, and the update stays exactly the single-process one.

Exactness: the loss of every micro-batch is normalised by mini-batch totals (tokens, sequences, padded
length) summed over all ranks, so the per-rank gradients add up to the gradient of the whole batch; they are
summed with one all-reduce per mini-batch (what DDP does, without its wrapper and its per-backward hooks) before
clipping, so every rank clips the same global gradient and takes the same optimizer step. Outside a process
group (`torchrun` not used) every function here is a no-op.

FSDP2 (`shard`, `TrainConfig.parallel=fsdp2`): parameters, gradients and optimizer state are sharded over the
ranks with `torch.distributed.fsdp.fully_shard`, one unit per decoder layer and the root unit for the rest
(embeddings, the output layer, tied or not, the final norm, a plug-in's head). The learner's code is the same:
it runs the model's own forward (so the root's hooks gather the root unit), reads the head weight, which the
root keeps whole from its forward to the end of its backward, and FSDP reduce-scatters the gradients as sums
(the loss is already normalised by global totals). Every forward is then a collective, so ranks run the same
number of them (`lockstep_count`, `on_every_rank`), and generation, whose length differs per rank, runs with
the parameters gathered once (`gathered`). Checkpoints hold whole tensors either way (`whole`,
`load_optimizer_state_dict`), so a run can resume under the other mode.

`torchrun --nproc_per_node=N -m agentenv train ...` sets the environment `init_from_env` reads; the backend is
NCCL on CUDA and gloo on CPU.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.distributed as dist

__all__ = ["init_from_env", "rank_and_world", "is_main", "global_sum", "global_max", "all_reduce_gradients",
           "clip_grad_norm", "broadcast_model", "gather_objects", "shutdown", "shard", "is_sharded", "lockstep_count",
           "on_every_rank", "gathered", "whole", "load_optimizer_state_dict"]


def init_from_env(device: str = "cpu") -> tuple[int, int]:
    """Join the process group `torchrun` describes (WORLD_SIZE > 1); returns (rank, world size). On CUDA, CUDA
    tensors go through NCCL and CPU tensors (the scalar reductions here) through gloo."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if device == "cuda" else "gloo")
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return rank_and_world()


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_and_world()[0] == 0


def _reduce(value: float, op: str) -> float:
    if rank_and_world()[1] == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
    return float(t)


def global_sum(value: float) -> float:
    """`value` summed over every rank."""
    return _reduce(value, "SUM")


def global_max(value: float) -> float:
    return _reduce(value, "MAX")


def all_reduce_gradients(model: torch.nn.Module) -> None:
    """Sum every parameter's gradient over the ranks (a rank without one contributes zeros), in one flat buffer.

    Sharded parameters (FSDP2) are left out: FSDP has already summed their gradients (reduce-scatter)."""
    if rank_and_world()[1] == 1:
        return
    params = [p for p in model.parameters() if p.requires_grad and not _is_dtensor(p)]
    if not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


@torch.no_grad()
def clip_grad_norm(model: torch.nn.Module, max_norm: float) -> float:
    """`torch.nn.utils.clip_grad_norm_` (same scaling rule) over the global gradient; returns the norm before
    clipping. Sharded gradients (FSDP2) add their shards' squares over the ranks; replicated ones count once.
    The squares are summed in float64: float32 sums leave ~1e-5 relative error in the norm, which differs with
    how the gradient is split (one process vs shards) and would break world-size equivalence of the clip."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return 0.0
    is_shard = [_is_dtensor(g) for g in grads]
    squares = torch.stack([torch.linalg.vector_norm(g.to_local() if shard else g, dtype=torch.float64)
                           for g, shard in zip(grads, is_shard)]).square()
    shard_mask = torch.tensor(is_shard, device=squares.device)
    sharded = squares[shard_mask].sum()
    if any(is_shard):
        dist.all_reduce(sharded)
    norm = float(sharded + squares[~shard_mask].sum()) ** 0.5
    scale = min(max_norm / (norm + 1e-6), 1.0)
    for g in grads:
        g.mul_(scale)
    return norm


@torch.no_grad()
def broadcast_model(model: torch.nn.Module, src: int = 0) -> None:
    """Every rank takes rank `src`'s parameters and buffers (after a warm start or a load)."""
    if rank_and_world()[1] == 1:
        return
    for tensor in [*model.parameters(), *model.buffers()]:
        dist.broadcast(tensor.data, src=src)


def gather_objects(obj: Any) -> list[Any]:
    """One picklable object per rank, in rank order, on every rank."""
    world = rank_and_world()[1]
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# -- FSDP2 ------------------------------------------------------------------------------------------


def _is_dtensor(tensor: Any) -> bool:
    if not dist.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def is_sharded(model: torch.nn.Module | None) -> bool:
    """True for a model `shard` has sharded (FSDP2): its forward and backward are collectives."""
    if model is None or not (dist.is_available() and dist.is_initialized()):
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _units(model: torch.nn.Module) -> list[torch.nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a Hugging Face model: the classes it names in `_no_split_modules`."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"{type(model).__name__} names no decoder layer class in _no_split_modules: cannot shard it by layer")
    return layers


def shard(model: torch.nn.Module) -> torch.nn.Module:
    """FSDP2, in place: each decoder layer one unit, whose parameters are gathered for its forward and again for
    its backward; the root unit (the model itself) holds everything else and stays gathered from its forward to
    the end of its backward, so the learner may read the output layer's weight after `model(...)`. Gradients are
    reduce-scattered as sums. Call it before building the optimizer (which must hold the sharded parameters).
    With one rank there is nothing to shard: the model comes back as it is."""
    world = rank_and_world()[1]
    if world == 1:
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(next(model.parameters()).device.type, (world,))
    for layer in _decoder_layers(model):
        fully_shard(layer, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=False)
    for unit in _units(model):
        unit.set_gradient_divide_factor(1.0)  # a sum, as the loss is normalised by global totals
        unit.set_force_sum_reduction_for_comms(True)  # plain SUM: gloo rejects PREMUL_SUM, the op for a factor != world
        unit.set_reduce_scatter_unused_params(True, recurse=False)  # a parameter without a gradient adds zeros (as all_reduce_gradients does): collectives stay the same on every rank
    return model


def lockstep_count(model: torch.nn.Module | None, count: int) -> int:
    """How many forward passes (micro-batches) this rank runs when it has `count`: the most over all ranks for a
    sharded model, whose every forward is a collective; `count` otherwise."""
    return int(global_max(count)) if is_sharded(model) else count


def on_every_rank(model: torch.nn.Module | None, flag: bool) -> bool:
    """`flag` and'ed over the ranks for a sharded model (every rank must take the same forward path), else `flag`."""
    if not is_sharded(model):
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t)


@contextmanager
def gathered(model: torch.nn.Module) -> Iterator[None]:
    """The whole parameters on every rank for the duration (a sharded model's units all-gathered once, on entry):
    forwards inside run no collective, so ranks may run different numbers of them (generation). No-op for an
    unsharded model. No backward may run inside."""
    units = _units(model) if is_sharded(model) else []
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(unit is not model, recurse=False)  # as `shard` set it


def whole(state: Any, on_every_rank: bool = False) -> Any:
    """A state dict (nested dicts and lists of tensors: a model's or an optimizer's) with every sharded tensor
    gathered whole; other tensors are left as they are. A collective for a sharded state (every rank calls it, in
    the same order). By default the gathered tensors are CPU copies kept on rank 0 alone (elsewhere None), one
    tensor at a time, so a checkpoint costs one CPU copy, not one per rank; `on_every_rank` keeps them on every
    rank, on the device (for a rollout engine)."""

    def gather(value: Any) -> Any:
        if _is_dtensor(value):
            full = value.full_tensor()
            return full if on_every_rank else full.cpu() if is_main() else None
        if isinstance(value, dict):
            return type(value)((k, gather(v)) for k, v in value.items())
        if isinstance(value, list):
            return [gather(v) for v in value]
        return value

    return gather(state)


def load_optimizer_state_dict(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a whole optimizer state (`whole(optimizer.state_dict())`, present on every rank) into an optimizer over
    sharded parameters: each rank keeps its own shard of every per-parameter tensor shaped like the parameter.
    Plain `load_state_dict` for unsharded parameters."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if any(_is_dtensor(p) for p in params):
        from torch.distributed.tensor import distribute_tensor

        def own_shard(value: Any, param: torch.Tensor) -> Any:
            if not (_is_dtensor(param) and isinstance(value, torch.Tensor) and value.shape == param.shape):
                return value  # a scalar such as Adam's step count
            return distribute_tensor(value.to(param.device), param.device_mesh, param.placements, src_data_rank=None)

        state = {**state, "state": {index: {key: own_shard(value, params[index]) for key, value in entry.items()}
                                    for index, entry in state["state"].items()}}
    optimizer.load_state_dict(state)
