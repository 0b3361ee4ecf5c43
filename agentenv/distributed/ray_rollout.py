"""Ray rollouts: `agentenv.rollout`'s loop with its envs in Ray actors (the `ray` extra, imported on use).

The loop stays on the driver and stays the local one: every turn, the token sequences of all live episodes
go to the policy in one batched call, in the same order as `rollout.iter_episodes` would send them; then
each env steps with its generation's text, and `rollout._step` records the turn. Only where the envs are
differs: `W` `EnvWorker` actors hold them (slot `s` on worker `s % W`, built on first use and kept across
`collect` calls), and a turn costs one `step` call per worker for all its envs (a remote call costs ~1 ms, a
local env step ~40 µs: per-env remote calls would lose). A tool with state (the python sandbox, Ledger's
stream) lives with its env in the actor; episodes come back as the same `Episode` records.

Same seeds, same episodes: the policy sees the same batches in the same order as with the local backend
(new episodes take a freed place in the batch exactly where `iter_episodes`'s `start` puts them), so even a
sampling `HFPolicy`, seeded per policy, gives identical token ids, log-probs, rewards, messages and turns.

Faults: a worker that dies (`RayActorError`: `ray.kill`, a crashed process, a lost node) is replaced by a new
actor, which first restores every live episode it held: reset with the episode's seed, then replay of the
actions the driver logged (envs are deterministic given seed and actions), and the failed call is sent
again. No episode is lost, none is run twice, and the policy is not asked again, so the episodes are the
ones a run without the fault returns.

    from agentenv.distributed import RayRollout

    with RayRollout("agentenv/Ledger-v0", env_kwargs={"compressor": "zip"}, workers=2) as rollout:
        episodes = rollout.collect(policy, seeds, group_size=8, max_seq_len=4096)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, Sequence

import gymnasium as gym

from agentenv.core import qualified_env_id
from agentenv.errors import UserError
from agentenv.rollout import LocalEnvs, Slot, StepResult, drive
from agentenv.types import Episode, Messages, Policy

__all__ = ["EnvWorker", "RayRollout", "collect_ray", "WorkerLost"]


def import_ray():
    """The `ray` module, or a UserError that says how to install it."""
    try:
        import ray
    except ImportError as error:
        raise UserError("the Ray rollout backend needs Ray: pip install 'agentenv[ray]' (or pip install ray)") from error
    return ray


def join_ray(address: str | None, init_kwargs: dict[str, Any] | None) -> tuple[Any, bool]:
    """(`ray`, whether this call started it): the running Ray, or a new one (`address`: a cluster to join; None:
    a local one). Whoever started it shuts it down again."""
    ray = import_ray()
    owns = not ray.is_initialized()
    if owns:
        ray.init(address=address, **(init_kwargs or {}))
    return ray, owns


class WorkerLost(RuntimeError):
    """A worker kept dying: it was restarted `max_restarts` times in one call and died again."""


# -- Ray -------------------------------------------------------------------------------------------


class EnvWorker(LocalEnvs):
    """E envs in one process (a Ray actor), keyed by slot index and built on first use. Its calls take slot
    indices (not `Slot`s) and `restore`: (slot, seed, actions) of episodes to rebuild first (reset, then
    replay), which is how a replacement worker gets back the state of the one that died."""

    def __init__(self, build: Callable[[], gym.Env]):
        import agentenv  # noqa: F401 - registers the envs in this process

        super().__init__(build)

    def _restore(self, restore: Sequence[tuple[int, int, Sequence[str]]]) -> None:
        for slot, seed, actions in restore:
            env = self.env(slot)
            env.reset(seed=seed)
            for action in actions:
                env.step(action)

    def reset(self, slots: Sequence[int], seeds: Sequence[int], restore: Sequence[tuple[int, int, Sequence[str]]] = ()) -> list[Messages]:
        self._restore(restore)
        return [self.env(slot).reset(seed=seed)[0] for slot, seed in zip(slots, seeds)]

    def step(self, slots: Sequence[int], actions: Sequence[str], restore: Sequence[tuple[int, int, Sequence[str]]] = ()) -> list[StepResult]:
        self._restore(restore)
        results = []
        for slot, action in zip(slots, actions):
            obs, reward, terminated, truncated, info = self.envs[slot].step(action)
            results.append((obs, reward, terminated, truncated, {k: v for k, v in info.items() if k != "tools"}))  # the loop drops "tools"
        return results

    def pid(self) -> int:
        import os

        return os.getpid()


def _make(env_id: str, env_kwargs: dict[str, Any]) -> gym.Env:
    return gym.make(env_id, **env_kwargs)


def kill_actor(ray: Any, actor: Any) -> None:
    try:
        ray.kill(actor, no_restart=True)  # a no-op on a dead actor
    except Exception:  # best effort: its node may be gone with it
        pass


def close_actors(ray: Any, actors: Sequence[Any], timeout: float) -> None:
    """Call every actor's `close` (waiting at most `timeout` s), then kill each: a dead one has nothing to close."""
    try:
        ray.get([actor.close.remote() for actor in actors], timeout=timeout)
    except (ray.exceptions.RayError, TimeoutError):
        pass
    for actor in actors:
        kill_actor(ray, actor)


