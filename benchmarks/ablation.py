"""Ablation v2: each seed method against the baseline its paper compares it with, over several seeds, with paired
bootstrap confidence intervals (`arms.PAPER_COMPARISONS`), each comparison on its recipe (`arms.RECIPES`).

Recipes (`arms.RECIPES`): "default", the embedded default (`agentenv train`: tiny model, ToolReasoning-v0 counting
with the calculator) with 30 GRPO steps and 200 held-out tasks; "ledger", a two-page Ledger-v0 with agent-driven zip
compression for ZipRL's comparisons (HRR vs DAPO, the agent's own levels vs one uniform level). `--steps`,
`--eval-tasks` and `--sft-steps` override every recipe's. Each arm is its preset on top of its comparison's recipe
(`arms.arm_config`), nothing tuned per arm. Arms that can share a warm start (`warm_start_key`: same env after the
plug-ins' options, same demonstrator, same warm-start losses) resume from one step-0 checkpoint per seed, so within
a seed they start from the same weights, optimizer and RNG state; an arm used by several comparisons (dapo) runs
once per seed.

Statistic: the held-out success after GRPO, method minus baseline, paired task by task (the same held-out seeds)
and averaged over the seeds. 95% CI: a two-level bootstrap (seeds with replacement, then tasks within each seed),
so it carries both the evaluation noise and the seed-to-seed spread of training.

    OMP_NUM_THREADS=1 python benchmarks/ablation.py [--seeds 0,1,2] [--comparisons a,b] [--steps N] [--jobs 2]
    python benchmarks/ablation.py --from-json [--reading FILE]   # re-render ablation.{md,png}; FILE: the Reading

Runs go to runs/ablation/seed{N}/ (ignored by git); a finished run (its eval.json) is not run again, so an
interrupted ablation resumes where it stopped. Writes benchmarks/ablation.{json,md,png} after every finished run,
keeping the results of the comparisons not run this time.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import multiprocessing
import os
import platform
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from agentenv.learn.train import TrainConfig, train  # noqa: E402
from arms import PAPER_COMPARISONS, RECIPES, comparison_configs, run_arm, warm_start_key  # noqa: E402

OUT = ROOT / "benchmarks"
RUNS = ROOT / "runs" / "ablation"


def base_config(recipe: str, seed: int, overrides: dict) -> TrainConfig:
    """Recipe `recipe` (`arms.RECIPES`) at `seed`, with the command line's overrides (steps, eval_tasks, sft_steps)."""
    given = {key: value for key, value in overrides.items() if value is not None}
    return dataclasses.replace(RECIPES[recipe](), seed=seed, device="cpu", checkpoint_every=10_000, **given)


def config_id(cfg: TrainConfig) -> str:
    """A short name for everything that makes a run what it is (its directory excluded)."""
    fields = dataclasses.asdict(cfg)
    fields.pop("out_dir")
    return hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:10]


def plan(seeds: list[int], overrides: dict, names: list[str]) -> tuple[dict, dict, dict]:
    """(warm starts, arms, comparisons): warm id -> config; arm id -> (config, warm id, label, recipe); comparison
    name -> seed -> (method arm id, baseline arm id)."""
    warms: dict[str, TrainConfig] = {}
    arms: dict[str, tuple[TrainConfig, str, str, str]] = {}
    comparisons: dict[str, dict[int, tuple[str, str]]] = {}
    for seed in seeds:
        warm_of_key: dict[tuple, str] = {}
        for name in names:
            recipe = PAPER_COMPARISONS[name].recipe
            base = base_config(recipe, seed, overrides)
            pair = []
            for cfg, arm in zip(comparison_configs(base, name), (PAPER_COMPARISONS[name].method, PAPER_COMPARISONS[name].baseline)):
                key = warm_start_key(cfg)
                if key not in warm_of_key:
                    warm = dataclasses.replace(cfg, steps=0)  # trains what every arm of this key needs (OCC's head)
                    warm_id = hashlib.sha1(json.dumps([seed, key], default=str).encode()).hexdigest()[:10]
                    warm_of_key[key] = warm_id
                    warms[warm_id] = dataclasses.replace(warm, out_dir=str(RUNS / f"seed{seed}" / f"warm-{warm_id}"))
                arm_id = config_id(cfg)
                label = arm.preset + "".join(f" {k}={v}" for k, v in {**arm.learner, **arm.env, **arm.train}.items())
                arms[arm_id] = (dataclasses.replace(cfg, out_dir=str(RUNS / f"seed{seed}" / f"arm-{arm_id}")),
                                warm_of_key[key], label, recipe)
                pair.append(arm_id)
            comparisons.setdefault(name, {})[seed] = tuple(pair)
    return warms, arms, comparisons


