"""FIPO — Future-KL Influenced Policy Optimization (arXiv 2603.19835): a dense advantage from the
discounted future KL. The rule follows two ports, ms-swift `_compute_fipo_influence` and a verl port of
FIPO's `compute_policy_loss_future_kl` (docs/anchors-learner.md §2.6, [V] via the ports). The official repo was
not available.

    d_t = (log π_θ − log π_old)_t · m_t · 1[r_t ≤ δ]               δ: swift's `delta`, None for no filter
    F_t = Σ_{k≥t} γ^{k−t} d_k,   γ = 2^(−1/decay_rate)
    f_t = sg(clip(exp F_t, lo, 1+ε_f)),   lo = 1 if clip_high_only else 1−ε_f
    f_t = clip(f_t, 0.8, 1.0)   if A_t < 0 and r_t > safety          (the safety cap)
    Ã_t = A_t · f_t,  used in the dual-clip PPO loss

A token whose future the policy has already moved toward gets more credit. On a fully on-policy update
d ≡ 0 and f ≡ 1, so FIPO acts only from the second mini-batch or epoch on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from agentenv.learn.plugin import Plugin, StepContext

__all__ = ["Fipo", "discounted_future_sum", "fipo_weights"]


def discounted_future_sum(x: Tensor, gamma: float, chunk: int = 128) -> Tensor:
    """F_t = Σ_{k≥t} γ^{k−t} x_k along the last dim. x: [B, T] -> [B, T].

    One [chunk, chunk] matmul per block of `chunk` tokens, plus a carry from the next block, so T can be
    long without a [T, T] matrix and without the γ^−t overflow of a single cumsum.
    """
    batch, length = x.shape
    blocks = -(-length // chunk)
    padded = torch.nn.functional.pad(x, (0, blocks * chunk - length)).view(batch, blocks, chunk)
    step = torch.arange(chunk, device=x.device)
    power = (step[None, :] - step[:, None]).to(x.dtype)  # [t, k] = k − t
    kernel = torch.where(power >= 0, gamma**power, torch.zeros_like(power))
    local = padded @ kernel.T
    carry_decay = gamma ** (chunk - step).to(x.dtype)  # γ^(distance to the next block's first token)
    out = torch.empty_like(local)
    carry = x.new_zeros(batch, 1)
    for block in reversed(range(blocks)):
        out[:, block] = local[:, block] + carry_decay * carry
        carry = out[:, block, :1]
    return out.reshape(batch, blocks * chunk)[:, :length]


@torch.no_grad()
def fipo_weights(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    decay_rate: float = 32.0,
    eps: float = 0.2,
    clip_high_only: bool = False,
    safety: float = 4.0,
    max_ratio: float | None = 10.0,
    chunk: int = 128,
) -> Tensor:
    """f_t (see the module docstring); multiply the advantage by it. [B, T] (adv broadcastable) -> [B, T].

    Defaults: ms-swift's (decay_rate 32, ε_f 0.2, safety 4.0, δ = 10 "to match the official 32B
    script"). clip_high_only=False follows the ms-swift example script and the verl port.
    """
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    kept = mask.to(log_ratio.dtype) if max_ratio is None else mask.to(log_ratio.dtype) * (ratio <= max_ratio)
    future = discounted_future_sum(log_ratio * kept, 2.0 ** (-1.0 / decay_rate), chunk)
    f = torch.exp(future).clamp(1.0 if clip_high_only else 1.0 - eps, 1.0 + eps)
    return torch.where((adv < 0) & (ratio > safety), f.clamp(0.8, 1.0), f)

@dataclass
class FipoConfig:
    decay_rate: float = 32.0
    eps: float = 0.2
    clip_high_only: bool = False
    safety: float = 4.0
    max_ratio: float | None = 10.0


class Fipo(Plugin):
    """FIPO: weight each token by the discounted KL of the tokens after it."""

    name = "fipo"
    Config = FipoConfig
    off_policy = True

    def token_advantages(self, adv: Tensor, logp: Tensor, micro, ctx: StepContext) -> Tensor:
        c = self.config
        return adv * fipo_weights(logp, micro.old_logp, adv, micro.loss_mask, c.decay_rate, c.eps, c.clip_high_only,
                                  c.safety, c.max_ratio)