class RayRollout:
    """The Ray backend: `workers` env actors for one env (id and kwargs, or a picklable builder), kept for
    the whole run; `collect` / `iter_episodes` take the local loop's arguments.

    Args:
        env: an env id (`"agentenv/Ledger-v0"`, prefix optional) or a function that builds an env (pickled
            to the workers).
        env_kwargs: keyword arguments of `gym.make` when `env` is an id.
        workers: W env actors; a collect of B live episodes gives each about B / W envs (slot s on worker s % W).
        envs_per_worker: E, at most W × E episodes live at once (the default batch size); None: all.
        address: the Ray cluster to join (`"auto"`, `"ray://head:10001"`) when this process has not called
            `ray.init` yet; None: a new local cluster (`ray.init(**init_kwargs)`), shut down again by `close`.
            When Ray is already initialized, its cluster is used and left running.
        max_restarts: restarts of one worker within one call before `WorkerLost` is raised.
        actor_options: `ray.remote` options of the workers (e.g. `num_cpus`, `runtime_env`).
    """

    def __init__(self, env: str | Callable[[], gym.Env], *, env_kwargs: dict[str, Any] | None = None, workers: int = 2,
                 envs_per_worker: int | None = None, address: str | None = None, max_restarts: int = 3,
                 actor_options: dict[str, Any] | None = None, init_kwargs: dict[str, Any] | None = None):
        if workers < 1:
            raise UserError(f"rollout.workers must be at least 1, got {workers}")
        ray, self._owns_ray = join_ray(address, init_kwargs)
        self._ray = ray
        self.build = functools.partial(_make, qualified_env_id(env), dict(env_kwargs or {})) if isinstance(env, str) else env
        self.envs_per_worker, self.max_restarts = envs_per_worker, max_restarts
        self._actor = ray.remote(EnvWorker).options(max_restarts=0, **(actor_options or {}))
        self.workers = [self._actor.remote(self.build) for _ in range(workers)]
        self.restarts = 0  # workers replaced so far
        self._slots: dict[int, Slot] = {}  # the collect's slots by index: what a replaced worker restores

    def iter_episodes(self, policy: Policy, tasks: Sequence[int], group_size: int = 1, *, tokenizer: Any = None,
                      max_turns: int | None = None, max_seq_len: int = 4096, batch_size: int | None = None) -> Iterator[Episode]:
        """`rollout.iter_episodes` with this backend's envs (`batch_size` default: W × E, or all)."""
        if batch_size is None and self.envs_per_worker is not None:
            batch_size = len(self.workers) * self.envs_per_worker
        self._slots = {}
        return drive(self, policy, tasks, group_size, tokenizer=tokenizer, max_turns=max_turns, max_seq_len=max_seq_len,
                     batch_size=batch_size)

    def collect(self, policy: Policy, tasks: Sequence[int], group_size: int = 1, **options: Any) -> list[Episode]:
        """`rollout.collect` with this backend's envs: episodes ordered by (group, sample)."""
        return sorted(self.iter_episodes(policy, tasks, group_size, **options), key=lambda e: e.index)

    # -- the pool `drive` steps ---------------------------------------------------------------------

    def reset(self, slots: Sequence[Slot], seeds: Sequence[int]) -> list[Messages]:
        return self._call("reset", slots, seeds)

    def step(self, slots: Sequence[Slot], actions: Sequence[str]) -> list[StepResult]:
        return self._call("step", slots, actions)

    def _call(self, method: str, slots: Sequence[Slot], args: Sequence[Any]) -> list[Any]:
        """`method` on every worker that holds one of `slots`, all at once; one result per slot, in order."""
        ray, n = self._ray, len(self.workers)
        parts: dict[int, list[int]] = {}
        for position, slot in enumerate(slots):
            parts.setdefault(slot.index % n, []).append(position)

        def send(w: int, restore: list[tuple[int, int, list[str]]] = []) -> Any:  # noqa: B006 - never mutated
            positions = parts[w]
            return getattr(self.workers[w], method).remote([slots[p].index for p in positions], [args[p] for p in positions], restore)

        for slot in slots:
            self._slots[slot.index] = slot
        refs = {w: send(w) for w in parts}
        out: list[Any] = [None] * len(slots)
        for w, positions in parts.items():
            for attempt in range(self.max_restarts + 1):
                try:
                    values = ray.get(refs[w])
                    break
                except ray.exceptions.RayActorError as error:
                    if attempt == self.max_restarts:
                        raise WorkerLost(f"env worker {w} died {attempt + 1} times in one {method} call") from error
                    refs[w] = send(w, self._replace(w))
            for position, value in zip(positions, values):
                out[position] = value
        return out

    def _replace(self, w: int) -> list[tuple[int, int, list[str]]]:
        """A new actor for worker `w`; returns what it must restore: the live episodes the old one held, with
        the actions they have taken (the turn being stepped is not logged until it comes back)."""
        kill_actor(self._ray, self.workers[w])
        self.workers[w] = self._actor.remote(self.build)
        self.restarts += 1
        n = len(self.workers)
        return [(s.index, s.seed, list(s.actions)) for s in self._slots.values() if s.index % n == w and s.seed is not None]

    def close(self) -> None:
        """Close the workers' envs, end the workers, and shut down the Ray cluster this object started."""
        close_actors(self._ray, self.workers, timeout=30)
        self.workers = []
        if self._owns_ray and self._ray.is_initialized():
            self._ray.shutdown()

    def __enter__(self) -> "RayRollout":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def collect_ray(env: str | Callable[[], gym.Env], policy: Policy, tasks: Sequence[int], group_size: int = 1, *,
                workers: int = 2, envs_per_worker: int | None = None, address: str | None = None,
                env_kwargs: dict[str, Any] | None = None, **options: Any) -> list[Episode]:
    """One `rollout.collect` on the Ray backend: starts the workers (and a local cluster if none is running),
    collects, and stops them. A training run keeps one `RayRollout` instead."""
    with RayRollout(env, env_kwargs=env_kwargs, workers=workers, envs_per_worker=envs_per_worker, address=address) as rollout:
        return rollout.collect(policy, tasks, group_size, **options)
