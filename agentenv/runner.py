"""Run a policy on an environment for N episodes, stepping a batch of episodes in lockstep.

Each turn, the contexts of all live episodes go to `policy.generate` in one call (so a model policy
batches them), then every env steps with its own action. Episode logs are plain dicts, ready for JSONL.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import gymnasium as gym

from agentenv.policies.base import Policy

__all__ = ["EpisodeLog", "run_episodes", "summarize", "JsonlWriter"]


@dataclass
class EpisodeLog:
    env_id: str
    seed: int
    messages: list[dict[str, Any]]
    reward: float = 0.0
    success: bool = False
    turns: int = 0
    tool_calls: int = 0
    errors: int = 0
    terminated: bool = False
    truncated: bool = False
    reward_components: dict[str, float] = field(default_factory=dict)
    delay_call_rate: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run_episodes(
    env_id: str,
    policy: Policy,
    episodes: int,
    *,
    seed: int = 0,
    batch_size: int = 16,
    env_kwargs: dict[str, Any] | None = None,
    make_env: Callable[[], gym.Env] | None = None,
) -> Iterator[EpisodeLog]:
    """Yield one `EpisodeLog` per episode; episode `i` is reset with seed `seed + i`."""
    build = make_env or (lambda: gym.make(env_id, **(env_kwargs or {})))
    envs = [build() for _ in range(min(batch_size, episodes))]
    try:
        next_episode = 0
        live: list[tuple[gym.Env, EpisodeLog, list]] = []

        def start(env: gym.Env) -> None:
            nonlocal next_episode
            obs, _ = env.reset(seed=seed + next_episode)
            live.append((env, EpisodeLog(env_id, seed + next_episode, obs), obs))
            next_episode += 1

        for env in envs:
            start(env)
        while live:
            generations = policy.generate([obs for _, _, obs in live])
            current, live = live, []
            for (env, log, _), generation in zip(current, generations):
                obs, reward, terminated, truncated, info = env.step(generation.text)
                log.turns = info["turn"]
                log.tool_calls += len(info["tool_calls"])
                log.errors += info["error"] is not None
                log.delay_call_rate = info["delay_call_rate"]
                if terminated or truncated:
                    log.messages, log.reward = obs, float(reward)
                    log.terminated, log.truncated = terminated, truncated
                    log.reward_components = info.get("reward_components", {})
                    log.success = bool(log.reward_components.get("success", 0.0))
                    yield log
                    if next_episode < episodes:
                        start(env)
                else:
                    live.append((env, log, obs))
    finally:
        for env in envs:
            env.close()


def summarize(logs: list[EpisodeLog]) -> dict[str, float]:
    n = max(len(logs), 1)
    return {
        "episodes": len(logs),
        "success_rate": sum(l.success for l in logs) / n,
        "mean_reward": sum(l.reward for l in logs) / n,
        "mean_turns": sum(l.turns for l in logs) / n,
        "mean_tool_calls": sum(l.tool_calls for l in logs) / n,
        "errors": sum(l.errors for l in logs),
        "truncated": sum(l.truncated for l in logs),
    }


def _jsonable(value: Any) -> Any:
    """JSON stand-in for what json cannot hold: arrays (e.g. waveforms) become a short summary."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return {"array": {"shape": list(value.shape), "dtype": str(value.dtype)}}
    if hasattr(value, "item"):
        return value.item()
    return repr(value)


class JsonlWriter:
    """Append JSON lines to `path + '.partial'`, flushed per record; renamed to `path` on close.

    A crash leaves every finished record in the `.partial` file and never a half-written `path`.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._partial = self.path.with_name(self.path.name + ".partial")
        self._fh = open(self._partial, "w", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record, ensure_ascii=False, default=_jsonable) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self._partial, self.path)

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
