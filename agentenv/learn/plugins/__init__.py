"""The learner's plug-ins, one module per paper: each has a config dataclass and a `Plugin` subclass
(agentenv/learn/plugin.py) whose hooks change the update. Switch one on with `--learner.plugins=NAME` or a
preset (`--learner.preset=NAME`: `dapo` plus that plug-in); set its options with
`--learner.plugins.NAME.KEY=VALUE`. Values marked "guess" in a config are not published.

| plug-in      | paper                               | hooks                                              | needs π_θ ≠ π_old |
|--------------|-------------------------------------|----------------------------------------------------|-------------------|
| `hrr`        | ZipRL HRR, 2605.28069 [R]           | prepare_batch: one advantage per turn from Q_com   | no                |
| `care`       | CARE / RLAVR, 2605.25864            | rewards: labels; advantages: per-prompt scale      | no                |
| `amr_sd`     | AMR-SD, 2605.18529 [R]              | prepare_batch: teacher pass; token_advantages      | no                |
| `divergence` | Sparse but Critical, 2603.22446 [S] | token_advantages: weight from KL(π_old‖π_θ)        | yes               |
| `direction`  | RLVR directions, 2603.22117         | token_advantages: weight from π_old                | no                |
| `fipo`       | FIPO, 2603.19835                    | token_advantages: weight from the future KL        | yes               |
| `owpo`       | OWPO, 2605.22156 [R]                | before_update: ratchet; token_advantages vs π_ref  | no (vs π_ref)     |
| `nsr`        | NSR, 2605.22703 [R]                 | start_epoch: draws; token_loss: rescued tokens     | yes               |
| `ih_grpo`    | IH-GRPO, 2605.18500                 | setup: token id; forward: control logit; c-loss    | no                |
| `occ`        | OCC, 2605.28184                     | setup: MTP head; forward; token_loss: MTP loss     | yes               |

Each paper's baselines are presets of the same plug-in (`Plugin.presets`): `care_pseudo_label`, `care_random`;
`occ_fixed`, `occ_ce`, `occ_detach`; `nsr_decay`; `owpo_kl`. A plug-in's `env_options` are merged into the run's
env (`ih_grpo`: delayed execution, python session semantics); `sft_loss` trains what it adds in the warm start
(`occ`: the MTP head).

[R] marks a reconstruction from the abstract or a third-party port, and [S] a rule from third-party notes.
Re-check these against the PDFs before claiming a reproduction. The plug-ins that need π_θ ≠ π_old are
no-ops on a fully on-policy update (one epoch, one mini-batch); their presets use 4 mini-batches.

`BUILTIN` is the registration list, in pipeline order (docs/anchors-learner.md Part 3): a new plug-in is a new
module here plus one line in it.
"""

from agentenv.learn.plugin import register
from agentenv.learn.plugins.amr_sd import AmrSd
from agentenv.learn.plugins.care import Care
from agentenv.learn.plugins.direction import Direction
from agentenv.learn.plugins.divergence import Divergence
from agentenv.learn.plugins.fipo import Fipo
from agentenv.learn.plugins.hrr import Hrr
from agentenv.learn.plugins.ih_grpo import IhGrpo
from agentenv.learn.plugins.nsr import Nsr
from agentenv.learn.plugins.occ import Occ
from agentenv.learn.plugins.owpo import Owpo

from agentenv.learn.plugins.amr_sd import amr_sd_advantages, annealed_lambda, cig_gate, insert_hint
from agentenv.learn.plugins.care import (
    CareProbe,
    ProbeFeatures,
    ProbeTargets,
    SetScorer,
    answer_ids,
    cag_from_counts,
    care_labels,
    care_select,
    corrective_advantage_gap,
    count_costs,
    heuristic_scores,
    majority_vote,
    probe_features,
    probe_targets,
)
from agentenv.learn.plugins.direction import direction_weights, extrapolation_logits, extrapolation_trigger
from agentenv.learn.plugins.divergence import divergence_weights
from agentenv.learn.plugins.fipo import discounted_future_sum, fipo_weights
from agentenv.learn.plugins.ih_grpo import control_token_outputs, ih_grpo_c_loss
from agentenv.learn.plugins.nsr import nsr_rescue, nsr_uniforms
from agentenv.learn.plugins.occ import MTPHead, attach_mtp_head, mtp_logprobs, occ_coefficient
from agentenv.learn.plugins.owpo import owpo_weights, ratchet

BUILTIN = [
    Hrr,
    Care,
    AmrSd,
    Divergence,
    Direction,
    Fipo,
    Owpo,
    Nsr,
    IhGrpo,
    Occ,
]
for _plugin in BUILTIN:
    register(_plugin)

PLUGINS = tuple(plugin.name for plugin in BUILTIN)

__all__ = [
    "BUILTIN",
    "PLUGINS",
    "CareProbe",
    "MTPHead",
    "ProbeFeatures",
    "ProbeTargets",
    "SetScorer",
    "amr_sd_advantages",
    "annealed_lambda",
    "answer_ids",
    "attach_mtp_head",
    "cag_from_counts",
    "care_labels",
    "care_select",
    "cig_gate",
    "control_token_outputs",
    "corrective_advantage_gap",
    "count_costs",
    "direction_weights",
    "discounted_future_sum",
    "divergence_weights",
    "extrapolation_logits",
    "extrapolation_trigger",
    "fipo_weights",
    "heuristic_scores",
    "ih_grpo_c_loss",
    "insert_hint",
    "majority_vote",
    "mtp_logprobs",
    "nsr_rescue",
    "nsr_uniforms",
    "occ_coefficient",
    "owpo_weights",
    "probe_features",
    "probe_targets",
    "ratchet",
]
