"""Register every agentenv environment with gymnasium under the `agentenv/` namespace."""

from __future__ import annotations

import functools
from typing import Any

import gymnasium as gym

__all__ = ["register_envs", "list_envs", "scripted_policy", "ENV_IDS"]

_ENTRY_POINTS = {
    "agentenv/ToolReasoning-v0": "agentenv.envs.tool_reasoning.env:ToolReasoningEnv",
    "agentenv/Ledger-v0": "agentenv.envs.ledger.env:LedgerEnv",
    "agentenv/Recommend-v0": "agentenv.envs.recommend.env:RecommendEnv",
    "agentenv/AudioReasoning-v0": "agentenv.envs.audio.env:AudioReasoningEnv",
}
ENV_IDS = tuple(_ENTRY_POINTS)

# The deterministic agent of each env, for `agentenv run --policy scripted`, tests and stress runs.
_SCRIPTED_POLICIES = {
    "agentenv/ToolReasoning-v0": "agentenv.envs.tool_reasoning.scripted:ScriptedPolicy",
    "agentenv/AudioReasoning-v0": "agentenv.envs.audio.scripted:ScriptedAudioAgent",
    "agentenv/Ledger-v0": "agentenv.envs.ledger.scripted:LedgerReader",
    "agentenv/Recommend-v0": "agentenv.envs.recommend.baselines:ConstraintAwareRecommender",
}


def register_envs() -> None:
    """Idempotent: ids already registered (e.g. on module reload) are left as they are."""
    for env_id, entry_point in _ENTRY_POINTS.items():
        if env_id not in gym.registry:
            # The env enforces its own turn limit (truncated=True), so no TimeLimit wrapper is added.
            gym.register(id=env_id, entry_point=entry_point, disable_env_checker=False,
                         vector_entry_point=functools.partial(_vector_env, env_id))


def _vector_env(env_id: str, num_envs: int = 1, **kwargs):
    from agentenv.vector import ChatVectorEnv  # imported on use, like the envs themselves

    return ChatVectorEnv(env_id, num_envs, **kwargs)


def list_envs() -> list[str]:
    """The registered agentenv environment ids."""
    return sorted(env_id for env_id in gym.registry if env_id.startswith("agentenv/"))


def scripted_policy(env_id: str, warm_start: bool = False, **options: Any):
    """A fresh instance of the scripted (deterministic) agent written for `env_id`, built with `options`; with
    `warm_start` and no options, with the options its class gives for demonstrations (`WARM_START_OPTIONS`)."""
    import importlib

    if env_id not in _SCRIPTED_POLICIES:
        raise ValueError(f"no scripted policy for {env_id}; envs with one: {', '.join(sorted(_SCRIPTED_POLICIES))}")
    module, _, name = _SCRIPTED_POLICIES[env_id].partition(":")
    cls = getattr(importlib.import_module(module), name)
    if warm_start and not options:
        options = dict(getattr(cls, "WARM_START_OPTIONS", {}))
    return cls(**options)
