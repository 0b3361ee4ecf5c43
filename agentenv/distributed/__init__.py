"""Distributed rollouts. `RayRollout` runs `agentenv.rollout`'s one loop (`drive`) with its envs in Ray actors;
Ray (the `ray` extra) is imported only when one is made, and its absence is a `UserError` that says what to
install."""

from agentenv.distributed.ray_rollout import EnvWorker, RayRollout, WorkerLost, collect_ray

__all__ = ["RayRollout", "collect_ray", "EnvWorker", "WorkerLost"]
