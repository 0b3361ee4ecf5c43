"""Vectorised agentenv environments: `gym.make_vec("agentenv/<Env>", num_envs=N)`.

Chat observations are Python lists of messages, not arrays, so the copies are stepped in turn in this
process (`SyncVectorEnv`); their python tools share the process's one sandbox pool, each copy with a worker
of its own. `gym.vector.AsyncVectorEnv` works too with `shared_memory=False` (lists cannot live in shared
memory; gymnasium says so when it is left on)."""

from __future__ import annotations

import functools
from typing import Any

import gymnasium as gym

__all__ = ["ChatVectorEnv"]


class ChatVectorEnv(gym.vector.SyncVectorEnv):
    """`num_envs` copies of the env registered as `env_id`, made with the same keyword arguments."""

    def __init__(self, env_id: str, num_envs: int = 1, **kwargs: Any):
        if num_envs < 1:
            raise ValueError("num_envs must be at least 1")
        super().__init__([functools.partial(gym.make, env_id, **kwargs) for _ in range(num_envs)])
        self.env_id = env_id
