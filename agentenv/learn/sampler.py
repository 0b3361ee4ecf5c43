"""Where rollouts are sampled: the engine (`Sampler`: the learner's own HF policy, an HF copy, or vLLM; or N
HF/vLLM engines in Ray actors) and,
with `rollout.max_staleness` k > 0, a background thread that generates the next steps' rollouts while the
learner updates (`AsyncRollouts`), off-policy by at most k updates, as verl/AReaL/PipelineRL do."""

from __future__ import annotations

import copy
import queue
import threading
from typing import Any, Callable

import torch

from agentenv.learn import distributed as D

__all__ = ["Sampler", "AsyncRollouts"]


class Sampler:
    """The rollout engine and its weights. With the HF engine and no staleness it is the learner's own policy
    (nothing to copy); otherwise a separate engine — an HF copy, a vLLM engine, or `rollout.engines` HF/vLLM
    engines in Ray actors (`agentenv.distributed.RayEngines`) — that `sync` feeds the
    learner's weights of `stale_steps` updates ago (with a lag, the lagging copies are kept in `history`,
    checkpointed for an exact resume)."""

    def __init__(self, cfg: Any, learner_policy: Any, model: torch.nn.Module, keys: set[str]):
        self.stale_steps, self.keys, self.history = cfg.rollout.stale_steps, keys, []
        if cfg.rollout.engines > 0:  # N engines in Ray actors, built from the run's model spec, then synced
            from agentenv.distributed import RayEngines
            from agentenv.learn.distributed import rank_and_world

            parameter = next(model.parameters())
            rank_seed = cfg.seed + 1_000_003 * rank_and_world()[0]  # each data-parallel rank samples its own, as train._build
            options = {"dtype": str(parameter.dtype).removeprefix("torch."),
                       **(cfg.rollout.vllm if cfg.rollout.engine == "vllm" else {})}
            self.policy = RayEngines(cfg.rollout.engine, cfg.model, learner_policy.tokenizer, engines=cfg.rollout.engines,
                                     seed=rank_seed, temperature=cfg.temperature, top_p=cfg.top_p,
                                     max_new_tokens=cfg.max_new_tokens, device=parameter.device.type, options=options,
                                     address=cfg.rollout.address)
        elif cfg.rollout.engine == "vllm":
            from agentenv.policies.vllm import VLLMPolicy

            options = {"dtype": str(next(model.parameters()).dtype).removeprefix("torch."), **cfg.rollout.vllm}  # the learner's
            if getattr(learner_policy, "hears_audio", False):  # its processor renders the audio the same way
                options["processor"] = learner_policy.processor
            self.policy = VLLMPolicy(model, learner_policy.tokenizer, temperature=cfg.temperature, top_p=cfg.top_p,
                                     max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, **options)
        elif self.stale_steps > 0 or cfg.rollout.max_staleness > 0:
            from agentenv.policies.hf import HFPolicy

            self.policy = HFPolicy(copy.deepcopy(model).requires_grad_(False), learner_policy.tokenizer,
                                   device=str(next(model.parameters()).device), temperature=cfg.temperature,
                                   top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
        else:
            self.policy = learner_policy
        self.separate = self.policy is not learner_policy

    def sync(self, model: torch.nn.Module) -> None:
        """After an update (or the warm start): the sampler takes the weights of `stale_steps` updates ago."""
        if not self.separate:
            return
        if not self.stale_steps:  # the current weights: nothing to keep (the engine copies them in)
            self.push({k: v.detach() for k, v in self._weights(model).items() if k in self.keys})
            return
        self.history.append(self.snapshot(model))
        del self.history[: max(0, len(self.history) - self.stale_steps - 1)]
        self.push(self.history[0])

    def resume(self, history: list[dict[str, torch.Tensor]], model: torch.nn.Module) -> None:
        """Back to the state a checkpoint saved: its weight history (or the model's current weights)."""
        self.history = list(history)
        if not self.history:
            self.sync(model)
        elif self.separate:
            self.push(self.history[0])

    def snapshot(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """A CPU copy of the weights the engine takes (not a plug-in's extra head)."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self._weights(model).items() if k in self.keys}

    @staticmethod
    def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The model's state dict, whole (an FSDP2-sharded model's gathered on every rank: a collective)."""
        return D.whole(model.state_dict(), on_every_rank=True)

    def close(self) -> None:
        """End a separate engine (vLLM's engine, the Ray engine actors); the learner's own policy stays."""
        close = getattr(self.policy, "close", None)
        if self.separate and callable(close):
            close()

    def push(self, weights: dict[str, torch.Tensor]) -> None:
        """The engine takes `weights` (a `snapshot`, or live tensors it copies in)."""
        if hasattr(self.policy, "load_weights"):  # an engine: weights pushed in place
            self.policy.load_weights(weights)
        else:
            self.policy.model.load_state_dict(weights, strict=False)


class AsyncRollouts:
    """Rollouts of steps `start … end-1` produced in a background thread, at most `max_staleness` steps ahead.

    The learner publishes its weights after every update (`publish(version, model)`, version = updates done).
    The rollouts of step s are generated with the newest published weights, waiting until their version is
    at least s − k, so the staleness s − version is always in [0, k] (`next` returns it). The engine's weights
    change only in this thread, between two collects, never during one.
    """

    def __init__(self, sampler: Sampler, collect_step: Callable[[int], Any], start: int, end: int, max_staleness: int):
        if not sampler.separate:
            raise ValueError("asynchronous rollouts need a separate engine (an HF copy or vLLM)")
        self.sampler, self.collect_step, self.k = sampler, collect_step, max_staleness
        self._ready: queue.Queue = queue.Queue(maxsize=max_staleness)
        self._latest: tuple[int, dict[str, torch.Tensor]] | None = None
        self._changed = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, args=(start, end), name="agentenv-rollouts", daemon=True)

    def publish(self, version: int, model: torch.nn.Module) -> None:
        weights = self.sampler.snapshot(model)
        with self._changed:
            self._latest = (version, weights)
            self._changed.notify_all()
        if self._thread.ident is None and not self._stop:  # the first publication starts the producer
            self._thread.start()

    def next(self, step: int) -> tuple[Any, int]:
        """(the rollouts of `step`, their staleness in updates); re-raises what failed in the thread."""
        got, out, version = self._ready.get()
        if isinstance(out, BaseException):
            raise out
        assert got == step, (got, step)
        return out, step - version

    def close(self) -> None:
        with self._changed:
            self._stop = True
            self._changed.notify_all()
        while self._thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                self._ready.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)

    def _run(self, start: int, end: int) -> None:
        pushed = None
        try:
            for step in range(start, end):
                with self._changed:
                    self._changed.wait_for(lambda: self._stop or (self._latest is not None and self._latest[0] >= step - self.k))
                    if self._stop:
                        return
                    version, weights = self._latest
                if version != pushed:
                    self.sampler.push(weights)
                    pushed = version
                out = self.collect_step(step)
                while not self._stop:
                    try:
                        self._ready.put((step, out, version), timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as err:  # noqa: BLE001 - handed to the learner's thread
            self._ready.put((None, err, 0))