def finished(out_dir: str) -> dict | None:
    path = Path(out_dir) / "eval.json"
    return json.loads(path.read_text()) if path.exists() else None


def _job(kind: str, cfg: TrainConfig, warm_dir: str | None) -> dict:
    """One warm start or arm, in a worker process (one torch thread); its log goes beside its run."""
    import torch

    torch.set_num_threads(1)
    Path(cfg.out_dir).parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(f"{cfg.out_dir}.log", "w") as fh:
        log = lambda message: print(message, file=fh, flush=True)  # noqa: E731
        if kind == "warm":
            train(cfg, log=log)
        else:
            run_arm(Path(warm_dir), cfg, log)
    summary = finished(cfg.out_dir)
    summary["job_wall_s"] = time.perf_counter() - started
    tmp = Path(cfg.out_dir, "eval.json.tmp")  # replaced whole: `finished` reads it to decide what is done
    tmp.write_text(json.dumps(summary, indent=1))
    tmp.replace(Path(cfg.out_dir, "eval.json"))
    return summary


def execute(warms: dict, arms: dict, jobs: int, on_result) -> None:
    """Warm starts first, each arm as soon as its warm start is done; `jobs` processes at a time."""
    pending_arms = {arm_id: spec for arm_id, spec in arms.items() if finished(spec[0].out_dir) is None}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        running: dict[Future, tuple[str, str]] = {}

        def submit_ready() -> None:
            for arm_id, (cfg, warm_id, _, _) in list(pending_arms.items()):
                if finished(warms[warm_id].out_dir) is not None:
                    running[pool.submit(_job, "arm", cfg, warms[warm_id].out_dir)] = ("arm", arm_id)
                    del pending_arms[arm_id]

        for warm_id, cfg in warms.items():
            if finished(cfg.out_dir) is None and any(spec[1] == warm_id for spec in pending_arms.values()):
                running[pool.submit(_job, "warm", cfg, None)] = ("warm", warm_id)
        submit_ready()
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                kind, ident = running.pop(future)
                try:
                    future.result()
                    print(f"[{time.strftime('%H:%M:%S')}] done {kind} {ident}", file=sys.stderr, flush=True)
                except Exception as err:  # one broken run must not lose the others
                    print(f"[{time.strftime('%H:%M:%S')}] FAILED {kind} {ident}: {err!r}", file=sys.stderr, flush=True)
            submit_ready()
            on_result()


