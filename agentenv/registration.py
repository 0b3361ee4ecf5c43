"""Register every agentenv environment with gymnasium under the `agentenv/` namespace."""

from __future__ import annotations

import gymnasium as gym

__all__ = ["register_envs", "list_envs", "ENV_IDS"]

_ENTRY_POINTS = {
    "agentenv/ToolReasoning-v0": "agentenv.envs.tool_reasoning:ToolReasoningEnv",
    "agentenv/Ledger-v0": "agentenv.envs.ledger:LedgerEnv",
    "agentenv/Recommend-v0": "agentenv.envs.recommend.env:RecommendEnv",
    "agentenv/AudioReasoning-v0": "agentenv.envs.audio.env:AudioReasoningEnv",
}
ENV_IDS = tuple(_ENTRY_POINTS)


def register_envs() -> None:
    """Idempotent: ids already registered (e.g. on module reload) are left as they are."""
    for env_id, entry_point in _ENTRY_POINTS.items():
        if env_id not in gym.registry:
            # The env enforces its own turn limit (truncated=True), so no TimeLimit wrapper is added.
            gym.register(id=env_id, entry_point=entry_point, disable_env_checker=False)


def list_envs() -> list[str]:
    """The registered agentenv environment ids."""
    return sorted(env_id for env_id in gym.registry if env_id.startswith("agentenv/"))
