"""`agentenv stress SCENARIO.yaml`: long-horizon stress runs of a compressor on Ledger-v0.

The oracle-reading scripted policy (`envs/ledger_scripted.py`) reads the feed and answers every probe from
its (compressed) context alone, so what it gets right is exactly what the compressor kept. Per run:

* **retention**: mean over turns of the fraction of the still-needed facts (the latest fact of every tracked
  key shown so far, and the tracked events of the aggregation window: `LedgerStream.state_facts`) whose
  exact line is in the observation; **needed retention**: the same for the facts the episode's actual
  future probes need (`needed_facts`, Live_t of docs/anchors-domains.md §1.3); **probe accuracy**.
* **tokens kept** (final context), **keep ratio** (final context / full history), **cumulative ratio**
  (Σ context tokens / Σ full-history tokens over the turns), **peak tokens** (largest context).
* **turns/s** (framework overhead: policy + env + compression, metric code excluded; wall clock and
  process CPU time) and **peak RSS** of the process.

A sweep over `sweep_budgets` × (the compressor and `compare`) writes a retention-vs-budget plot.
"""

from __future__ import annotations

import argparse
import math
import resource
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from agentenv.errors import UserError

__all__ = ["StressConfig", "RunStats", "load_scenario", "run_stress", "sweep", "plot_sweep", "cmd_stress", "add_stress_parser"]


@dataclass
class StressConfig:
    """A stress scenario; YAML files in `scenarios/` fill it in."""

    name: str = "stress"
    env: str = "agentenv/Ledger-v0"
    env_kwargs: dict[str, Any] = field(default_factory=lambda: {"turns": 256})
    episodes: int = 2
    seed: int = 0
    compressor: str = "zip"
    compressor_options: dict[str, Any] = field(default_factory=dict)  # for `compressor` only, e.g. {mode: uniform, level: 2}
    budget_tokens: int = 2048
    tokenizer: str = "auto"
    keep_full_history: bool = False  # True: the env keeps every message and zip re-plans the whole history
    sweep_budgets: list[int] = field(default_factory=lambda: [1024, 2048, 4096, 8192])
    compare: list[str] = field(default_factory=lambda: ["window", "mask_observations"])
    plot: str | None = None  # default: runs/<name>-retention.png


@dataclass
class RunStats:
    """Means over the episodes of one (compressor, budget) run; see the module doc."""

    compressor: str
    budget_tokens: int
    episodes: int
    turns: float
    retention: float
    needed_retention: float
    probe_accuracy: float
    tokens_full: float
    tokens_kept: float
    keep_ratio: float
    cumulative_ratio: float
    peak_tokens: int
    rewrites: float
    turns_per_s: float
    turns_per_cpu_s: float
    peak_rss_mb: float


