"""Arms of a comparison that all start from one shared warm start (`ablation.py`, `hrr_ledger.py`), and the
table of each seed method against the baseline its paper compares it with (`PAPER_COMPARISONS`).

The warm start (SFT + held-out evaluation, a `train` run with `steps=0`) is trained once; each arm resumes
from a copy of its step-0 checkpoint, so every arm starts from the same weights, optimizer and RNG state.
Two arms can share a warm start only if it trains the same things on the same demonstrations:
`warm_start_key` says when (same env options after the plug-ins' own, same plug-ins with a warm-start loss,
such as OCC's MTP head).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from agentenv.config import apply_overrides
from agentenv.learn.learner import LearnerConfig
from agentenv.learn.plugin import Plugin, build_plugins, with_env_options
from agentenv.learn.presets import learner_preset
from agentenv.learn.train import TrainConfig, train


@dataclass(frozen=True)
class Arm:
    """One arm: a learner preset (`presets.py`), learner overrides on top of it, env options on top of the
    run's `env_kwargs` (the preset's plug-ins add their own at train time, `Plugin.env_options`), and other
    `TrainConfig` fields (`train`, e.g. the demonstrator of its warm start)."""

    preset: str
    learner: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Comparison:
    """A method's arm against its paper's baseline arm, the sign of the difference the paper reports on its main
    metric (+1: the method is better; OCC's claim against Detach is "matches or exceeds"), and the claim."""

    method: Arm
    baseline: Arm
    paper_sign: int
    claim: str
    recipe: str = "default"  # the run both arms are built on (`RECIPES`)


def default_recipe() -> TrainConfig:
    """The embedded default (`agentenv train`) with 30 GRPO steps and 200 held-out tasks."""
    return dataclasses.replace(TrainConfig(), steps=30, eval_tasks=200)


# Ledger-v0 made for ZipRL's claims on CPU: two short pages and one final probe, so the page read first is kept
# at the level the agent's `<zip level=N/>` chose when the probe is answered, and that choice decides whether the
# answer is still in context. The demonstrator shows every page at every level (`LedgerReader(every_level=True)`),
# so the warm start learns the format and reading answers from context and leaves the level choice to RL.
LEDGER_ENV = {"turns": 2, "ledgers": 1, "probe_every": 2, "noise_lines": [1, 3], "compressor": "zip",
              "compressor_options": {"mode": "agent"}, "budget_tokens": 900, "max_turns": 4}
# The uniform baseline: every page at level 3, the finest level that drops only lines no probe asks about
# (4 adds look-alike keys, 5 is verbatim); fixed before any run. Its demonstrations carry no zip tags.
UNIFORM = Arm("dapo", env={"compressor_options": {"mode": "uniform", "level": 3}}, train={"sft_teacher": {}})


def ledger_recipe() -> TrainConfig:
    """lr 1e-4: at 5e-4 (what hrr_ledger.py had used) one Adam step, which moves every weight of the tiny model by
    about the lr, left the uniform arm's replies malformed at two seeds of three (ablation_ledger_lr5e-4.json)."""
    return TrainConfig(env_id="agentenv/Ledger-v0", env_kwargs=dict(LEDGER_ENV), steps=30, tasks_per_step=4, group_size=8,
                       max_seq_len=2048, sft_episodes=320, sft_steps=150, sft_batch_size=8,
                       sft_teacher={"every_level": True}, eval_tasks=256,
                       learner=LearnerConfig(lr=1e-4, micro_batch_size=16))


RECIPES: dict[str, Callable[[], TrainConfig]] = {"default": default_recipe, "ledger": ledger_recipe}

IH_ENV = {"execution": "delayed", "python_semantics": "session"}  # what the ih_grpo plug-in asks for
MB4 = {"mini_batches": 4}  # the schedule of the plug-ins that act only when π_θ ≠ π_old (their presets' own)

# Each method against its paper's baseline, one config apart (the baselines are presets: `Plugin.presets`).
PAPER_COMPARISONS: dict[str, Comparison] = {
    "ih_grpo": Comparison(Arm("ih_grpo"), Arm("dapo", env={**IH_ENV, "execution": "immediate"}), +1,
                          "IH-GRPO (2605.18500): +1.87/2.16/2.53 points on six math benchmarks (Qwen3-1.7B/4B/8B) over "
                          "the strongest baseline, tool calls executed immediately"),
    "ih_grpo_surrogate": Comparison(Arm("ih_grpo"), Arm("dapo", env=IH_ENV), +1,
                                    "IH-GRPO: the hierarchical surrogate (c-loss) on top of delayed execution; same env"),
    "occ_vs_detach": Comparison(Arm("occ"), Arm("occ_detach"), +1,
                                "OCC (2605.28184): matches or exceeds the Detach baseline on six math benchmarks"),
    "occ_vs_ce": Comparison(Arm("occ"), Arm("occ_ce"), +1,
                            "OCC: joint MTP training with cross-entropy degrades RL (why practice detaches)"),
    "occ_vs_fixed": Comparison(Arm("occ"), Arm("occ_fixed"), +1,
                               "OCC: a policy loss with a fixed coefficient still degrades (the correlation decays)"),
    "care_vs_pseudo_label": Comparison(Arm("care"), Arm("care_pseudo_label"), +1,
                                       "CARE (2605.25864): pseudo-label-only RLVR is prone to collapse"),
    "care_vs_random": Comparison(Arm("care"), Arm("care_random"), +1,
                                 "CARE: its acquisition beats a random choice of the same label budget"),
    "nsr_vs_decay": Comparison(Arm("nsr"), Arm("nsr_decay"), +1,
                               "NSR (2605.22703): stochastic rescue beats deterministic gradient decay"),
    "nsr_vs_dapo": Comparison(Arm("nsr"), Arm("dapo", MB4), +1, "NSR: consistent gains over DAPO and GSPO"),
    "owpo_vs_kl": Comparison(Arm("owpo"), Arm("owpo_kl"), +1,
                             "OWPO (2605.22156): token-level reference constraints can flip the verifier's direction"),
    "owpo_vs_dapo": Comparison(Arm("owpo"), Arm("dapo"), +1, "OWPO: outperforms DAPO, OPD and MOPD"),
    "fipo_vs_dapo": Comparison(Arm("fipo"), Arm("dapo", MB4), +1,
                               "FIPO (2603.19835): AIME24 50.0% → 58.0% peak over its DAPO baseline (Qwen2.5-32B)"),
    "divergence_vs_dapo": Comparison(Arm("divergence"), Arm("dapo", MB4), +1,
                                     "Sparse but Critical (2603.22446): divergence-weighted advantages improve on DAPO"),
    "direction_vs_dapo": Comparison(Arm("direction"), Arm("dapo"), +1,
                                    "RLVR directions (2603.22117): reweighting low-probability tokens improves reasoning"),
    "amr_sd_vs_dapo": Comparison(Arm("amr_sd"), Arm("dapo"), +1,
                                 "AMR-SD (2605.18529): outperforms existing baselines, no late-stage collapse"),
    "hrr_vs_dapo": Comparison(Arm("hrr"), Arm("dapo"), +1,
                              "ZipRL (2605.28069): HRR's turn-level advantage reshaping densifies the sparse reward "
                              "(+27.9% / +34.7% over five agent tasks, Qwen3-4B / 8B)", recipe="ledger"),
    "zip_adaptive_vs_uniform": Comparison(Arm("dapo"), UNIFORM, +1,
                                          "ZipRL: the agent choosing each document's level beats one uniform level",
                                          recipe="ledger"),
}


def arm_config(base: TrainConfig, arm: Arm, out_dir: str | Path | None = None) -> TrainConfig:
    """`base` with the arm's learner (its preset, then its overrides, keeping `base.learner`'s other fields such as
    lr and micro-batch size) and env options; `out_dir` if given."""
    learner = copy.deepcopy(base.learner)
    apply_overrides(learner, {**learner_preset(arm.preset), **arm.learner})
    return dataclasses.replace(base, learner=learner, env_kwargs={**base.env_kwargs, **arm.env}, **arm.train,
                               out_dir=str(out_dir) if out_dir is not None else base.out_dir)


def warm_start_key(cfg: TrainConfig) -> tuple:
    """Equal for two arm configs that can share one warm start: the env its demonstrations come from (after the
    plug-ins' env options), the demonstrator, and the plug-ins that add a warm-start loss (`Plugin.sft_loss`,
    e.g. an MTP head)."""
    plugins = build_plugins(cfg.learner)
    env = with_env_options(cfg.env_kwargs, plugins)
    sft = sorted(p.name for p in plugins if type(p).sft_loss is not Plugin.sft_loss)
    return json.dumps([cfg.env_id, env, cfg.sft_teacher], sort_keys=True, default=str), tuple(sft)


def comparison_configs(base: TrainConfig, name: str) -> tuple[TrainConfig, TrainConfig]:
    """(method, baseline) configs of comparison `name`, on top of `base`; they differ only as the table says and
    share the update schedule (checked). Whether they can share a warm start is `warm_start_key`'s to say:
    OCC's arms all train the MTP head in theirs; IH-GRPO's immediate-execution baseline needs its own."""
    comparison = PAPER_COMPARISONS[name]
    method, baseline = arm_config(base, comparison.method), arm_config(base, comparison.baseline)
    schedule = ("ppo_epochs", "mini_batches", "lr", "micro_batch_size")
    if any(getattr(method.learner, k) != getattr(baseline.learner, k) for k in schedule):
        raise ValueError(f"{name}: the two arms must share the update schedule {schedule}")
    return method, baseline


def run_arm(warm_dir: Path, cfg: TrainConfig, log: Callable[[str], None],
            prepare: Callable[[Path], None] | None = None) -> dict:
    """Copy `warm_dir` to `cfg.out_dir`, resume training there; per-step curves and the held-out summary.

    `prepare(out_dir)` may edit the copied checkpoint first (e.g. add an arm's extra parameters).
    """
    out_dir = Path(cfg.out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.copytree(warm_dir, out_dir)
    if prepare is not None:
        prepare(out_dir)
    (out_dir / "config.yaml").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))  # the arm's own config
    started = time.perf_counter()
    summary = train(cfg, resume=True, log=log)
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {"reward": [r["reward_mean"] for r in rows], "success": [r["success_rate"] for r in rows],
            "turns": [r["turns_mean"] for r in rows], "loss": [r["loss"] for r in rows],
            "success_before": summary["success_before"], "success_after": summary["success_after"],
            "wall_s": time.perf_counter() - started}
