"""IH-GRPO — Implicit Hierarchical GRPO (arXiv 2605.18500): the hierarchical surrogate ("c-loss").

From the paper's code (Lumina04/IH-GRPO-01 @a570f21, verl/trainer/ppo/core_algos.py
`compute_hierarchy_policy_loss`; docs/anchors-learner.md §2.1, [V]). Let v be the control token, the one that
commits to running tools. That is `<execute/>` under this repo's delayed execution, and `<tool_call>` in
the paper's Qwen setup. Let z_t be the logits divided by the temperature and p_v = softmax(z_t)_v:

    logp_v   = min(log p_v, −1e−7);   p̃_v = clamp(exp(logp_v), 1e−7, 1 − 1e−7)
    logZ¬v_t = z_v − logp_v + log(1 − p̃_v)                       = log Σ_{j≠v} exp(z_j)
    c_t      = (sg(1 − p̃_v) − 1[y_t ≠ v]) · logZ¬v_t · sg(ℓ_t)    ℓ_t: the token's policy-gradient loss
    L        = L_pg + λ·agg(c),   λ = 0.001 (hard-coded in the paper's dp_actor.py)

∂logZ¬v/∂z_v = 0 and ∂logZ¬v/∂z_j = p_j/(1 − p_v) for j ≠ v. So the c-term moves only the non-control
logits, all in the softmax-weighted direction, with the per-token weight λ·(γ − 1[y ≠ v])·ℓ.

The method needs an environment where committing to run tools is a decision of its own: the plug-in asks
for delayed execution (`env_options`: calls are queued until `<execute/>`, so the control token appears in
rollouts and in the scripted demonstrations) and, by default, the paper's turn semantics for python
(`python_semantics="session"`, `agentenv/core.py`: the queued code blocks run as one program in a
namespace that lives for the episode). Under immediate execution v never appears and p_v ≈ 0 everywhere,
so c ≈ 0 and the preset would be DAPO to within 1e−5.

Even so the effect is small at the paper's λ: the c-term's gradient is large only where the policy hesitates
over v (p_v·(1 − p_v) large). On a warm-started tiny policy with `<execute/>` in the batch, the preset moves
the update by 0.7e-5–2.6e-5 of its size against DAPO's, linearly in λ (tests/test_method_presets.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from agentenv.errors import UserError
from agentenv.learn.plugin import LossTerms, Plugin, StepContext

__all__ = ["IhGrpo", "control_token_outputs", "ih_grpo_c_loss"]


def control_token_outputs(
    hidden: Tensor, weight: Tensor, targets: Tensor, logp: Tensor, token_id: int, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """(log p_v, z_v) of the control token v at every position, from the same logits as `logp`.

    hidden: [..., H]; weight: the output layer [V, H]; targets: [...] (long); logp: [...] log p(target)
    of the same logits, with its gradient (`objectives.selective_log_probs`) -> two [...] tensors in
    logp's dtype, both differentiable.

    logsumexp(z) = z_y − log p_y, so log p_v = z_v − z_y + log p_y needs only two columns of the
    logits, never [N, V]. Multiply-and-sum rather than matmul keeps autocast from rounding z to bf16.
    """
    hidden = hidden.to(logp.dtype)
    z_v = (hidden * weight[token_id].to(logp.dtype)).sum(-1) / temperature
    z_y = (hidden * weight[targets].to(logp.dtype)).sum(-1) / temperature
    return z_v - z_y + logp, z_v


def ih_grpo_c_loss(logp_v: Tensor, z_v: Tensor, is_control: Tensor, per_token_loss: Tensor) -> Tensor:
    """Per-token c_t of the hierarchical surrogate (see the module docstring). Add λ·c to the loss.

    logp_v, z_v: [B, T] (from `control_token_outputs`); is_control: [B, T] bool, y_t = v;
    per_token_loss: [B, T] ℓ_t, stop-gradded here -> [B, T]. c = 0 wherever ℓ = 0 (zero advantage).
    """
    logp_v = logp_v.clamp(max=-1e-7)
    p_v = logp_v.exp().clamp(1e-7, 1 - 1e-7)
    log_z_not_v = z_v - logp_v + torch.log1p(-p_v)
    gamma = (1 - p_v).detach()
    return (gamma - (~is_control).to(gamma.dtype)) * log_z_not_v * per_token_loss.detach()


@dataclass
class IhGrpoConfig:
    lam: float = 0.001  # λ of the c-loss
    token_id: int | None = None  # the control token v; filled from the tokenizer's `control_token` at setup
    control_token: str = "<execute/>"
    mask: Literal["response", "control"] = "response"  # response (the paper's code) | control (control spans only)
    # the env's python turn semantics: session (the paper's: a turn's blocks as one program, a namespace per
    # episode) | fresh (each call in fresh globals)
    python_semantics: Literal["session", "fresh"] = "session"


class IhGrpo(Plugin):
    """IH-GRPO: the c-loss moves the non-control logits, scaled by each token's loss."""

    name = "ih_grpo"
    Config = IhGrpoConfig

    def env_options(self) -> dict[str, Any]:
        return {"execution": "delayed", "python_semantics": self.config.python_semantics}

    def setup(self, model: torch.nn.Module, tokenizer: Any, *, group_size: int, seed: int) -> None:
        if self.config.token_id is None:
            ids = tokenizer.encode(self.config.control_token, add_special_tokens=False)
            if len(ids) != 1:
                raise UserError(f"ih_grpo needs {self.config.control_token!r} to be one token of the tokenizer "
                                f"(got {ids}); set learner.plugins.ih_grpo.token_id")
            self.config.token_id = ids[0]

    def forward(self, model: torch.nn.Module, hidden: Tensor, logp: Tensor, micro, ctx: StepContext) -> None:
        if self.config.token_id is None:
            raise ValueError("ih_grpo needs learner.plugins.ih_grpo.token_id, the id of the control token")
        micro.extras["control_logp"], micro.extras["control_logit"] = control_token_outputs(
            hidden, model.get_output_embeddings().weight, micro.targets, logp, self.config.token_id, ctx.cfg.temperature)

    def token_loss(self, terms: LossTerms, micro, ctx: StepContext) -> None:
        c = ih_grpo_c_loss(micro.extras["control_logp"], micro.extras["control_logit"],
                           micro.targets == self.config.token_id, terms.per_token)
        if self.config.mask == "control":
            c = c * micro.extras["control_mask"]
        terms.per_token = terms.per_token + self.config.lam * c
        # the c-term's token mean (summed over micro-batches), as the paper's actor logs its c-loss
        terms.metrics["ih_c_loss"] = float((c.detach() * micro.loss_mask).sum()) / terms.num_tokens
