"""Synchronous vs asynchronous rollouts (`rollout.max_staleness`), same config, side by side in one run.

    python benchmarks/bench_async.py [--steps 6] [--threads 1]

Each arm is a fresh `agentenv train` (same seed, same warm start) in this process; the figure is the wall time
of the RL loop (every step's wait for rollouts + update, from metrics.jsonl), without the warm start. With
k > 0 the next steps' rollouts are generated in a background thread while the learner updates, with weights
at most k updates old (the logged `weights_lag`). Machine load is printed: on a 2-core machine shared with
other jobs the overlap has little room.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from agentenv.learn.train import load_config, train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs, torch threads {args.threads}")
    results = {}
    for name, extra in [("sync", []), ("async k=1", ["--rollout.max_staleness=1"]), ("async k=2", ["--rollout.max_staleness=2"])]:
        with tempfile.TemporaryDirectory() as out:
            cfg = load_config(None, [f"--steps={args.steps}", "--sft_steps=60", "--sft_episodes=256", "--eval_tasks=0",
                                     "--tasks_per_step=4", f"--out_dir={out}", *extra])
            start = time.perf_counter()
            train(cfg, log=lambda message: None)
            total = time.perf_counter() - start
            rows = [json.loads(line) for line in Path(out, "metrics.jsonl").read_text().splitlines()]
        loop = sum(r["rollout_s"] + r["update_s"] for r in rows)
        results[name] = loop
        lags = [r.get("weights_lag", 0) for r in rows]
        print(f"{name:10s} RL loop {loop:6.1f} s  (run {total:6.1f} s; rollout wait {sum(r['rollout_s'] for r in rows):5.1f} s, "
              f"update {sum(r['update_s'] for r in rows):5.1f} s; weights_lag {lags})", flush=True)
    for name in ("async k=1", "async k=2"):
        print(f"{name}: RL loop {results['sync'] / results[name]:.2f}x the speed of sync")
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
