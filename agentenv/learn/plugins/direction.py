"""The direction of RLVR updates (arXiv 2603.22117, ICLR'26 "Beyond Magnitude…"): Δlog p reweighting in
training and Δlog p extrapolation at test time. From the paper's code, Hesse73/RLVR-Directions @af8f20a
(docs/anchors-learner.md §2.7, [V]).

Training (`reshape_reversed`, the variant used, on top of DAPO): the advantage of a token the old policy
found unlikely gets more weight, since RLVR's useful updates concentrate on low-probability tokens:

    w_t = 1 + c − c·π_old(y_t)        c = 0.2 (Qwen2.5-Math-7B) or 0.1 (Qwen3-8B-Base);   Ã_t = A_t·w_t

`adv_mask` limits the reweighting to positive or negative advantages (the paper's default is "none").
w does not depend on π_θ, so the plug-in also acts on a fully on-policy update.

Test time (extrapolate/extrapolate.py): decode with the base model as the sampler. At each step, if the
RL model finds the sampled token much less likely, i.e. log p_RL(y) − log p_base(y) ≤ τ (criterion
"neg_logp"), resample from

    logits = w_base·log p_base + w_rl·log p_RL   over the base model's top-k (k = 50)

with (w_base, w_rl) = (−α, 1+α), i.e. log p_RL + α·Δlog p. The paper's settings are τ ∈ [−0.4, −0.3] and
α ∈ {0.05, 0.1}, with temperature 1 and top-p 0.7.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from agentenv.learn.plugin import Plugin, StepContext

__all__ = ["Direction", "ADV_MASKS", "direction_weights", "extrapolation_trigger", "extrapolation_logits"]

ADV_MASKS = ("none", "positive", "negative")


def direction_weights(old_logp: Tensor, adv: Tensor, c: float, adv_mask: str = "none") -> Tensor:
    """w_t = 1 + c − c·π_old(y_t), 1 on tokens excluded by `adv_mask`. [B, T] (adv broadcastable) -> [B, T]."""
    weight = 1 + c - c * old_logp.detach().exp()
    if adv_mask == "none":
        return weight
    if adv_mask not in ADV_MASKS:
        raise ValueError(f"adv_mask must be one of {ADV_MASKS}, got {adv_mask!r}")
    keep = adv > 0 if adv_mask == "positive" else adv < 0
    return torch.where(keep, weight, torch.ones_like(weight))


def extrapolation_trigger(base_logits: Tensor, rl_logits: Tensor, tokens: Tensor, tau: float) -> Tensor:
    """Rows whose sampled token the RL model finds ≥ |τ| nats less likely: log p_RL(y) − log p_base(y) ≤ τ.

    base_logits, rl_logits: [B, V] next-token logits; tokens: [B] sampled from the base model -> [B] bool.
    """
    index = tokens[:, None]
    base = base_logits.float().log_softmax(-1).gather(-1, index)
    rl = rl_logits.float().log_softmax(-1).gather(-1, index)
    return (rl - base).squeeze(-1) <= tau


def extrapolation_logits(base_logits: Tensor, rl_logits: Tensor, alpha: float, top_k: int = 50) -> Tensor:
    """Logits to resample from: log p_RL + α·(log p_RL − log p_base) on the base's top-k, −inf elsewhere.

    base_logits, rl_logits: [B, V] -> [B, V] (float32). α = 0 is pure replacement by the RL model.
    Divide by the temperature and apply top-p afterwards, as the paper does (`hf.sample_tokens`).
    """
    base = base_logits.float().log_softmax(-1)
    rl = rl_logits.float().log_softmax(-1)
    mixed = -alpha * base + (1 + alpha) * rl
    top = base.topk(min(top_k, base.shape[-1]), -1).indices
    keep = torch.zeros_like(mixed, dtype=torch.bool).scatter_(-1, top, True)
    return mixed.masked_fill(~keep, float("-inf"))

@dataclass
class DirectionConfig:
    c: float = 0.2  # Qwen2.5-Math-7B; 0.1 for Qwen3-8B-Base
    adv_mask: Literal["none", "positive", "negative"] = "none"  # none | positive | negative


class Direction(Plugin):
    """Δlog p: more weight where π_old was unlikely."""

    name = "direction"
    Config = DirectionConfig

    def token_advantages(self, adv: Tensor, logp: Tensor, micro, ctx: StepContext) -> Tensor:
        return adv * direction_weights(micro.old_logp, adv, self.config.c, self.config.adv_mask)