def paired_bootstrap(diffs: list[np.ndarray], resamples: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """Mean over seeds of the per-seed mean paired difference, and its 95% percentile CI from resampling seeds
    with replacement and then tasks within each seed."""
    rng = np.random.default_rng(seed)
    per_seed = np.stack([d[rng.integers(0, len(d), (resamples, len(d)))].mean(1) for d in diffs])  # [S, B]
    picks = rng.integers(0, len(diffs), (resamples, len(diffs)))
    stats = per_seed[picks, np.arange(resamples)[:, None]].mean(1)
    low, high = np.percentile(stats, [2.5, 97.5])
    return float(np.mean([d.mean() for d in diffs])), float(low), float(high)


def recipe_summary(cfg: TrainConfig, seeds: list[int], jobs: int) -> dict:
    """What a recipe's runs are, for the table: the run's settings that every arm of the recipe shares."""
    return {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores", "jobs": jobs,
            "seeds": seeds, "env_id": cfg.env_id, "env_kwargs": cfg.env_kwargs, "model": cfg.model, "steps": cfg.steps,
            "eval_tasks": cfg.eval_tasks, "tasks_per_step": cfg.tasks_per_step, "group_size": cfg.group_size,
            "sft_steps": cfg.sft_steps, "sft_episodes": cfg.sft_episodes, "sft_teacher": cfg.sft_teacher, "lr": cfg.learner.lr}


def previous_results() -> dict:
    """ablation.json as last written (comparisons not run now keep their results), or an empty result."""
    path = OUT / "ablation.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    return {"recipes": {}, "arms": {}, "comparisons": {}, **result}


def collect_results(args: argparse.Namespace, warms: dict, arms: dict, comparisons: dict) -> dict:
    result = previous_results()
    recipes = {PAPER_COMPARISONS[name].recipe for name in comparisons}
    for recipe in recipes:
        result["recipes"][recipe] = recipe_summary(base_config(recipe, 0, overrides(args)), args.seeds, args.jobs)
    result["arms"] = {arm_id: arm for arm_id, arm in result["arms"].items()  # an earlier run's arms of these recipes
                      if arm.get("recipe", "default") not in recipes or arm_id in arms}
    for arm_id, (cfg, warm_id, label, recipe) in arms.items():
        summary = finished(cfg.out_dir)
        warm = finished(warms[warm_id].out_dir)
        result["arms"][arm_id] = {"label": label, "recipe": recipe, "seed": cfg.seed, "warm": warm_id,
                                  "warm_wall_s": warm and warm.get("job_wall_s"),
                                  **({k: summary.get(k) for k in ("success_before", "success_after", "job_wall_s",
                                                                  "held_out_before", "held_out_after")} if summary else {})}
    for name, by_seed in comparisons.items():
        entry = {"claim": PAPER_COMPARISONS[name].claim, "paper_sign": PAPER_COMPARISONS[name].paper_sign,
                 "recipe": PAPER_COMPARISONS[name].recipe, "seeds": {}}
        diffs = []
        for seed, (method, baseline) in by_seed.items():
            a, b = result["arms"][method], result["arms"][baseline]
            entry["method"], entry["baseline"] = a["label"], b["label"]
            if a.get("held_out_after") and b.get("held_out_after"):
                d = np.array(a["held_out_after"]) - np.array(b["held_out_after"])
                diffs.append(d)
                entry["seeds"][str(seed)] = {"method_after": a["success_after"], "baseline_after": b["success_after"],
                                             "method_before": a["success_before"], "baseline_before": b["success_before"],
                                             "diff": float(d.mean())}
        if diffs:
            entry["diff"], entry["ci_low"], entry["ci_high"] = paired_bootstrap(diffs)
            entry["n_seeds"] = len(diffs)
        result["comparisons"][name] = entry
    return result


def verdict(entry: dict) -> str:
    if "diff" not in entry:
        return "not run"
    if entry["ci_low"] > 0 or entry["ci_high"] < 0:
        ours = 1 if entry["ci_low"] > 0 else -1
        return "agrees" if ours == entry["paper_sign"] else "opposite"
    return "no difference resolved"


def recipe_text(name: str, r: dict) -> str:
    if name == "default":
        setting = (f"the embedded default (`agentenv train`: tiny model, ToolReasoning-v0 counting with the calculator, "
                   f"{r['sft_steps']} SFT steps on the demonstrator "
                   f"{r['sft_teacher'] or 'as shipped (every formula for every question)'}")
    else:
        setting = (f"{r['env_id']} {r['env_kwargs']}, {r['model']} model, {r['sft_steps']} SFT steps on "
                   f"{r['sft_episodes']} demonstrations by its scripted agent {r['sft_teacher']}")
    return (f"**{name}** ({r['date']}, {r['machine']}, {r['jobs']} runs at a time, one torch thread each): {setting}, "
            f"{r['tasks_per_step']} tasks × {r['group_size']} samples a step, lr {r['lr']}) with **{r['steps']} GRPO "
            f"steps per arm** and **{r['eval_tasks']} held-out tasks**, seeds {', '.join(map(str, r['seeds']))}.")


def markdown(result: dict) -> str:
    lines = [
        "# Ablation v2: each seed method against its paper's baseline",
        "",
        "Measured with `benchmarks/ablation.py` on the recipes (`arms.RECIPES`) below. Each arm is its preset on its "
        "comparison's recipe; nothing is tuned per arm. Arms of one seed that can share a warm start resume from one "
        "step-0 checkpoint.",
        "",
        *[f"- {recipe_text(name, r)}" for name, r in result["recipes"].items()],
        "",
        "Δ = held-out success after GRPO, method − baseline, paired task by task and averaged over seeds; 95% CI from "
        "a two-level bootstrap (seeds, then tasks). *Paper* is the sign the paper reports; *ours* says whether the CI "
        "excludes 0 and on which side.",
        "",
        "| comparison | recipe | method | baseline | Δ per seed | Δ mean [95% CI] | paper | ours |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, e in result["comparisons"].items():
        per_seed = " / ".join(f"{s['diff']:+.3f}" for s in e["seeds"].values()) or "—"
        mean = f"{e['diff']:+.3f} [{e['ci_low']:+.3f}, {e['ci_high']:+.3f}]" if "diff" in e else "—"
        lines.append(f"| {name} | {e.get('recipe', 'default')} | {e.get('method', '')} | {e.get('baseline', '')} | {per_seed} | {mean} | "
                     f"{'+' if e['paper_sign'] > 0 else '−'} | {verdict(e)} |")
    lines += ["", "## Arms", "", "| recipe | arm | seed | held-out before → after | gain | arm wall | warm start wall |",
              "|---|---|---:|---|---:|---:|---:|"]
    for arm in sorted(result["arms"].values(), key=lambda a: (a.get("recipe", "default"), a["label"], a["seed"])):
        head = f"| {arm.get('recipe', 'default')} | {arm['label']} | {arm['seed']}"
        if arm.get("success_after") is None:
            lines.append(f"{head} | not run | | | |")
            continue
        lines.append(f"{head} | {arm['success_before']:.3f} → {arm['success_after']:.3f} | "
                     f"{arm['success_after'] - arm['success_before']:+.3f} | {arm['job_wall_s']:.0f} s | "
                     f"{arm['warm_wall_s'] or 0:.0f} s |")
    if result.get("reading"):
        lines += ["", "## Reading", "", result["reading"].strip()]
    lines += ["", "## Claims", ""] + [f"- **{name}**: {e['claim']}" for name, e in result["comparisons"].items()]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [(name, e) for name, e in result["comparisons"].items() if "diff" in e]
    if not entries:
        return
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(entries) + 1.5))
    for y, (name, e) in enumerate(entries):
        ax.errorbar(e["diff"], y, xerr=[[e["diff"] - e["ci_low"]], [e["ci_high"] - e["diff"]]], fmt="o",
                    color="C0" if verdict(e) == "no difference resolved" else ("C2" if verdict(e) == "agrees" else "C3"))
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_yticks(range(len(entries)), [name for name, _ in entries])
    ax.set_xlabel("held-out success, method − paper baseline (95% CI)")
    ax.set_title("each method vs its paper's baseline (recipes: benchmarks/ablation.md)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(result: dict) -> None:
    tmp = OUT / "ablation.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(OUT / "ablation.json")
    (OUT / "ablation.md").write_text(markdown(result))
    plot(result, OUT / "ablation.png")


def overrides(args: argparse.Namespace) -> dict:
    return {"steps": args.steps, "eval_tasks": args.eval_tasks, "sft_steps": args.sft_steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, help="GRPO steps per arm (default: each recipe's, arms.RECIPES)")
    parser.add_argument("--eval-tasks", type=int, help="held-out tasks (default: each recipe's)")
    parser.add_argument("--comparisons", default="all", help="comma-separated names of arms.PAPER_COMPARISONS")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--sft-steps", type=int, help="warm-start steps (default: each recipe's; less only to check the script)")
    parser.add_argument("--from-json", action="store_true")
    parser.add_argument("--reading", help="with --from-json: a file whose text becomes the table's Reading section")
    args = parser.parse_args()
    if args.from_json:
        result = previous_results()
        if args.reading:
            result["reading"] = Path(args.reading).read_text()
        write(result)
        return
    args.seeds = [int(s) for s in args.seeds.split(",")]
    names = list(PAPER_COMPARISONS) if args.comparisons == "all" else args.comparisons.split(",")
    warms, arms, comparisons = plan(args.seeds, overrides(args), names)
    print(f"{len(warms)} warm starts, {len(arms)} arms", file=sys.stderr, flush=True)
    refresh = lambda: write(collect_results(args, warms, arms, comparisons))  # noqa: E731
    execute(warms, arms, args.jobs, refresh)
    refresh()


if __name__ == "__main__":
    main()