def load_scenario(path: str | Path) -> StressConfig:
    """A `StressConfig` from a YAML file; unknown keys are an error that names the known ones."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    known = {f.name for f in fields(StressConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"{path}: unknown key(s) {unknown}; known: {sorted(known)}")
    return StressConfig(**data)


def _present(messages: list[dict[str, Any]]) -> set[str]:
    return {line.strip() for m in messages for line in m["content"].split("\n")}


def _fraction(facts: list[Any], present: set[str]) -> float | None:
    return sum(f.line in present for f in facts) / len(facts) if facts else None


class _Mean:
    """A running mean of the values that are not None (NaN when there are none): the runner keeps no
    per-turn lists, so its memory does not grow with the episode either."""

    __slots__ = ("total", "count")

    def __init__(self) -> None:
        self.total, self.count = 0.0, 0

    def add(self, value: float | None) -> None:
        if value is not None:
            self.total += value
            self.count += 1

    @property
    def value(self) -> float:
        return self.total / self.count if self.count else float("nan")


def _mean(values: list[float | None]) -> float:
    """Mean of the values that are not None; NaN when there are none (e.g. no probe needed a fact)."""
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else float("nan")


def run_stress(config: StressConfig, compressor: str | None = None, budget_tokens: int | None = None) -> RunStats:
    """Run `config.episodes` episodes (seeds seed, seed + 1, ...) and return their mean statistics."""
    import gymnasium as gym

    import agentenv  # noqa: F401 - registers the envs
    from agentenv.compression import get
    from agentenv.envs.ledger.scripted import LedgerReader

    name = compressor or config.compressor
    options = config.compressor_options if name == config.compressor else {}
    budget = budget_tokens or config.budget_tokens
    policy = LedgerReader()  # with zip in agent mode it levels every page itself
    per_episode: list[dict[str, float]] = []
    wall = cpu = 0.0
    total_turns = 0
    try:
        get(name, **options)
    except (TypeError, ValueError) as err:
        raise UserError(f"compressor {name!r} with options {options}: {err}") from None
    for episode in range(config.episodes):
        env = gym.make(config.env, **config.env_kwargs, compressor=get(name, tokenizer=config.tokenizer, **options),
                       budget_tokens=budget, keep_full_history=config.keep_full_history)
        stream_env = env.unwrapped
        if not hasattr(stream_env, "stream"):
            raise UserError(f"{config.env} has no fact stream to measure retention on; stress runs need agentenv/Ledger-v0")
        t0, c0 = time.perf_counter(), time.process_time()
        obs, info = env.reset(seed=config.seed + episode)
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
        state, needed = _Mean(), _Mean()
        kept_sum = full_sum = peak = 0
        rewrites, reward, turns = 0, 0.0, 0
        while True:
            t0, c0 = time.perf_counter(), time.process_time()
            obs, reward, terminated, truncated, info = env.step(policy.act(obs))
            wall += time.perf_counter() - t0
            cpu += time.process_time() - c0
            turns += 1
            record = info["compression"]
            rewrites += record["rewritten"]
            kept, full = record["tokens_after"], record["tokens_full"]
            kept_sum, full_sum, peak = kept_sum + kept, full_sum + full, max(peak, kept)
            present = _present(obs)
            state.add(_fraction(stream_env.stream.state_facts(stream_env.page), present))
            needed.add(_fraction(stream_env.stream.needed_facts(stream_env.page), present))
            if terminated or truncated:
                break
        env.close()
        total_turns += turns
        per_episode.append({
            "turns": turns, "retention": state.value, "needed_retention": needed.value,
            "probe_accuracy": float(info.get("reward_components", {}).get("accuracy", 0.0)),
            "tokens_full": full, "tokens_kept": kept, "keep_ratio": kept / full,
            "cumulative_ratio": kept_sum / full_sum, "peak_tokens": peak, "rewrites": rewrites,
        })
    mean = {key: _mean([e[key] for e in per_episode if not math.isnan(e[key])]) for key in per_episode[0]}
    label = name + (f"({', '.join(f'{k}={v}' for k, v in options.items())})" if options else "")
    return RunStats(
        compressor=label, budget_tokens=budget, episodes=len(per_episode), turns=mean["turns"], retention=mean["retention"],
        needed_retention=mean["needed_retention"], probe_accuracy=mean["probe_accuracy"], tokens_full=mean["tokens_full"],
        tokens_kept=mean["tokens_kept"], keep_ratio=mean["keep_ratio"], cumulative_ratio=mean["cumulative_ratio"],
        peak_tokens=int(max(e["peak_tokens"] for e in per_episode)), rewrites=mean["rewrites"],
        turns_per_s=total_turns / wall, turns_per_cpu_s=total_turns / cpu,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )


def sweep(config: StressConfig, compressors: list[str], budgets: list[int]) -> list[RunStats]:
    """`run_stress` for every compressor at every budget."""
    return [run_stress(config, name, budget) for name in compressors for budget in budgets]


def plot_sweep(rows: list[RunStats], path: str | Path, title: str) -> Path:
    """Retention and probe accuracy vs budget, one line per compressor (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for k, name in enumerate(dict.fromkeys(r.compressor for r in rows)):
        mine = sorted((r for r in rows if r.compressor == name), key=lambda r: r.budget_tokens)
        budgets = [r.budget_tokens for r in mine]
        left.plot(budgets, [r.retention for r in mine], marker="o", label=name)
        right.plot(budgets, [r.probe_accuracy for r in mine], marker="o", label=name)
        for r in mine if k == 0 else ():  # the compressor under test
            left.annotate(f"{100 * r.keep_ratio:.1f}%", (r.budget_tokens, r.retention), fontsize=7, textcoords="offset points", xytext=(0, 5))
    for axis, label in ((left, "retention of still-needed facts"), (right, "probe accuracy (oracle reader)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("budget (tokens)")
        axis.set_ylabel(label)
        axis.set_ylim(-0.02, 1.05)
        axis.grid(alpha=0.3)
    left.legend(fontsize=8)
    left.set_title(f"labels: {rows[0].compressor}'s final context / full history", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _headline(r: RunStats) -> str:
    return "\n".join([
        f"retention (still-needed facts)  {r.retention:.3f}",
        f"needed retention (probe facts)  {r.needed_retention:.3f}",
        f"probe accuracy (oracle reader)  {r.probe_accuracy:.3f}",
        f"tokens kept / full history      {r.tokens_kept:.0f} / {r.tokens_full:.0f} ({100 * r.keep_ratio:.2f}%; cumulative {100 * r.cumulative_ratio:.2f}%)",
        f"peak tokens                     {r.peak_tokens}",
        f"rewrites per episode            {r.rewrites:.0f}",
        f"turns/s                         {r.turns_per_s:.0f} wall, {r.turns_per_cpu_s:.0f} per CPU-second",
        f"peak RSS                        {r.peak_rss_mb:.0f} MB",
    ])


def _table(rows: list[RunStats], title: str) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for column in ("compressor", "budget", "retention", "needed", "probes", "kept", "cumul.", "peak", "turns/s"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            r.compressor, str(r.budget_tokens), f"{r.retention:.3f}", f"{r.needed_retention:.3f}", f"{r.probe_accuracy:.3f}",
            f"{100 * r.keep_ratio:.1f}%", f"{100 * r.cumulative_ratio:.1f}%", str(r.peak_tokens), f"{r.turns_per_s:.0f}",
        )
    return table


def cmd_stress(args: argparse.Namespace) -> int:
    """Run a stress scenario: the headline run, then (unless --no-sweep) the budget sweep and its plot."""
    from rich.console import Console

    config = load_scenario(args.scenario)
    overrides = {"compressor": args.compressor, "budget_tokens": args.budget, "episodes": args.episodes,
                 "compressor_options": yaml.safe_load(args.compressor_options) if args.compressor_options else None,
                 "tokenizer": args.tokenizer, "plot": args.plot, "keep_full_history": args.keep_full_history or None}
    if args.compressor and args.compressor != config.compressor and not args.compressor_options:
        config.compressor_options = {}  # the scenario's options were for its own compressor
    for key, value in overrides.items():
        if value is not None:
            setattr(config, key, value)
    console = Console(width=max(Console().width, 110))  # the tables are wider than a default pipe
    headline = run_stress(config)
    console.print(f"[bold]{config.name}[/bold]: {config.env} {config.env_kwargs}, {config.episodes} episode(s), "
                  f"{headline.compressor} at {headline.budget_tokens} tokens, tokenizer {config.tokenizer}")
    console.print(_headline(headline), highlight=False)
    if args.no_sweep:
        return 0
    compressors = list(dict.fromkeys([config.compressor, *config.compare]))
    rows = sweep(config, compressors, list(config.sweep_budgets))
    console.print(_table(rows, f"{config.name}: retention vs budget"))
    path = plot_sweep(rows, config.plot or f"runs/{config.name}-retention.png", f"{config.name} ({config.env_kwargs})")
    console.print(f"plot written to {path}")
    return 0


def add_stress_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `stress` subcommand to an `argparse` subparsers object (its handler is `cmd_stress`)."""
    parser = subparsers.add_parser(
        "stress", help="long-horizon compression stress run on Ledger-v0 (retention, tokens, turns/s, RSS, plot)",
        description="Run a scenario YAML (see scenarios/) with the oracle-reading scripted policy.",
    )
    parser.add_argument("scenario", help="scenario YAML, e.g. scenarios/stress-256.yaml")
    parser.add_argument("--compressor", default=None, help="none, window, mask_observations, summarize or zip (default: the scenario's)")
    parser.add_argument("--compressor-options", default=None,
                        help="YAML mapping of the compressor's options, e.g. '{mode: uniform, level: 2}' or '{mode: agent}' "
                             "(ZipRL's uniform baseline vs the reader levelling each page; default: the scenario's)")
    parser.add_argument("--budget", type=int, default=None, help="context budget in tokens (default: the scenario's)")
    parser.add_argument("--episodes", type=int, default=None, help="episodes per run (default: the scenario's)")
    parser.add_argument("--tokenizer", default=None, help="auto (cl100k offline), cl100k or regex (default: the scenario's)")
    parser.add_argument("--plot", default=None, help="PNG path of the retention-vs-budget plot (default runs/<name>-retention.png)")
    parser.add_argument("--no-sweep", action="store_true", help="only the headline run: no budget sweep, no plot")
    parser.add_argument("--keep-full-history", action="store_true",
                        help="keep every message and re-plan the whole history at each rewrite (memory grows with the episode)")
    parser.set_defaults(func=cmd_stress)
    return parser

