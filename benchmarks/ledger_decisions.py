"""What HRR changes in the agent's compression decisions: the ledger recipe's arms of `ablation.py`, re-played on
held-out tasks, with each `<zip level=N/>` decision's Q_com, the level chosen for the page read first, and the
context kept.

`ablation.py` compares held-out success; HRR acts on something nearer: it credits each turn by the Q_com of the
compression decision that turn made (`learn/plugins/hrr.py`). For every seed of the ledger recipe this loads the
shared warm start and the final weights of the `hrr` and `dapo` arms (agent-driven zip), plays `--tasks` held-out
tasks with each (sampling as in training, one episode a task), and reports per model: the mean Q_com of its
decisions, the share of first pages at each level, the tokens its context kept when it answered, and success.
HRR − DAPO on the mean Q_com per task is paired task by task and bootstrapped over seeds, then tasks
(`ablation.paired_bootstrap`).

    OMP_NUM_THREADS=1 python benchmarks/ledger_decisions.py [--tasks 256]

Needs the runs of `python benchmarks/ablation.py --comparisons hrr_vs_dapo` under runs/ablation/. Writes
benchmarks/ledger_decisions.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ablation import OUT, paired_bootstrap, plan  # noqa: E402

from agentenv.learn.train import held_out_seeds, trained_policy  # noqa: E402
from agentenv.rollout import collect  # noqa: E402

_LEVEL = re.compile(r"<zip level=(\d)/>")


def play(cfg, run_dir: Path, tasks: int) -> dict:
    """The model saved in `run_dir` on `tasks` held-out tasks: per task its decisions' mean Q_com (NaN without
    one), the level given to page 1, the context tokens at the answer, and success."""
    policy, _ = trained_policy(cfg, run_dir)
    episodes = collect(cfg.env_id, policy, held_out_seeds(tasks), group_size=1, env_kwargs=cfg.env_kwargs, max_seq_len=cfg.max_seq_len)
    episodes.sort(key=lambda e: e.seed)
    q_com, first_level, tokens, success = [], [], [], []
    for episode in episodes:
        values = [t["compression"]["q_com"] for t in episode.turns if (t.get("compression") or {}).get("q_com") is not None]
        q_com.append(float(np.mean(values)) if values else float("nan"))
        level = None
        if len(episode.turns) > 1:  # the reply after page 1 levels it
            turn = episode.turns[1]
            text = policy.chat.decode(episode.samples[turn["sample"]].token_ids[turn["start"]:turn["end"]])
            match = _LEVEL.search(text)
            level = int(match.group(1)) if match else None
        first_level.append(level)
        tokens.append(int((episode.turns[-1].get("compression") or {}).get("tokens_after") or 0))
        success.append(float(episode.success))
    return {"q_com": q_com, "first_level": first_level, "tokens": tokens, "success": success}


def summary(played: dict) -> dict:
    q = np.array(played["q_com"])
    levels = Counter(played["first_level"])
    n = len(played["first_level"])
    return {"q_com": float(np.nanmean(q)), "decided": float(np.mean(~np.isnan(q))),
            "first_level": {str(k): levels.get(k, 0) / n for k in (1, 2, 3, 4, 5, None)},
            "tokens": float(np.mean(played["tokens"])), "success": float(np.mean(played["success"]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--tasks", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    warms, arms, comparisons = plan(seeds, {"steps": None, "eval_tasks": None, "sft_steps": None}, ["hrr_vs_dapo"])
    result = {"date": time.strftime("%Y-%m-%d"), "tasks": args.tasks, "seeds": {}}
    per_task = {}
    for seed, (hrr_id, dapo_id) in comparisons["hrr_vs_dapo"].items():
        hrr_cfg, warm_id, _, _ = arms[hrr_id]
        runs = {"warm start": (warms[warm_id], warms[warm_id].out_dir), "dapo": (arms[dapo_id][0], arms[dapo_id][0].out_dir),
                "hrr": (hrr_cfg, hrr_cfg.out_dir)}
        result["seeds"][str(seed)] = {}
        for name, (cfg, out_dir) in runs.items():
            played = play(cfg, Path(out_dir), args.tasks)
            per_task[(seed, name)] = played
            result["seeds"][str(seed)][name] = summary(played)
            print(seed, name, result["seeds"][str(seed)][name], f"{time.perf_counter() - started:.0f} s", flush=True)
    diffs = []
    for seed in seeds:  # tasks where both made a decision
        a, b = np.array(per_task[(seed, "hrr")]["q_com"]), np.array(per_task[(seed, "dapo")]["q_com"])
        both = ~np.isnan(a) & ~np.isnan(b)
        diffs.append(a[both] - b[both])
    mean, low, high = paired_bootstrap(diffs)
    result["hrr_minus_dapo_q_com"] = {"mean": mean, "ci_low": low, "ci_high": high}
    result["wall_s"] = time.perf_counter() - started
    (OUT / "ledger_decisions.json").write_text(json.dumps(result, indent=1))
    (OUT / "ledger_decisions.md").write_text(markdown(result))
    print(json.dumps(result["hrr_minus_dapo_q_com"]), f"{result['wall_s']:.0f} s")


def markdown(result: dict) -> str:
    d = result["hrr_minus_dapo_q_com"]
    lines = [
        "# HRR's effect on the agent's compression decisions (ablation.py's ledger recipe)", "",
        f"`python benchmarks/ledger_decisions.py`, {result['date']}: the warm start and the final `dapo` and `hrr` arms "
        f"of `hrr_vs_dapo` (benchmarks/ablation.md) at each seed, replayed on {result['tasks']} held-out tasks (sampling "
        f"as in training). Q_com: the mean over an episode's `<zip level=N/>` decisions of their hindsight compression "
        f"score (retention of what later probes ask, compression ratio, level consistency, completeness); first-page "
        f"level: the share of episodes giving page 1 each level (none: no tag, or no second turn); tokens: the "
        f"context kept when the probe was answered. {result['wall_s'] / 60:.1f} min.", "",
        f"**HRR − DAPO, mean Q_com per task: {d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]** (paired over "
        "tasks where both decided, two-level bootstrap over seeds then tasks).", "",
        "| seed | model | Q_com | decided | page 1 at level 1 / 2 / 3 / 4 / 5 / none | tokens kept | success |",
        "|---:|---|---:|---:|---|---:|---:|",
    ]
    for seed, models in result["seeds"].items():
        for name, s in models.items():
            levels = " / ".join(f"{s['first_level'][k]:.2f}" for k in ("1", "2", "3", "4", "5", "None"))
            lines.append(f"| {seed} | {name} | {s['q_com']:.4f} | {s['decided']:.2f} | {levels} | {s['tokens']:.0f} | "
                         f"{s['success']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
