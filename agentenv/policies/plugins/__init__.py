"""Seed-paper plug-ins of the one learner, as pure functions on tensors (docs/anchors-learner.md Part 2).

One module per paper. Each is switched on by naming it in `LearnerConfig.plugins` (e.g.
`--learner.plugins=owpo`, or a preset: `--learner.preset=owpo`; see `presets.py`) and hooks into
`learner.py` at one place, in the order of the pipeline in Part 3 of the note:

| plug-in      | paper                          | hook in learner.py                                   | needs π_θ ≠ π_old |
|--------------|--------------------------------|------------------------------------------------------|-------------------|
| `care`       | CARE / RLAVR, 2605.25864       | episode_advantages: labels and per-prompt scale      | no                |
| `amr_sd`     | AMR-SD, 2605.18529 [R]         | policy_loss: token advantage (teacher vs π_θ)        | no                |
| `divergence` | Sparse but Critical, 2603.22446 [S] | policy_loss: token weight from KL(π_old‖π_θ)    | yes               |
| `direction`  | RLVR directions, 2603.22117    | policy_loss: token weight from π_old                 | no                |
| `fipo`       | FIPO, 2603.19835               | policy_loss: token weight from the future KL         | yes               |
| `owpo`       | OWPO, 2605.22156 [R]           | policy_loss: token weight vs π_ref; update: ratchet  | no (vs π_ref)     |
| `nsr`        | NSR, 2605.22703 [R]            | policy_loss: loss form (rescued clipped tokens)      | yes               |
| `ih_grpo`    | IH-GRPO, 2605.18500            | forward: control-token logit; policy_loss: c-loss    | no                |
| `occ`        | OCC, 2605.28184                | forward: MTP head; policy_loss: calibrated MTP loss  | yes               |

[R] marks a reconstruction from the abstract or a third-party port, and [S] a rule from third-party notes.
Re-check these against the PDFs before claiming a reproduction. The plug-ins that need π_θ ≠ π_old are
no-ops on a fully on-policy update (one epoch, one mini-batch); their presets use 4 mini-batches.
"""

from agentenv.policies.plugins.amr_sd import amr_sd_advantages, annealed_lambda, cig_gate, insert_hint
from agentenv.policies.plugins.care import (
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
    final_answer,
    heuristic_scores,
    majority_vote,
    probe_features,
    probe_targets,
)
from agentenv.policies.plugins.direction import direction_weights, extrapolation_logits, extrapolation_trigger
from agentenv.policies.plugins.divergence import divergence_weights
from agentenv.policies.plugins.fipo import discounted_future_sum, fipo_weights
from agentenv.policies.plugins.ih_grpo import control_token_outputs, ih_grpo_c_loss
from agentenv.policies.plugins.nsr import nsr_rescue, nsr_uniforms
from agentenv.policies.plugins.occ import MTPHead, attach_mtp_head, mtp_logprobs, occ_coefficient
from agentenv.policies.plugins.owpo import owpo_weights, ratchet

PLUGINS = ("care", "amr_sd", "divergence", "direction", "fipo", "owpo", "nsr", "ih_grpo", "occ")

__all__ = [
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
    "final_answer",
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
