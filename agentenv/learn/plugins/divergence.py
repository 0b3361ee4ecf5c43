"""Divergence-weighted advantage, from "Sparse but Critical" (arXiv 2603.22446, ICLR'26 poster). [S] The rule
comes from third-party paper notes (docs/anchors-learner.md §2.8), not from the paper's code.

RLVR changes only a few tokens' distributions much, and those tokens carry the gain. The advantage is
reweighted by each token's own distributional shift:

    KL_t = k3 estimate of D_KL(π_old ‖ π_θ) at y_t = r − 1 − log r,  r = π_θ/π_old      (detached)
    w_t  = 1 + s·(σ(α·KL_t) − ½)          α > 0 boosts high-KL tokens, α < 0 boosts low-KL tokens
    Ã_t  = w_t·A_t  inside the DAPO objective

s and α were not recovered; s = 0.5, α = ±10 is the worked example of the notes. KL ≡ 0 on a fully
on-policy update, so then w ≡ 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from agentenv.learn.objectives import kl_penalty
from agentenv.learn.plugin import Plugin, StepContext

__all__ = ["Divergence", "divergence_weights"]


@torch.no_grad()
def divergence_weights(logp: Tensor, old_logp: Tensor, scale: float = 0.5, alpha: float = 10.0) -> Tensor:
    """w_t = 1 + s·(σ(α·KL_t) − ½), in (1 − s/2, 1 + s/2). logp, old_logp: [B, T] -> [B, T]."""
    kl = kl_penalty(old_logp, logp, "k3")  # samples from π_old: exp(Δ) − 1 − Δ, Δ = log π_θ − log π_old
    return 1 + scale * (torch.sigmoid(alpha * kl) - 0.5)

@dataclass
class DivergenceConfig:
    scale: float = 0.5  # guess (the notes' worked example)
    alpha: float = 10.0  # > 0 boosts high-KL tokens, < 0 low-KL tokens


class Divergence(Plugin):
    """Weight each token's advantage by its own shift KL(π_old‖π_θ)."""

    name = "divergence"
    Config = DivergenceConfig
    off_policy = True

    def token_advantages(self, adv: Tensor, logp: Tensor, micro, ctx: StepContext) -> Tensor:
        return adv * divergence_weights(logp, micro.old_logp, self.config.scale, self.config.alpha)
