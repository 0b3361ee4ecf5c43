"""`agentenv run`: a policy on an environment for N episodes, as JSON-ready summaries of the rollout's episodes.

The episodes come from the one rollout loop (`rollout.iter_episodes`, batched generation across live
episodes); `EpisodeLog` is their summary view: messages, reward and counts, one JSONL line each.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import gymnasium as gym

from agentenv.rollout import iter_episodes
from agentenv.types import Episode, Policy

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

    @classmethod
    def of(cls, env_id: str, episode: Episode) -> "EpisodeLog":
        """The summary view of a rollout `Episode` (its turns are the env's per-step `info`)."""
        last = episode.turns[-1] if episode.turns else {}
        return cls(env_id, episode.seed, episode.messages, reward=episode.reward, success=episode.success,
                   turns=last.get("turn", len(episode.turns)), tool_calls=sum(len(t["tool_calls"]) for t in episode.turns),
                   errors=sum(t["error"] is not None for t in episode.turns), terminated=episode.terminated,
                   truncated=episode.truncated, reward_components=episode.reward_components,
                   delay_call_rate=last.get("delay_call_rate", 0.0))

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
    """Yield one `EpisodeLog` per episode as it ends; episode `i` is reset with seed `seed + i`."""
    for episode in iter_episodes(make_env or env_id, policy, range(seed, seed + episodes), env_kwargs=env_kwargs,
                                 batch_size=batch_size):
        yield EpisodeLog.of(env_id, episode)


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
