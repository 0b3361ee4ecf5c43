"""Rollout backends side by side: episodes/s of the local loop vs the Ray backend (1 and 2 env workers), in one run.

Workloads (scripted agents, `agentenv.registration.scripted_policy`, so the policy costs ~nothing and the
figures are the rollout machinery's):
* ToolReasoning-v0 with the python tool (every call runs in a confined sandbox process), 128 tasks;
* Ledger-v0, 256 turns, zip compressor at 2048 tokens, 4 episodes.

Each in two modes: `text` (no tokenizer: episodes carry messages and rewards; the env side dominates) and
`tokens` (the tiny tokenizer renders token records on the driver, as training does; with zip every turn is
a re-rendered prompt, which stays on the driver whatever the backend). One untimed local collect first (the
reference episodes; it also warms the tokenizer's caches), one untimed small warm-up collect per backend
(actor start, imports, the python tool's zygote), then `--repeats` rounds of timed collects of the same seeds,
backends interleaved within a round; the table shows the median and checks that every backend returned the
local episodes. The 1-minute load average is recorded before each timed collect: the dev box has 2 vCPUs
and other jobs may run.

    python benchmarks/bench_rollout_backends.py [--quick] [--repeats 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import agentenv  # noqa: E402, F401 - registers the envs
from agentenv.policies.tiny import tiny_tokenizer  # noqa: E402
from agentenv.registration import scripted_policy  # noqa: E402
from agentenv.rollout import collect  # noqa: E402

WORKLOADS = {
    "ToolReasoning-v0 (python)": ("agentenv/ToolReasoning-v0", {"tools": ["python"]}, 128),
    "Ledger-v0 (256 turns, zip 2048)": ("agentenv/Ledger-v0", {"turns": 256, "compressor": "zip", "budget_tokens": 2048}, 4),
}


def load() -> float:
    return os.getloadavg()[0]


def measure(backends: dict, repeats: int) -> dict[str, dict]:
    """Warm every backend up (untimed), then time `repeats` rounds, the backends interleaved in each round
    so that a change of machine load hits them alike."""
    for run in backends.values():
        run(warmup=True)
    figures = {name: {"seconds": [], "load": [], "episodes": None} for name in backends}
    for _ in range(repeats):
        for name, run in backends.items():
            figures[name]["load"].append(load())
            t0 = time.perf_counter()
            figures[name]["episodes"] = run(warmup=False)
            figures[name]["seconds"].append(time.perf_counter() - t0)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the tasks, 64-turn Ledger, 1 repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats

    import ray

    from agentenv.distributed import RayRollout

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - t0
    tokenizer = tiny_tokenizer()
    rows = []
    try:
        for name, (env_id, env_kwargs, n) in WORKLOADS.items():
            env_kwargs = dict(env_kwargs)
            if args.quick:
                n = max(2, n // 4)
                if "turns" in env_kwargs:
                    env_kwargs["turns"] = 64
            tasks = list(range(n))
            rollouts = {}
            for workers in (1, 2):
                t0 = time.perf_counter()
                rollouts[workers] = RayRollout(env_id, env_kwargs=env_kwargs, workers=workers)
                rollouts[workers].collect(scripted_policy(env_id), [0] * workers, 1)  # actors up, envs imported
                print(f"{name}: {workers} worker(s) up in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            for mode in ("text", "tokens"):
                options = {"tokenizer": tokenizer} if mode == "tokens" else {}

                def local(warmup: bool):
                    return collect(env_id, scripted_policy(env_id), tasks[:2] if warmup else tasks, env_kwargs=env_kwargs, **options)

                backends = {"local": local}
                for workers, rollout in rollouts.items():
                    backends[f"ray, {workers} worker{'s' if workers > 1 else ''}"] = (
                        lambda warmup, r=rollout: r.collect(scripted_policy(env_id), tasks[:2] if warmup else tasks, **options))
                reference = local(warmup=False)  # untimed: the episodes to match, and the tokenizer's caches warm
                for backend, result in measure(backends, repeats).items():
                    episodes = result["episodes"]
                    same = episodes == reference
                    median = statistics.median(result["seconds"])
                    turns = sum(len(e.turns) for e in episodes)
                    rows.append({"workload": name, "mode": mode, "backend": backend, "episodes": n, "turns": turns,
                                 "seconds": median, "episodes_per_s": n / median, "turns_per_s": turns / median,
                                 "load_1min": result["load"], "same_episodes_as_local": same})
                    print(f"{name:32} {mode:6} {backend:16} {n / median:8.2f} ep/s {turns / median:8.0f} turns/s "
                          f"load {result['load']} same={same}", file=sys.stderr)
            for rollout in rollouts.values():
                rollout.close()
    finally:
        ray.shutdown()

    print(f"\nRay local cluster start (ray.init, 2 CPUs): {init_s:.1f} s; {os.cpu_count()} CPUs; median of {repeats}.\n")
    print("| workload | mode | backend | episodes/s | turns/s | vs local | load (1 min) | same episodes |")
    print("|---|---|---|---:|---:|---:|---|---|")
    base = {}
    for row in rows:
        key = (row["workload"], row["mode"])
        base.setdefault(key, row["seconds"])
        loads = "/".join(f"{x:.1f}" for x in row["load_1min"])
        print(f"| {row['workload']} | {row['mode']} | {row['backend']} | {row['episodes_per_s']:.2f} | {row['turns_per_s']:.0f} | "
              f"{base[key] / row['seconds']:.2f}× | {loads} | {'yes' if row['same_episodes_as_local'] else 'NO'} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"ray_init_s": init_s, "cpus": os.cpu_count(), "repeats": repeats, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
