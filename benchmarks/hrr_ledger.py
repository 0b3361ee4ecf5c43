"""HRR on vs off: a short CPU GRPO run on Ledger-v0 with agent-driven zip compression, both reward curves in one plot.

One warm start (`train()` with steps=0: SFT on the Ledger reader's demonstrations, held-out evaluation,
step-0 checkpoint), then two arms that resume from copies of that checkpoint with `train(..., resume=True)`,
so both start from the same weights and the same RNG state and differ only in the learner config:

* off: plain GRPO (no plug-in);
* on:  HRR (`--learner.plugins.hrr.beta=BETA`, additive, `group_norm=True`: D in units of its std over the
  group's turns, like the GRPO advantage it is added to). BETA was fixed before any run and is not tuned.

The env: Ledger-v0, 4 pages, one ledger, a probe every 2 pages, short pages (1-3 noise lines), zip in agent
mode at a 900-token budget (the opening messages alone take ~520): the policy levels each page it has read
with `<zip level=N/>` (the Ledger reader's demonstrations do, so the warm start learns it), every turn after
the first is compressed at the level its action chose, and that decision's Q_com
(`info["compression"]["q_com"]`, retention judged against the facts later probes ask) is what HRR turns
into per-turn advantages. Both arms run on this env: only the learner differs.

    python benchmarks/hrr_ledger.py [--steps 8] [--beta 0.5] [--quick]

Writes benchmarks/hrr_ledger.{png,json,md}; the runs themselves go to runs/hrr_ledger/ (ignored by git).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agentenv.learn.learner import LearnerConfig  # noqa: E402
from agentenv.learn.train import TrainConfig, train  # noqa: E402
from arms import run_arm  # noqa: E402 - benchmarks/arms.py, beside this script

ENV_KWARGS = {"turns": 4, "ledgers": 1, "probe_every": 2, "noise_lines": [1, 3], "compressor": "zip",
              "compressor_options": {"mode": "agent"}, "budget_tokens": 900, "max_turns": 6}


def base_config(args: argparse.Namespace, out_dir: Path) -> TrainConfig:
    return TrainConfig(
        env_id="agentenv/Ledger-v0", env_kwargs=dict(ENV_KWARGS), model="tiny", device="cpu", seed=args.seed,
        steps=args.steps, tasks_per_step=args.tasks, group_size=args.group, max_new_tokens=48, max_seq_len=1024,
        sft_episodes=64, sft_steps=args.sft_steps, sft_batch_size=8, sft_lr=3e-3, eval_tasks=args.eval_tasks,
        checkpoint_every=10_000, out_dir=str(out_dir), learner=LearnerConfig(lr=5e-4, micro_batch_size=16),
    )


def run(args: argparse.Namespace) -> dict:
    runs = ROOT / "runs" / "hrr_ledger"
    shutil.rmtree(runs, ignore_errors=True)
    log = lambda message: print(f"[{time.perf_counter() - t0:7.1f}s] {message}", file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    warm = base_config(args, runs / "warm_start")
    warm.steps = 0
    train(warm, log=log)
    warm_s = time.perf_counter() - t0
    arms = {"off": {}, "on": {"hrr": {"beta": args.beta, "mode": "add", "group_norm": True}}}
    results = {}
    for name, plugins in arms.items():
        cfg = base_config(args, runs / name)
        cfg.learner = dataclasses.replace(cfg.learner, plugins=plugins)
        results[name] = {"learner": {"plugins": plugins},
                         **run_arm(runs / "warm_start", cfg, log=lambda m, n=name: log(f"{n}: {m}"))}
    return {"warm_start_s": warm_s, "total_s": time.perf_counter() - t0, "arms": results,
            "config": {"env_kwargs": ENV_KWARGS, "seed": args.seed, "steps": args.steps, "tasks_per_step": args.tasks,
                       "group_size": args.group, "sft_steps": args.sft_steps, "eval_tasks": args.eval_tasks, "beta": args.beta},
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
                       f"Python {platform.python_version()}, load average {' / '.join(f'{x:.2f}' for x in os.getloadavg())} at end",
            "date": time.strftime("%Y-%m-%d")}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6.4, 3.8))
    labels = {"off": "GRPO", "on": f"GRPO + HRR (beta={result['config']['beta']}, group-normalised)"}
    for name, arm in result["arms"].items():
        axis.plot(range(1, len(arm["reward"]) + 1), arm["reward"], marker="o", label=labels[name])
    axis.set_xlabel("GRPO step")
    axis.set_ylabel("mean reward of the step's rollouts")
    c = result["config"]
    axis.set_title(f"Ledger-v0 ({c['env_kwargs']['turns']} pages, agent-driven zip @ {c['env_kwargs']['budget_tokens']} tokens), "
                   f"tiny model, seed {c['seed']}", fontsize=9)
    axis.set_ylim(-0.02, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(result: dict) -> str:
    c, arms = result["config"], result["arms"]
    lines = [
        "# HRR on vs off: short CPU GRPO run on Ledger-v0 (agent-driven zip compression)", "",
        f"Generated by `python benchmarks/hrr_ledger.py` on {result['date']} · {result['machine']}. "
        f"Plot: `hrr_ledger.png`; raw numbers: `hrr_ledger.json`.", "",
        f"Setup: Ledger-v0 {c['env_kwargs']}; random-init `tiny` Qwen2 (0.9 M parameters) with the shipped tokenizer; "
        f"{c['sft_steps']} SFT steps on the Ledger reader's demonstrations (shared warm start), then {c['steps']} GRPO "
        f"steps of {c['tasks_per_step']} tasks × {c['group_size']} samples per arm, seed {c['seed']}, same seeds and "
        f"same starting weights and RNG state for both arms. HRR: additive, β = {c['beta']} (fixed beforehand, not "
        "tuned), D normalised by its std over the group's turns. Reward = fraction of the episode's probes answered "
        "exactly; success = all probes right; held-out success on "
        f"{c['eval_tasks']} unseen seeds.", "",
        "| arm | reward per step | mean reward, all steps | loss per step | held-out success before → after | wall (s) |",
        "|---|---|---:|---|---:|---:|",
    ]
    for name, arm in arms.items():
        rewards = arm["reward"]
        lines.append(f"| {name} ({'hrr ' + str(arm['learner']['plugins'].get('hrr', 'off'))}) | {' '.join(f'{r:.2f}' for r in rewards)} | "
                     f"{sum(rewards) / max(len(rewards), 1):.3f} | {' '.join(f'{x:+.3f}' for x in arm['loss'])} | "
                     f"{arm['success_before']:.3f} → {arm['success_after']:.3f} | {arm['wall_s']:.0f} |")
    silent = {name: sum(1 for x in arm["loss"] if x == 0.0) for name, arm in arms.items()}
    lines += ["", f"Warm start (SFT + held-out evaluation, shared): {result['warm_start_s']:.0f} s; total {result['total_s']:.0f} s.", "",
              "Reading: one seed and a handful of steps on a 0.9 M-parameter model, with reward this sparse, cannot "
              "tell whether HRR helps: the differences between the curves are single correct probes and within what "
              "another seed would change. What the run does show: HRR trains end to end on real rollouts (per-turn "
              "Q_com from the env → per-token advantages → loss), and with a sparse reward it changes what is learned "
              f"from: the off arm's loss is exactly 0 on {silent.get('off', 0)} of {len(arms['off']['loss'])} steps (every "
              "group's rewards tie, so every GRPO advantage is 0), while the on arm has a nonzero loss on "
              f"{len(arms['on']['loss']) - silent.get('on', 0)} of {len(arms['on']['loss'])} steps, from the Q_com "
              "term alone where the rewards tie (each turn is credited by the Q_com of its own compression decision)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--sft-steps", type=int, default=45)
    parser.add_argument("--eval-tasks", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="2 GRPO steps, 4 SFT steps (smoke run; results not written)")
    parser.add_argument("--from-json", action="store_true", help="only re-render the plot and table from hrr_ledger.json")
    args = parser.parse_args()
    out = ROOT / "benchmarks"
    if args.from_json:
        result = json.loads((out / "hrr_ledger.json").read_text())
        plot(result, out / "hrr_ledger.png")
        (out / "hrr_ledger.md").write_text(markdown(result))
        return
    if args.quick:
        args.steps, args.sft_steps, args.eval_tasks, args.tasks = 2, 4, 4, 2
    result = run(args)
    for name, arm in result["arms"].items():
        print(f"{name}: reward {[round(r, 3) for r in arm['reward']]} success {arm['success_before']} -> {arm['success_after']} "
              f"({arm['wall_s']:.0f} s)", file=sys.stderr)
    if args.quick:
        return
    (out / "hrr_ledger.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "hrr_ledger.png")
    (out / "hrr_ledger.md").write_text(markdown(result))
    print(f"written to {out}/hrr_ledger.{{json,png,md}}", file=sys.stderr)


if __name__ == "__main__":
    main()
