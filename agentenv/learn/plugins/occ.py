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

The head is trained in the warm start (`sft_loss`: its NLL on the demonstrations, from the trunk's
detached hidden states, so the policy's own warm start is untouched): the paper's MTP module is pretrained,
and a random head has log q ≈ −log V everywhere, a ≫ b, and c ≈ s·b/a ≈ 1e−4, which changes nothing.

The paper's three MTP regimes (its abstract; `mtp_loss_type` and `detach_encoder` in its code) are options,
each a preset (`presets`), so OCC and each baseline are one config apart:

    loss="occ"    (preset occ)        L_PPO(q/π_old; A·c_k), c_k calibrated as above
    loss="fixed"  (preset occ_fixed)  L_PPO(q/π_old; A·s/K)   the policy-loss regime, a fixed coefficient
    loss="ce"     (preset occ_ce)     (s/K)·(−log q(y))       cross-entropy on the sampled tokens (the
                                                              code's `patch_postprocess`: scale s/K, token mean)
    detach=True   (preset occ_detach: ce + detach) the head reads sg(h), sg(e) and a detached output layer,
                  so its loss trains the head only and the policy's update is exactly DAPO's. The paper's
                  `detach_encoder` detaches h and e but not the shared output layer; with this repo's tied
                  embeddings that would leak the MTP loss into the policy, against the regime's intent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from agentenv.learn.objectives import ppo_clip_loss, selective_log_probs, token_log_ratio
from agentenv.learn.plugin import LossTerms, Plugin, StepContext

__all__ = ["Occ", "OccConfig", "MTPHead", "attach_mtp_head", "mtp_logprobs", "mtp_mask", "occ_coefficient", "occ_mtp_loss"]


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
    detach: bool = False,
) -> Tensor:
    """log q(y) aligned with the main head's columns: column s holds log q(targets[s] | h_{s−1}, e(targets[s−1])).

    hidden: [B, T, H], the main head's inputs (column t predicts targets[t]); embed: the policy's input
    embedding; targets: [B, T] -> [B, T]. Column 0 has no MTP prediction and holds 0; mask it out
    (`mtp_mask`). `detach`: the head's inputs and the output layer are stop-gradded, so only the head learns.
    """
    inputs, embeds = hidden[:, :-1], embed(targets[:, :-1]).to(hidden.dtype)
    if detach:
        inputs, embeds, lm_head_weight = inputs.detach(), embeds.detach(), lm_head_weight.detach()
    logq = selective_log_probs(head(inputs, embeds), lm_head_weight, targets[:, 1:], temperature=temperature, chunk=chunk)
    return torch.nn.functional.pad(logq, (1, 0))


def mtp_mask(loss_mask: Tensor) -> Tensor:
    """The positions the MTP head predicts: the loss mask without column 0 (no MTP prediction there)."""
    mask = loss_mask.clone()
    mask[:, 0] = 0
    return mask


@torch.no_grad()
def occ_coefficient(
    mtp_logp: Tensor, logp: Tensor, old_logp: Tensor, mask: Tensor, scale: float = 0.1, num_heads: int = 1
) -> Tensor:
    """c_k = (s/K)·mean over the mask of a·b/(a² + 1e−8) (see the module docstring). [B, T] -> [] scalar."""
    a = mtp_logp - old_logp
    b = logp - old_logp
    mask = mask.to(a.dtype)
    return scale / num_heads * (a * b / (a**2 + 1e-8) * mask).sum() / mask.sum().clamp(min=1)


def occ_mtp_loss(
    loss: str, mtp_logp: Tensor, logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, *, scale: float,
    eps_low: float, eps_high: float, dual_clip: float | None = None, num_heads: int = 1,
) -> tuple[Tensor, Tensor]:
    """(the MTP head's per-token loss [B, T], zero off `mask`; its coefficient []) under regime `loss`:

    "occ": the PPO-clip loss of ratio q/π_old with advantages A·c_k, c_k = `occ_coefficient`;
    "fixed": the same with c = s/K; "ce": (s/K)·(−log q). `logp` is detached inside (only c reads it).
    """
    if loss == "occ":
        coef = occ_coefficient(mtp_logp, logp.detach(), old_logp, mask, scale, num_heads)
    elif loss in ("fixed", "ce"):
        coef = torch.tensor(scale / num_heads, dtype=mtp_logp.dtype, device=mtp_logp.device)
    else:
        raise ValueError(f"occ loss must be occ | fixed | ce, got {loss!r}")
    if loss == "ce":
        return -coef * mtp_logp * mask, coef
    per_token, _ = ppo_clip_loss(token_log_ratio(mtp_logp, old_logp), adv * coef, eps_low, eps_high, dual_clip=dual_clip)
    return per_token * mask, coef


@dataclass
class OccConfig:
    scale: float = 0.1  # s (`mtp_loss_scaling_factor`)
    loss: Literal["occ", "fixed", "ce"] = "occ"  # occ (calibrated) | fixed (coefficient s) | ce (cross-entropy ×s)
    detach: bool = False  # the head's loss trains the head only (the paper's Detach regime with loss=ce)


class Occ(Plugin):
    """OCC: the MTP head's PPO loss, its coefficient calibrated from the log-prob proxy."""

    name = "occ"
    Config = OccConfig
    off_policy = True
    presets = {  # the paper's regimes (module docstring), each against OCC with the same schedule
        "occ_fixed": {"plugins": {"occ": {"loss": "fixed"}}},
        "occ_ce": {"plugins": {"occ": {"loss": "ce"}}},
        "occ_detach": {"plugins": {"occ": {"loss": "ce", "detach": True}}},
    }

    def setup(self, model: nn.Module, tokenizer: Any, *, group_size: int, seed: int) -> None:
        if not hasattr(model, "mtp_head"):  # trained and checkpointed with the policy
            attach_mtp_head(model)

    def _mtp_logp(self, model: nn.Module, hidden: Tensor, micro, temperature: float, chunk: int, detach: bool) -> Tensor:
        if not hasattr(model, "mtp_head"):
            raise ValueError("occ needs an MTP head: call attach_mtp_head(model) before building the optimizer")
        return mtp_logprobs(model.mtp_head, hidden, model.get_input_embeddings(), model.get_output_embeddings().weight,
                            micro.targets, temperature, chunk, detach=detach)

    def sft_loss(self, model: nn.Module, hidden: Tensor, micro, ctx: StepContext) -> Tensor:
        """The head's NLL on the demonstrations, from the trunk's detached states: the warm start trains the
        head to read the policy, and leaves the policy as it would be without it."""
        logq = self._mtp_logp(model, hidden, micro, 1.0, ctx.cfg.logprob_chunk, detach=True)
        return -logq * mtp_mask(micro.loss_mask)

    def forward(self, model: nn.Module, hidden: Tensor, logp: Tensor, micro, ctx: StepContext) -> None:
        micro.extras["mtp_logp"] = self._mtp_logp(model, hidden, micro, ctx.cfg.temperature, ctx.cfg.logprob_chunk,
                                                  self.config.detach)

    def token_loss(self, terms: LossTerms, micro, ctx: StepContext) -> None:
        cfg, c = ctx.cfg, self.config
        mask = mtp_mask(micro.loss_mask)
        mtp_loss, coef = occ_mtp_loss(c.loss, micro.extras["mtp_logp"], terms.logp, micro.old_logp, terms.adv, mask,
                                      scale=c.scale, eps_low=cfg.eps_low, eps_high=cfg.eps_high, dual_clip=cfg.dual_clip)
        terms.per_token = terms.per_token + mtp_loss
        terms.metrics["occ_coef"] = float(coef) * float(mask.sum()) / terms.num_tokens  # summed over micro-batches
