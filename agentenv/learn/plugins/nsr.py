"""NSR — Near-boundary Stochastic Rescue (arXiv 2605.22703) of clipped tokens. [R] The rule comes from a
third-party port (`near_boundary_stochastic_rescue`, docs/anchors-learner.md §2.5), not from the paper's code.

Hard clipping throws away the gradient of tokens that are only just outside the trust region. NSR keeps
each such token with probability p. In expectation this is a gradient decay on a thin band, p·(−A∇r)
instead of 0:

    clip_active = ℓ_clipped > ℓ_unclipped                       (the pessimistic max took the clipped branch)
    near        = (1+ε_h < r ≤ (1+ε_h)(1+m))  or  ((1−ε_l)(1−m) ≤ r < 1−ε_l)
    rescue      = clip_active & near & (U(0,1) < p)
    ℓ_t         = −A·r  where rescued,  the PPO-clip loss elsewhere

m (the relative band width) and p (the rescue probability) are unknown; the paper's values need the PDF.
p = 0 is DAPO. The draws are keyed by (seed, step, epoch), so a run is reproducible and does not depend on
how the batch is cut into micro-batches.

The paper's baseline, deterministic gradient decay (`mode="decay"`, preset `nsr_decay`), is NSR in
expectation: every eligible token (clip_active & near) keeps a fraction p of the unclipped gradient, with
no draw. Its loss there is p·(−A·r) + (1 − p)·ℓ_clip, the mean of NSR's over U, so the two have the same
expected value and gradient on every token and differ only in NSR's randomness, which is the paper's claim
("its stochastic, boundary-local rescue … is consistently more effective than deterministic gradient decay").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from agentenv.learn.plugin import LossTerms, Plugin, StepContext

__all__ = ["Nsr", "nsr_uniforms", "nsr_rescue", "nsr_decay"]


def nsr_uniforms(shape: torch.Size | tuple[int, ...], seed: int, epoch: int) -> Tensor:
    """U(0,1) [shape] (float64, CPU) for one epoch over the whole batch, from a generator keyed by (seed, epoch).

    `seed` should already depend on the training step (the learner passes its per-step generator's seed).
    """
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
    return torch.rand(shape, generator=generator, dtype=torch.float64)


def _eligible(log_ratio: Tensor, adv: Tensor, eps_low: float, eps_high: float, band: float) -> tuple[Tensor, Tensor]:
    """(−A·r, clip_active & near): the tokens NSR may rescue, and their unclipped loss."""
    ratio = torch.exp(log_ratio)
    high, low = 1 + eps_high, 1 - eps_low
    unclipped = -adv * ratio
    clip_active = -adv * ratio.clamp(low, high) > unclipped
    near = ((ratio > high) & (ratio <= high * (1 + band))) | ((ratio < low) & (ratio >= low * (1 - band)))
    return unclipped, clip_active & near


def nsr_rescue(
    loss: Tensor,
    log_ratio: Tensor,
    adv: Tensor,
    eps_low: float,
    eps_high: float,
    band: float,
    prob: float,
    uniform: Tensor,
) -> tuple[Tensor, Tensor]:
    """Replace the loss of rescued tokens by the unclipped −A·r. Returns (loss, rescued), both [B, T].

    loss: [B, T], the PPO-clip loss of `objectives.ppo_clip_loss`; log_ratio: [B, T]; adv: broadcastable;
    uniform: [B, T] in [0, 1) (`nsr_uniforms`). Tokens outside the band are never rescued.
    """
    unclipped, eligible = _eligible(log_ratio, adv, eps_low, eps_high, band)
    rescued = eligible & (uniform < prob)
    return torch.where(rescued, unclipped, loss), rescued


def nsr_decay(loss: Tensor, log_ratio: Tensor, adv: Tensor, eps_low: float, eps_high: float, band: float,
              prob: float) -> tuple[Tensor, Tensor]:
    """Deterministic gradient decay, NSR's expectation: (loss [B, T], eligible [B, T]) with
    loss = p·(−A·r) + (1 − p)·ℓ_clip on the eligible tokens (same band as `nsr_rescue`), ℓ_clip elsewhere."""
    unclipped, eligible = _eligible(log_ratio, adv, eps_low, eps_high, band)
    return torch.where(eligible, prob * unclipped + (1 - prob) * loss, loss), eligible


@dataclass
class NsrConfig:
    band: float = 0.1  # guess
    prob: float = 0.5  # guess
    mode: Literal["stochastic", "decay"] = "stochastic"  # stochastic (NSR) | decay (its deterministic expectation)


class Nsr(Plugin):
    """NSR: a clipped token just outside the trust region keeps its gradient with probability p."""

    name = "nsr"
    Config = NsrConfig
    off_policy = True
    presets = {"nsr_decay": {"plugins": {"nsr": {"mode": "decay"}}}}  # the paper's deterministic baseline

    def start_epoch(self, batch, epoch: int, ctx: StepContext) -> None:
        if self.config.mode == "decay":
            return
        # one draw per token and epoch, independent of the micro-batch split
        seed = ctx.generator.initial_seed() if ctx.generator is not None else ctx.step
        batch.extras["nsr_uniform"] = nsr_uniforms(batch.loss_mask.shape, seed, epoch).to(batch.loss_mask.device)

    def token_loss(self, terms: LossTerms, micro, ctx: StepContext) -> None:
        cfg = ctx.cfg
        if cfg.loss != "ppo_clip":
            raise ValueError("nsr rescues tokens of the clipped PPO loss: it needs loss=ppo_clip")
        c = self.config
        if c.mode == "decay":  # every eligible token keeps a fraction p of its gradient: still partly clipped
            terms.per_token, _ = nsr_decay(terms.per_token, terms.log_ratio, terms.adv, cfg.eps_low, cfg.eps_high,
                                           c.band, c.prob)
            return
        terms.per_token, rescued = nsr_rescue(terms.per_token, terms.log_ratio, terms.adv, cfg.eps_low, cfg.eps_high,
                                              c.band, c.prob, micro.extras["nsr_uniform"])
        terms.clipped = terms.clipped & ~rescued
