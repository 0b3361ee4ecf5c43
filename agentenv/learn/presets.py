"""Named learner presets: bundles of `LearnerConfig` overrides, loaded by `--learner.preset=NAME`.

In YAML, write `learner: {preset: dapo, lr: 1e-4}`. A preset applies where it appears, so list it before the
keys it should not override. Every preset sets all the algorithm fields below, so a preset means the same
algorithm whatever came before it.

- `grpo`: symmetric clip 0.2, group-std advantages, seq-mean-token-mean (TRL `loss_type="grpo"`).
- `dr_grpo`: no std scaling, seq-mean-token-sum-norm (Dr.GRPO, TRL `dr_grpo`).
- `dapo`: clip-higher 0.2/0.28, token-mean, zero-variance groups dropped (DAPO's dynamic sampling as a
  mask; there is no regeneration).
- `gspo`: sequence-level ratio clipped to 3e−4/4e−4, seq-mean-token-mean (GSPO).
- `cispo`: CISPO's clipped IS weight with TRL's absolute cap 5.0, token-mean (MiniMax-M1, ScaleRL).
- one preset per registered plug-in (`agentenv/learn/plugins/`): `dapo` plus that plug-in at its config's
  defaults. The plug-ins that act only when π_θ ≠ π_old (`Plugin.off_policy`: divergence, fipo, nsr, occ)
  also get 4 mini-batches per rollout batch. Compare them against `dapo` with the same
  `--learner.mini_batches`. To stack plug-ins, name them: `--learner.plugins=fipo,owpo`.
- each plug-in's named variants (`Plugin.presets`: the baselines its paper compares against, e.g.
  `nsr_decay`, `care_random`, `occ_detach`, `owpo_kl`): that plug-in's preset plus the variant's overrides,
  so a method and its baseline differ in exactly those settings.
"""

from __future__ import annotations

import copy
from typing import Any

from agentenv.config import did_you_mean
from agentenv.learn.plugin import registry

__all__ = ["PRESETS", "learner_preset", "preset_names"]

GRPO: dict[str, Any] = dict(
    advantage="grpo", scale_rewards="group", ratio_level="token", loss="ppo_clip", eps_low=0.2, eps_high=0.2,
    dual_clip=None, aggregation="seq-mean-token-mean", filter_zero_variance=False, mini_batches=1, plugins=[],
)
DAPO = {**GRPO, "eps_high": 0.28, "aggregation": "token-mean", "filter_zero_variance": True}

PRESETS: dict[str, dict[str, Any]] = {
    "grpo": GRPO,
    "dr_grpo": {**GRPO, "scale_rewards": "none", "aggregation": "seq-mean-token-sum-norm"},
    "dapo": DAPO,
    "gspo": {**GRPO, "ratio_level": "sequence", "eps_low": 3e-4, "eps_high": 4e-4},
    "cispo": {**GRPO, "loss": "cispo", "cispo_cap": 5.0, "aggregation": "token-mean"},
}


def preset_names() -> list[str]:
    """The algorithm presets, then one per registered plug-in, then the plug-ins' named variants."""
    plugins = registry()
    return [*PRESETS, *plugins, *(name for cls in plugins.values() for name in cls.presets)]


def learner_preset(name: str) -> dict[str, Any]:
    """A fresh copy of preset `name`'s overrides (field name -> value)."""
    if name in PRESETS:
        return copy.deepcopy(PRESETS[name])
    plugins = registry()
    if name in plugins:
        return {**copy.deepcopy(DAPO), "plugins": [name], "mini_batches": 4 if plugins[name].off_policy else 1}
    for cls in plugins.values():
        if name in cls.presets:
            variant = copy.deepcopy(cls.presets[name])
            return {**learner_preset(cls.name), "plugins": variant.pop("plugins", [cls.name]), **variant}
    raise ValueError(f"unknown learner preset {name!r}{did_you_mean(name, preset_names())}; known: {', '.join(preset_names())}")
