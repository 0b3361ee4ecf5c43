"""Distributed rollouts. `RayRollout` runs `agentenv.rollout`'s one loop (`drive`) with its envs in Ray actors;
`RayEngines` is a token policy whose generation runs in N engine actors (HF or vLLM), for the same loop. Ray (the
`ray` extra) is imported only when one is made, and its absence is a `UserError` that says what to install."""

from agentenv.distributed.engines import GenerationEngine, RayEngines
from agentenv.distributed.ray_rollout import EnvWorker, RayRollout, WorkerLost, collect_ray

__all__ = ["RayRollout", "collect_ray", "EnvWorker", "WorkerLost", "RayEngines", "GenerationEngine"]
