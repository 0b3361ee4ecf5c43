"""OWPO — One-Way Policy Optimization (arXiv 2605.22156, ICML 2026): one-way reweighting and a ratchet
reference. [R] This is the reconstruction in docs/anchors-learner.md §2.4. No code or formula was public, and
it has to be checked against the PDF.

The paper's stated properties:
- the verifier (sign A) sets the direction and π_ref only the magnitude;
- Accelerated Alignment for inferior deviations, Gain Locking for superior ones;
- iterative reference updates (a "Ratchet Effect").

The reconstruction that satisfies all three:

    δ_t = sign(A_t) · sg(log π_θ(y_t) − log π_ref(y_t))
    w_t = 1 + κ·min(−δ_t, δ_max)   if δ_t < 0   (inferior: behind π_ref on a good token / ahead on a bad one)
    w_t = 1                         if δ_t ≥ 0   (superior: gains are kept, with no pull back to π_ref)
    ℓ_t = ℓ^{DAPO}(A_t · w_t)        with no KL term;   every K steps: π_ref ← π_θ (the ratchet)

κ, δ_max and K are unknown hyperparameters. w ≥ 1 never flips a gradient's sign; κ = 0 (or π_ref = π_θ)
is DAPO.

The paper's baseline is the token-level reference constraint it argues against (preset `owpo_kl`): DAPO
plus β·KL(π_θ‖π_ref) in the loss (k3, the GRPO/verl `low_var_kl` estimator; β = 0.04, DeepSeekMath's GRPO
value, a guess: the paper's β is not public), against the same reference, ratcheted on the same schedule
(this plug-in with κ = 0). So the two arms differ only in how π_ref enters: one-way reweighting, or a
two-way pull that can flip the verifier's direction on a token where the policy is ahead of π_ref.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from agentenv.learn.plugin import Plugin, StepContext

__all__ = ["Owpo", "owpo_weights", "ratchet"]


def owpo_weights(logp: Tensor, ref_logp: Tensor, adv: Tensor, kappa: float, delta_max: float) -> Tensor:
    """w_t ≥ 1 (see the module docstring); multiply the advantage by it. [B, T] (adv broadcastable) -> [B, T]."""
    delta = torch.sign(adv) * (logp - ref_logp).detach()
    return 1 + kappa * (-delta).clamp(min=0, max=delta_max)


@torch.no_grad()
def ratchet(reference: torch.nn.Module, policy: torch.nn.Module) -> None:
    """π_ref ← π_θ: copy every parameter and buffer of `policy` into `reference` (same architecture)."""
    reference.load_state_dict(policy.state_dict())


@dataclass
class OwpoConfig:
    kappa: float = 1.0  # guess
    delta_max: float = 1.0  # guess
    ratchet_every: int = 10  # guess; π_ref ← π_θ every this many steps


class Owpo(Plugin):
    """OWPO: accelerate only where the policy is behind π_ref in the verifier's direction; ratchet π_ref."""

    name = "owpo"
    Config = OwpoConfig
    needs_ref_model = True
    presets = {"owpo_kl": {"plugins": {"owpo": {"kappa": 0.0}}, "kl_coef": 0.04, "kl_estimator": "k3", "kl_in_reward": False}}

    def before_update(self, batch, ctx: StepContext) -> None:
        if ctx.step % self.config.ratchet_every == 0:
            ratchet(ctx.ref_model, ctx.model)

    def token_advantages(self, adv: Tensor, logp: Tensor, micro, ctx: StepContext) -> Tensor:
        return adv * owpo_weights(logp, micro.extras["ref_logp"], adv, self.config.kappa, self.config.delta_max)
