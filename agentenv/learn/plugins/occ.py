"""OCC — Optimal Coefficient Calibration for joint multi-token prediction + RL (arXiv 2605.28184). The rule
is from the paper's code, MarkXCloud/RL-MTP @a63fdc2, `megatron_actor.py` loss_func (docs/anchors-learner.md
§2.9, [V]).

An MTP head q_k, which predicts k tokens further ahead, is trained with the same PPO loss as the main
head. Its coefficient is calibrated online from how far each head has moved from π_old, a log-prob proxy
for the correlation between the two updates:

    a_t = sg(log q_k(y_t) − log π_old(y_t)),   b_t = sg(log π_θ(y_t) − log π_old(y_t))
    c_k = (s/K) · mean_t[a_t·b_t / (a_t² + 1e−8)]          s = 0.1 (`mtp_loss_scaling_factor`)
    L   = L_PPO(π_θ; A) + Σ_k L_PPO(ratio = q_k/π_old; A·c_k)

Choices here:
- The mean is over the response tokens. The paper's code averages over the whole padded window, which
  gives the same sum but a smaller denominator.
- The MTP ratio uses the main head's π_old, as the paper's code does.
- One head (K = 1): `MTPHead` reads h_t and the embedding of y_{t+1} and predicts y_{t+2} through the
  policy's own output layer. This is MiMo's layout, with an MLP in place of its transformer layer.

On the first on-policy mini-batch b ≡ 0, so c = 0 and the head gets no gradient. OCC needs several
mini-batches or epochs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from agentenv.learn.objectives import ppo_clip_loss, selective_log_probs, token_log_ratio
from agentenv.learn.plugin import LossTerms, Plugin, StepContext

__all__ = ["Occ", "MTPHead", "attach_mtp_head", "mtp_logprobs", "occ_coefficient"]


class MTPHead(nn.Module):
    """One multi-token-prediction module: (h_t, embedding of y_{t+1}) -> a hidden state that predicts y_{t+2}."""

    def __init__(self, hidden_size: int, expansion: int = 4):
        super().__init__()
        self.norm_hidden = nn.RMSNorm(hidden_size)
        self.norm_embed = nn.RMSNorm(hidden_size)
        self.proj = nn.Linear(2 * hidden_size, hidden_size, bias=False)
        self.mlp = nn.Sequential(
            nn.RMSNorm(hidden_size),
            nn.Linear(hidden_size, expansion * hidden_size, bias=False),
            nn.SiLU(),
            nn.Linear(expansion * hidden_size, hidden_size, bias=False),
        )
        self.norm_out = nn.RMSNorm(hidden_size)

    def forward(self, hidden: Tensor, next_embeds: Tensor) -> Tensor:
        x = self.proj(torch.cat([self.norm_hidden(hidden), self.norm_embed(next_embeds)], -1))
        return self.norm_out(x + self.mlp(x))


def attach_mtp_head(model: nn.Module) -> MTPHead:
    """Add an `MTPHead` to a Hugging Face causal LM as `model.mtp_head`, on its device and dtype.

    Do it before building the optimizer: the head is then trained, and saved in `state_dict`, with the model.
    """
    embed = model.get_input_embeddings().weight
    model.add_module("mtp_head", MTPHead(embed.shape[1]).to(device=embed.device, dtype=embed.dtype))
    return model.mtp_head


def mtp_logprobs(
    head: MTPHead,
    hidden: Tensor,
    embed: nn.Module,
    lm_head_weight: Tensor,
    targets: Tensor,
    temperature: float = 1.0,
    chunk: int = 1024,
) -> Tensor:
    """log q(y) aligned with the main head's columns: column s holds log q(targets[s] | h_{s−1}, e(targets[s−1])).

    hidden: [B, T, H], the main head's inputs (column t predicts targets[t]); embed: the policy's input
    embedding; targets: [B, T] -> [B, T]. Column 0 has no MTP prediction and holds 0; mask it out.
    """
    out = head(hidden[:, :-1], embed(targets[:, :-1]).to(hidden.dtype))
    logq = selective_log_probs(out, lm_head_weight, targets[:, 1:], temperature=temperature, chunk=chunk)
    return torch.nn.functional.pad(logq, (1, 0))


@torch.no_grad()
def occ_coefficient(
    mtp_logp: Tensor, logp: Tensor, old_logp: Tensor, mask: Tensor, scale: float = 0.1, num_heads: int = 1
) -> Tensor:
    """c_k = (s/K)·mean over the mask of a·b/(a² + 1e−8) (see the module docstring). [B, T] -> [] scalar."""
    a = mtp_logp - old_logp
    b = logp - old_logp
    mask = mask.to(a.dtype)
    return scale / num_heads * (a * b / (a**2 + 1e-8) * mask).sum() / mask.sum().clamp(min=1)

@dataclass
class OccConfig:
    scale: float = 0.1


class Occ(Plugin):
    """OCC: the MTP head's PPO loss, its coefficient calibrated from the log-prob proxy."""

    name = "occ"
    Config = OccConfig
    off_policy = True

    def setup(self, model: nn.Module, tokenizer: Any, *, group_size: int, seed: int) -> None:
        if not hasattr(model, "mtp_head"):  # trained and checkpointed with the policy
            attach_mtp_head(model)

    def forward(self, model: nn.Module, hidden: Tensor, logp: Tensor, micro, ctx: StepContext) -> None:
        if not hasattr(model, "mtp_head"):
            raise ValueError("occ needs an MTP head: call attach_mtp_head(model) before building the optimizer")
        micro.extras["mtp_logp"] = mtp_logprobs(model.mtp_head, hidden, model.get_input_embeddings(),
                                                model.get_output_embeddings().weight, micro.targets,
                                                ctx.cfg.temperature, ctx.cfg.logprob_chunk)

    def token_loss(self, terms: LossTerms, micro, ctx: StepContext) -> None:
        cfg = ctx.cfg
        mtp_mask = micro.loss_mask.clone()
        mtp_mask[:, 0] = 0  # column 0 has no MTP prediction
        coef = occ_coefficient(micro.extras["mtp_logp"], terms.logp, micro.old_logp, mtp_mask, self.config.scale)
        mtp_loss, _ = ppo_clip_loss(token_log_ratio(micro.extras["mtp_logp"], micro.old_logp), terms.adv * coef,
                                    cfg.eps_low, cfg.eps_high, dual_clip=cfg.dual_clip)
        terms.per_token = terms.per_token + mtp_loss * mtp_mask
        terms.metrics["occ_coef"] = float(coef) * float(mtp_mask.sum()) / terms.num_tokens  # summed over micro-batches
