"""Generation engines as Ray actors (the `ray` extra, imported on use): N engines, each a `GenerationEngine`
actor hosting an `HFPolicy` or a `VLLMPolicy`, behind one client, `RayEngines`, which is a token policy like
any other (`chat`, `max_new_tokens`, `generate_ids`, `load_weights`). The rollout loop (`rollout.drive`, over
local envs or `RayRollout`'s workers) is not changed: it hands the client its batch of prompt ids and gets one
`Generation` per prompt back, with the ids and log-probs the remote engine sampled, so the learner trains on
exactly those (token in, token out) and the sampler–learner mismatch (`sampler_kl`, `sampler_logp_diff`,
`learner.sampler_correction`) is measured against them as for a local vLLM engine.

Split: a batch of B prompts goes to the engines in N contiguous chunks (B / N each, all sent before any is
awaited), so a GRPO group's samples, adjacent in the batch, usually share one engine and its prefix cache.

Seeds: engine i samples with its own generator, seeded `seed + ENGINE_SEED_STRIDE × i`. The split depends
only on the batch, so a run is reproducible for a given (seed, N); with N = 1 the engine sees the calls the
in-process engine would, and an HF engine returns the same episodes bit for bit. With N > 1 the samples
differ from N = 1's (same distribution, other draws); greedy decoding does not depend on N.

Weights: `load_weights(state_dict)` puts the tensors in Ray's object store once (`ray.put`, on CPU) and every
engine loads that one object (`HFPolicy`: `load_state_dict`, which also invalidates its prefix cache;
`VLLMPolicy.load_weights`: vLLM's in-place reload). The call returns when every engine has its new weights.
Placement: one engine per GPU (`num_gpus=1`) when the learner's device is CUDA; on CPU Ray's default (an
actor holds no CPU once placed, so engines and env workers share the cores).

    from agentenv.distributed import RayEngines

    engines = RayEngines("hf", "tiny", tokenizer, engines=2, seed=0, max_new_tokens=48)
    engines.load_weights(model.state_dict())
    episodes = collect("agentenv/ToolReasoning-v0", engines, seeds, group_size=8)
"""

from __future__ import annotations

from typing import Any, Literal, Mapping, Sequence

from agentenv.distributed.ray_rollout import close_actors, join_ray
from agentenv.errors import UserError
from agentenv.policies.base import TokenPolicy
from agentenv.policies.chat_tokens import ChatTokens
from agentenv.types import Generation

__all__ = ["GenerationEngine", "RayEngines", "ENGINE_SEED_STRIDE"]

ENGINE_SEED_STRIDE = 65_537  # engine i's sampling seed is seed + this × i (engine 0: the run's own seed)


class GenerationEngine:
    """One engine in one process (a Ray actor): builds its policy from a model spec, then samples, takes
    weights and hands out its RNG state on request."""

    def __init__(self, kind: str, model: Any, tokenizer: Any, options: dict[str, Any]):
        import agentenv  # noqa: F401 - the same package state as the driver (registered envs, tiny assets)

        if kind == "vllm":
            from agentenv.policies.vllm import VLLMPolicy

            self.policy = VLLMPolicy(model, tokenizer, **options)
        else:
            from agentenv.policies.hf import HFPolicy

            self.policy = HFPolicy(model, tokenizer, **options)

    def generate_ids(self, prompts: Sequence[Sequence[int]], max_new_tokens: Sequence[int]) -> list[Generation]:
        return self.policy.generate_ids(prompts, max_new_tokens=list(max_new_tokens))

    def load_weights(self, weights: dict[str, Any]) -> None:
        if hasattr(self.policy, "load_weights"):  # vLLM: its in-place reload, then its prefix cache dropped
            self.policy.load_weights(weights)
        else:  # HF: an in-place copy, which bumps the weights' version and so drops the prefix cache
            self.policy.model.load_state_dict(weights, strict=False)

    def rng_state(self) -> Any:
        generator = self.policy.generator
        return generator.get_state() if hasattr(generator, "get_state") else generator.getstate()

    def set_rng_state(self, state: Any) -> None:
        generator = self.policy.generator
        generator.set_state(state) if hasattr(generator, "set_state") else generator.setstate(state)

    def stats(self) -> dict[str, Any]:
        return dict(getattr(self.policy, "stats", {}))

    def pid(self) -> int:
        import os

        return os.getpid()

    def close(self) -> None:
        close = getattr(self.policy, "close", None)
        if callable(close):
            close()


