"""Data parallelism for the learner with torch.distributed: each rank holds a full copy of the model, collects
its own share of the step's tasks, and the update stays exactly the single-process one.

Exactness: the loss of every micro-batch is normalised by mini-batch totals (tokens, sequences, padded
length) summed over all ranks, so the per-rank gradients add up to the gradient of the whole batch; they are
summed with one all-reduce per mini-batch (what DDP does, without its wrapper: the learner calls
`model.base_model` directly) before clipping, so every rank clips the same global gradient and takes the same
optimizer step. Outside a process group (`torchrun` not used) every function here is a no-op.

`torchrun --nproc_per_node=N -m agentenv train ...` sets the environment `init_from_env` reads; the backend is
NCCL on CUDA and gloo on CPU.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["init_from_env", "rank_and_world", "is_main", "global_sum", "global_max", "all_reduce_gradients",
           "broadcast_model", "gather_objects", "shutdown"]


def init_from_env(device: str = "cpu") -> tuple[int, int]:
    """Join the process group `torchrun` describes (WORLD_SIZE > 1); returns (rank, world size)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
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
    """Sum every parameter's gradient over the ranks (a rank without one contributes zeros), in one flat buffer."""
    if rank_and_world()[1] == 1:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


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