class EngineGenerators:
    """The engines' sampling generators seen as one (`get_state` / `set_state`: a list, one state per engine),
    so a training checkpoint saves and restores them as it does the in-process policy's `generator`."""

    def __init__(self, engines: "RayEngines"):
        self.engines = engines

    def get_state(self) -> list[Any]:
        ray = self.engines._ray
        return ray.get([engine.rng_state.remote() for engine in self.engines.actors])

    def set_state(self, states: Sequence[Any]) -> None:
        ray, actors = self.engines._ray, self.engines.actors
        if len(states) != len(actors):
            raise UserError(f"the checkpoint holds the RNG states of {len(states)} engines, this run has {len(actors)} "
                            "(rollout.engines must match to resume)")
        ray.get([engine.set_rng_state.remote(state) for engine, state in zip(actors, states)])


class RayEngines(TokenPolicy):
    """N generation engines in Ray actors, used as one token policy.

    Args:
        kind: "hf" (`HFPolicy`) or "vllm" (`VLLMPolicy`).
        model: what every engine builds its policy from: "tiny"/"small", a model directory, or a loaded model
            (pickled to each actor). Its weights are replaced by the first `load_weights`.
        tokenizer: the learner's tokenizer (renders chats here; sent to the engines).
        engines: N actors.
        seed: engine i samples with seed + `ENGINE_SEED_STRIDE` × i.
        temperature, top_p, max_new_tokens: sampling, as the in-process policy's.
        device: "cuda" places one engine per GPU (`num_gpus=1`) and runs it there; "cpu" runs on CPU.
        options: further keyword arguments of the policy (`dtype`, vLLM's `gpu_memory_utilization`, ...).
        actor_options: `ray.remote` options overriding the placement (e.g. `num_gpus=0.5`, `runtime_env`).
        address, init_kwargs: as `RayRollout`'s: the cluster to join when Ray is not initialized yet (None: a
            new local one, shut down again by `close`).
    """

    def __init__(self, kind: Literal["hf", "vllm"], model: Any, tokenizer: Any, *, engines: int = 1, seed: int = 0,
                 temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 256, device: str = "cpu",
                 options: dict[str, Any] | None = None, actor_options: dict[str, Any] | None = None,
                 address: str | None = None, init_kwargs: dict[str, Any] | None = None):
        if kind not in ("hf", "vllm"):
            raise UserError(f"rollout.engine must be hf or vllm, got {kind!r}")
        if engines < 1:
            raise UserError(f"rollout.engines must be at least 1 for remote engines, got {engines}")
        ray, self._owns_ray = join_ray(address, init_kwargs)
        self._ray = ray
        self.kind, self.tokenizer, self.chat = kind, tokenizer, ChatTokens(tokenizer)
        self.max_new_tokens = max_new_tokens
        placement = {"num_gpus": 1} if device == "cuda" else {}
        actor = ray.remote(GenerationEngine).options(max_restarts=0, **{**placement, **(actor_options or {})})
        common = dict(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, **(options or {}))
        if kind == "hf":
            common["device"] = device
        self.actors = [actor.remote(kind, model, tokenizer, {**common, "seed": seed + ENGINE_SEED_STRIDE * i})
                       for i in range(engines)]
        self.generator = EngineGenerators(self)

    def generate_ids(self, prompts: Sequence[Sequence[int]], max_new_tokens: int | Sequence[int] | None = None) -> list[Generation]:
        """`HFPolicy.generate_ids`'s contract: one `Generation` per prompt, in order, from the engines."""
        if not prompts:
            return []
        limit = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        limits = [int(limit)] * len(prompts) if isinstance(limit, int) else [int(k) for k in limit]
        if len(limits) != len(prompts):
            raise ValueError("max_new_tokens needs one limit per prompt")
        n, batch = len(self.actors), len(prompts)
        bounds = [batch * i // n for i in range(n + 1)]
        refs = [actor.generate_ids.remote([list(p) for p in prompts[a:b]], limits[a:b])
                for actor, a, b in zip(self.actors, bounds, bounds[1:]) if b > a]
        return [generation for part in self._ray.get(refs) for generation in part]

    def load_weights(self, weights: Mapping[str, Any]) -> None:
        """Every engine takes `weights` (HF names, e.g. the learner's `state_dict()`); returns once all have."""
        ref = self._ray.put({name: tensor.detach().to("cpu") for name, tensor in weights.items()})
        self._ray.get([actor.load_weights.remote(ref) for actor in self.actors])

    def stats(self) -> list[dict[str, Any]]:
        """Each engine's `stats` (HF: calls, prompt/prefill/generated tokens)."""
        return self._ray.get([actor.stats.remote() for actor in self.actors])

    def close(self) -> None:
        """End the engines, and the Ray cluster if this object started it."""
        ray = self._ray
        close_actors(ray, self.actors, timeout=60)
        self.actors = []
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()

    def __enter__(self) -> "RayEngines":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
