"""GRPO-family objectives as pure functions on tensors: advantages, ratios, per-token losses,
aggregation, KL estimators, entropy, chunked log-probs and reward shaping.

This is the "loss" stage of the learner in docs/design.md. Nothing here holds state or touches a model;
the learner composes the pieces, e.g. DAPO:

    adv = grpo_advantages(rewards, group_ids)                                   # [B]
    log_ratio = token_log_ratio(logp, old_logp)                                 # [B, T]
    loss, clipped = ppo_clip_loss(log_ratio, adv[:, None], eps_low=0.2, eps_high=0.28)
    loss = aggregate(loss, mask, "token-mean", num_tokens_global=n_tokens)

The option set is the union of TRL `GRPOTrainer` (trl/trainer/grpo_trainer.py), verl
(verl/trainer/ppo/core_algos.py) and OpenRLHF (openrlhf/models/loss.py); where the three disagree a
keyword picks the convention and the docstring says which value reproduces which framework.

Shapes: B sequences, T tokens per sequence, V vocabulary, H hidden size, N flattened tokens,
K reward components. Every loss returned is a quantity to *minimise*.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "grpo_advantages",
    "rloo_advantages",
    "reinforce_pp_baseline_advantages",
    "combine_rewards",
    "token_log_ratio",
    "sequence_log_ratio",
    "gspo_token_log_ratio",
    "ppo_clip_loss",
    "cispo_loss",
    "sapo_loss",
    "gpg_loss",
    "aggregate",
    "kl_penalty",
    "entropy_from_logits",
    "log_probs_from_logits",
    "selective_log_probs",
    "overlong_penalty",
    "nonzero_variance_group_mask",
    "truncation_mask",
    "SAMPLER_CORRECTIONS",
    "sampler_correction",
    "sampler_mismatch",
]

SAMPLER_CORRECTIONS = ("none", "tis", "mask")

# A group whose reward std is below this gets advantage 0 (CARE's rule; also what TRL's NaN -> 0 gives).
ZERO_STD = 1e-8

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "abs", "k2", "k3")
_KL_ALIASES = {"kl": "k1", "mse": "k2", "low_var_kl": "k3"}  # verl's names


# --------------------------------------------------------------------------------------------------
# Advantages: sequence rewards [B] -> advantages [B]
# --------------------------------------------------------------------------------------------------


def _as_float(x: Tensor) -> Tensor:
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def _check_std(std: str) -> None:
    if std not in ("unbiased", "population"):
        raise ValueError(f"std must be 'unbiased' (TRL, verl, OpenRLHF) or 'population' (CARE), got {std!r}")


def _group_index(group_ids: Tensor) -> tuple[Tensor, int]:
    """Arbitrary group ids [B] -> (dense group index [B] in [0, G), G)."""
    unique, inv = torch.unique(group_ids, return_inverse=True)
    return inv, unique.numel()


def _group_stats(values: Tensor, group_ids: Tensor, std: str = "unbiased") -> tuple[Tensor, Tensor, Tensor]:
    """Per-row group mean, group std and group size, gathered back to the rows.

    values: [B] or [B, K]; group_ids: [B] (any integers, any order). Returns three tensors shaped like
    `values` (size: [B]). A group of one has std 0 under both conventions.
    """
    _check_std(std)
    inv, num_groups = _group_index(group_ids)
    extra = (1,) * (values.dim() - 1)
    size = torch.zeros(num_groups, dtype=values.dtype, device=values.device).index_add_(
        0, inv, torch.ones_like(inv, dtype=values.dtype)
    )
    total = values.new_zeros((num_groups,) + values.shape[1:]).index_add_(0, inv, values)
    mean = total / size.view(-1, *extra)
    centred = values - mean[inv]
    sq = values.new_zeros((num_groups,) + values.shape[1:]).index_add_(0, inv, centred**2)
    dof = (size - 1 if std == "unbiased" else size).clamp(min=1)
    group_std = (sq / dof.view(-1, *extra)).sqrt()
    return mean[inv], group_std[inv], size[inv]


def _batch_std(values: Tensor, std: str) -> Tensor:
    """Std over all of `values` ([B] -> [B], broadcast); 0 for fewer than two values."""
    if values.numel() < 2:
        return torch.zeros_like(values)
    return values.std(correction=1 if std == "unbiased" else 0).expand_as(values)


def _normalise(centred: Tensor, std: Tensor, eps: float) -> Tensor:
    """centred / (std + eps), and 0 where std < ZERO_STD (so eps=0 never divides by zero)."""
    return torch.where(std > ZERO_STD, centred / (std + eps), torch.zeros_like(centred))


def grpo_advantages(
    rewards: Tensor, group_ids: Tensor, scale: str = "group", std: str = "unbiased", eps: float = 1e-6
) -> Tensor:
    """GRPO advantage A_i = (R_i − mean_G(R)) / (std + eps).

    rewards: [B]; group_ids: [B] (long; groups need not be contiguous) -> [B].

    scale: "group" divides by the group std; "batch" by the std of all rewards (TRL
    `scale_rewards="batch"`, mean still per group); "none" does not divide (Dr.GRPO, verl
    `norm_adv_by_std_in_grpo=False`). std: "unbiased" (Bessel; TRL, verl, OpenRLHF) or "population"
    (CARE). Reproduce a framework with (std, eps): verl ("unbiased", 1e-6), TRL ("unbiased", 1e-4),
    OpenRLHF ("unbiased", 1e-9), CARE ("population", 0).

    Rows whose std is < 1e-8 (identical rewards, or a group of one) get advantage 0. verl instead gives
    a group of one mean 0 and std 1, i.e. A_i = R_i / (1 + eps).
    """
    rewards = _as_float(rewards)
    mean, group_std, _ = _group_stats(rewards, group_ids, std)
    centred = rewards - mean
    if scale == "none":
        return centred
    if scale == "group":
        return _normalise(centred, group_std, eps)
    if scale == "batch":
        return _normalise(centred, _batch_std(rewards, std), eps)
    raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")


def rloo_advantages(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """RLOO leave-one-out advantage A_i = R_i − mean_{G∖i}(R) = n/(n−1)·(R_i − mean_G(R)).

    rewards: [B]; group_ids: [B] -> [B]. A group of one gets 0 (verl leaves R_i unchanged there).
    verl `compute_rloo_outcome_advantage`, OpenRLHF `rloo`.
    """
    rewards = _as_float(rewards)
    mean, _, size = _group_stats(rewards, group_ids)
    loo = (rewards - mean) * size / (size - 1).clamp(min=1)
    return torch.where(size > 1, loo, torch.zeros_like(loo))


def reinforce_pp_baseline_advantages(
    rewards: Tensor, group_ids: Tensor, token_counts: Tensor | None = None, eps: float = 1e-8
) -> Tensor:
    """REINFORCE++-baseline: centre in the group, then whiten over the whole batch.

    rewards: [B]; group_ids: [B]; token_counts: [B] or None -> [B].
    A_i = (c_i − μ) / sqrt(σ² + eps) with c_i = R_i − mean_G(R), μ and σ² (unbiased) over the batch.
    verl `compute_reinforce_plus_plus_baseline_outcome_advantage` whitens the [B, T] broadcast, i.e.
    each sequence weighted by its token count: pass `token_counts=mask.sum(-1)` to reproduce it.
    A group of one is centred to 0 (verl keeps its raw score).
    """
    rewards = _as_float(rewards)
    mean, _, _ = _group_stats(rewards, group_ids)
    centred = rewards - mean
    weight = torch.ones_like(centred) if token_counts is None else token_counts.to(centred.dtype)
    total = weight.sum()
    mu = (weight * centred).sum() / total
    var = (weight * (centred - mu) ** 2).sum() / (total - 1).clamp(min=1)
    return (centred - mu) * torch.rsqrt(var + eps)


def combine_rewards(
    components: Tensor,
    weights: Tensor,
    group_ids: Tensor,
    mode: str = "sum_then_normalize",
    *,
    scale: str = "group",
    std: str = "unbiased",
    eps: float = 1e-6,
) -> Tensor:
    """Advantages from several reward functions (TRL `multi_objective_aggregation`).

    components: [B, K] (finite); weights: [K] (tensor or sequence); group_ids: [B] -> advantages [B].

    "sum_then_normalize": R = components @ weights, then `grpo_advantages(R, group_ids, scale, std, eps)`.
    "normalize_then_sum" (GDPO): each component is group-normalised, (c − mean_G)/(std_G + eps), the
    weighted sum is then whitened over the batch, (s − mean)/(std + eps); `scale` is not used.
    TRL uses eps=1e-4 in both modes.
    """
    components = _as_float(components)
    weights = torch.as_tensor(weights, dtype=components.dtype, device=components.device)
    if mode == "sum_then_normalize":
        return grpo_advantages(components @ weights, group_ids, scale=scale, std=std, eps=eps)
    if mode == "normalize_then_sum":
        mean, group_std, _ = _group_stats(components, group_ids, std)
        summed = _normalise(components - mean, group_std, eps) @ weights
        return _normalise(summed - summed.mean(), _batch_std(summed, std), eps)
    raise ValueError(f"mode must be 'sum_then_normalize' or 'normalize_then_sum', got {mode!r}")


# --------------------------------------------------------------------------------------------------
# Ratios
# --------------------------------------------------------------------------------------------------


def token_log_ratio(logp: Tensor, old_logp: Tensor, clamp: float | None = None) -> Tensor:
    """log r_t = log π_θ − log π_old. logp, old_logp: [B, T] -> [B, T].

    clamp: clip the log-ratio to ±clamp before it is exponentiated (verl uses 20).
    """
    log_ratio = logp - old_logp
    return log_ratio if clamp is None else log_ratio.clamp(-clamp, clamp)


def sequence_log_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    """GSPO sequence log-ratio log s_i = mean_t (log π_θ − log π_old) over the mask, plain autograd.

    logp, old_logp, mask: [B, T] -> [B, 1]. Its gradient is (1/|y_i|)·Σ_t ∇log π_θ, so exp() of it has
    the GSPO gradient s_i·(1/|y_i|)·Σ_t ∇log π_θ (TRL `importance_sampling_level="sequence"`, OpenRLHF).
    """
    mask = mask.to(logp.dtype)
    return ((logp - old_logp) * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)


def gspo_token_log_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor, clamp_max: float = 10.0) -> Tensor:
    """verl's GSPO token form: log s_{i,t} = log π_θ − sg(log π_θ) + sg(log s_i), clamped ≤ clamp_max.

    logp, old_logp, mask: [B, T] -> [B, T]. Every token's value is log s_i; the gradient of
    exp(log s_{i,t}) is s_i·∇log π_θ(y_t), which seq-mean-token-mean turns into the GSPO gradient.
    verl `compute_policy_loss_gspo` (the addition order follows it, verl PR 2775).
    """
    seq = sequence_log_ratio(logp, old_logp, mask).detach()
    return (logp - logp.detach() + seq).clamp(max=clamp_max)


# --------------------------------------------------------------------------------------------------
# Per-token loss forms: -> loss [B, T] to minimise (and a bool mask of clipped tokens)
# --------------------------------------------------------------------------------------------------


def ppo_clip_loss(
    log_ratio: Tensor,
    adv: Tensor,
    eps_low: float = 0.2,
    eps_high: float | None = None,
    dual_clip: float | None = None,
    delta: float | None = None,
) -> tuple[Tensor, Tensor]:
    """PPO clipped surrogate ℓ = max(−A·r, −A·clip(r, 1−eps_low, 1+eps_high)).

    log_ratio: [B, T] (or [B, 1] for a sequence ratio); adv: broadcastable, e.g. [B, 1] -> (loss, clipped),
    both of the broadcast shape; `clipped` marks tokens whose gradient a clip zeroed (for clip fractions).

    eps_high > eps_low is DAPO's clip-higher (0.2 / 0.28); eps_high defaults to eps_low.
    dual_clip=c (> 1; verl default 3.0): for A < 0 only, ℓ = min(ℓ, −A·c) (verl `vanilla`, OpenRLHF).
    delta=δ: TRL/INTELLECT-2 two-sided clip, the unclipped branch uses min(r, δ); for δ > 1+eps_high it
    equals dual_clip=δ.
    """
    eps_high = eps_low if eps_high is None else eps_high
    ratio = torch.exp(log_ratio)
    unclipped = -adv * (ratio if delta is None else ratio.clamp(max=delta))
    clipped_branch = -adv * ratio.clamp(1 - eps_low, 1 + eps_high)
    loss = torch.maximum(unclipped, clipped_branch)
    clipped = clipped_branch > unclipped
    if delta is not None:
        clipped = clipped | (ratio > delta)
    if dual_clip is not None:
        if dual_clip <= 1:
            raise ValueError(f"dual_clip must be > 1 (verl's clip_ratio_c, usually 3.0), got {dual_clip}")
        floor = -adv * dual_clip
        dual = (adv < 0) & (loss > floor)
        loss = torch.where(dual, floor, loss)
        clipped = clipped | dual
    return loss, clipped


def cispo_loss(
    logp: Tensor,
    log_ratio: Tensor,
    adv: Tensor,
    eps_high: float,
    eps_low: float | None = None,
    convention: str = "trl",
) -> tuple[Tensor, Tensor]:
    """CISPO ℓ = −sg(w)·A·log π_θ with a clipped IS weight w (MiniMax-M1, arXiv 2506.13585).

    logp: [B, T] (carries the gradient); log_ratio: [B, T] (only its value is used); adv: broadcastable
    -> (loss, clipped) [B, T]; `clipped` marks tokens whose weight was capped.

    The two frameworks read the same number differently:
    - convention="trl": w = min(r, eps_high), eps_high an *absolute* cap (TRL `epsilon_high`; ScaleRL 5.0).
    - convention="verl": w = clip(r, 1−eps_low, 1+eps_high), the PPO clip range (eps_low defaults to
      eps_high), so the default cap is 1.2, not 5.0.
    """
    ratio = torch.exp(log_ratio.detach())
    if convention == "trl":
        weight = ratio.clamp(max=eps_high)
    elif convention == "verl":
        weight = ratio.clamp(1 - (eps_high if eps_low is None else eps_low), 1 + eps_high)
    else:
        raise ValueError(f"convention must be 'trl' (absolute cap) or 'verl' (1±eps clip), got {convention!r}")
    return -weight * adv * logp, weight != ratio


def sapo_loss(log_ratio: Tensor, adv: Tensor, tau_pos: float = 1.0, tau_neg: float = 1.05) -> Tensor:
    """SAPO soft gate ℓ = −σ(τ·(r − 1))·(4/τ)·A, τ = tau_pos where A > 0 else tau_neg.

    log_ratio: [B, T]; adv: broadcastable -> [B, T]. At r = 1 the gradient equals the unclipped
    surrogate's. TRL `loss_type="sapo"` and verl `sapo` (both default τ 1.0 / 1.05).
    """
    ratio = torch.exp(log_ratio)
    tau = torch.where(adv > 0, adv.new_tensor(tau_pos), adv.new_tensor(tau_neg))
    return -torch.sigmoid(tau * (ratio - 1)) * (4 / tau) * adv


def gpg_loss(logp: Tensor, adv: Tensor) -> Tensor:
    """GPG / REINFORCE ℓ = −A·log π_θ. logp: [B, T]; adv: broadcastable -> [B, T]. verl `gpg`."""
    return -adv * logp


# --------------------------------------------------------------------------------------------------
# Aggregation: [B, T] -> scalar
# --------------------------------------------------------------------------------------------------


def aggregate(
    loss: Tensor,
    mask: Tensor,
    mode: str = "token-mean",
    *,
    num_tokens_global: float | Tensor | None = None,
    num_seqs_global: float | Tensor | None = None,
    norm_const: float | None = None,
) -> Tensor:
    """Reduce a per-token loss to a scalar. loss: [B, T] (or [B, 1]); mask: [B, T] -> [].

    - "token-mean" (DAPO; TRL `dapo`/`bnpo`, verl default): Σ ℓ·m / N_tokens.
    - "seq-mean-token-mean" (GRPO; TRL `grpo`/`sapo`, verl GSPO): Σ_i (Σ_t ℓ·m / Σ_t m) / N_seqs.
    - "seq-mean-token-sum": Σ_i Σ_t ℓ·m / N_seqs.
    - "seq-mean-token-sum-norm" (Dr.GRPO; TRL `dr_grpo`): Σ_i Σ_t ℓ·m / (N_seqs · norm_const), with
      norm_const the max completion length (default T; pass it explicitly when micro-batches are padded
      to different T). verl's `agg_loss` leaves out the 1/N_seqs here.

    N_tokens and N_seqs (sequences with at least one active token) default to this micro-batch's counts.
    For gradient accumulation (and DP), pass the counts over the whole optimizer step as
    `num_tokens_global` / `num_seqs_global`: the summed micro-batch losses then equal the full-batch loss.
    """
    mask = mask.to(loss.dtype)
    masked = loss * mask
    if mode == "token-mean":
        denom = mask.sum().clamp(min=1) if num_tokens_global is None else num_tokens_global
        return masked.sum() / denom
    tokens_per_seq = mask.sum(-1)
    num_seqs = (tokens_per_seq > 0).sum().clamp(min=1) if num_seqs_global is None else num_seqs_global
    per_seq = masked.sum(-1)
    if mode == "seq-mean-token-mean":
        per_seq = per_seq / tokens_per_seq.clamp(min=1)
    elif mode == "seq-mean-token-sum-norm":
        per_seq = per_seq / (mask.shape[-1] if norm_const is None else norm_const)
    elif mode != "seq-mean-token-sum":
        raise ValueError(f"mode must be one of {AGGREGATIONS}, got {mode!r}")
    return per_seq.sum() / num_seqs


# --------------------------------------------------------------------------------------------------
# KL estimators
# --------------------------------------------------------------------------------------------------


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: str = "k3", clamp: float | None = None) -> Tensor:
    """Per-token KL(π_θ ‖ π_ref) estimate from Δ = log π_θ − log π_ref.

    logp, ref_logp: [B, T] -> [B, T]. kind: "k1" = Δ; "abs" = |Δ|; "k2" = ½Δ²; "k3" = exp(−Δ) + Δ − 1
    (low-variance, ≥ 0); verl's names "kl", "mse", "low_var_kl" are accepted. A "+" suffix ("k3+") is
    straight-through: the estimator's value forward, the gradient of k2 (= Δ·∇log π_θ) backward
    (verl `kl_penalty`).
    clamp: clip the value to ±clamp (verl and OpenRLHF use 10; TRL none); Δ is then also clipped to ±20
    first, as in verl, so exp(−Δ) cannot overflow into a NaN gradient.
    """
    name = kind.removesuffix("+")
    base = _KL_ALIASES.get(name, name)
    if kind.endswith("+"):
        forward = kl_penalty(logp, ref_logp, base, clamp)
        backward = kl_penalty(logp, ref_logp, "k2")
        return backward - backward.detach() + forward.detach()
    delta = logp - ref_logp
    if clamp is not None:
        delta = delta.clamp(-20.0, 20.0)
    if base == "k1":
        kl = delta
    elif base == "abs":
        kl = delta.abs()
    elif base == "k2":
        kl = 0.5 * delta**2
    elif base == "k3":
        kl = torch.exp(-delta) + delta - 1
    else:
        raise ValueError(f"kind must be one of {KL_ESTIMATORS}, optionally with a '+' suffix, got {kind!r}")
    return kl if clamp is None else kl.clamp(-clamp, clamp)


# --------------------------------------------------------------------------------------------------
# Entropy and log-probs
# --------------------------------------------------------------------------------------------------


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Categorical entropy H = logsumexp(z) − Σ softmax(z)·z. logits: [..., V] -> [...]."""
    return torch.logsumexp(logits, -1) - (torch.softmax(logits, -1) * logits).sum(-1)


def log_probs_from_logits(logits: Tensor, targets: Tensor) -> Tensor:
    """log softmax(z)[y] = z_y − logsumexp(z). logits: [B, T, V]; targets: [B, T] (long) -> [B, T].

    fp32/fp64 logits use gather − logsumexp; half-precision logits go row by row through a float32
    log_softmax, which bounds the extra memory to one [T, V] float32 copy (TRL `selective_log_softmax`).
    """
    if logits.dtype in (torch.float32, torch.float64):
        return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
    rows = [torch.log_softmax(row.float(), -1).gather(-1, y.unsqueeze(-1)) for row, y in zip(logits, targets)]
    return torch.stack(rows).squeeze(-1)


def _chunk_logits(hidden: Tensor, weight: Tensor, temperature: float, dtype: torch.dtype) -> Tensor:
    logits = (hidden @ weight.T).to(dtype)  # a fresh tensor: safe to scale (and, in backward, reuse) in place
    return logits if temperature == 1.0 else logits.div_(temperature)


class _ChunkedLinearLogProbs(torch.autograd.Function):
    """(hidden [N, H], weight [V, H]) -> (log p(target) [N], entropy [N] or [0]) without storing [N, V].

    Forward and backward both recompute the logits one chunk of rows at a time (verl
    `FusedLinearForPPO`): dlogits = dlogp·(onehot − p) − dH·p·(log p + H), divided by the temperature.
    Backward runs under the autocast state forward ran under (as `torch.amp.custom_bwd` does): autograd runs
    backward outside autocast, which would make its three [chunk, V] products float32 under a bf16 forward
    (on an H200, 0.5B model: the update at 0.6× a naive HF step's speed).
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, chunk, with_entropy):
        dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        n = hidden.shape[0]
        logp = torch.empty(n, dtype=dtype, device=hidden.device)
        lse_all = torch.empty(n, dtype=dtype, device=hidden.device)
        entropy = torch.empty(n if with_entropy else 0, dtype=dtype, device=hidden.device)
        for start in range(0, n, chunk):
            rows = slice(start, start + chunk)
            logits = _chunk_logits(hidden[rows], weight, temperature, dtype)
            lse = torch.logsumexp(logits, -1, keepdim=True)
            lse_all[rows] = lse.squeeze(-1)
            logp[rows] = (logits.gather(-1, targets[rows].unsqueeze(-1)) - lse).squeeze(-1)
            if with_entropy:
                entropy[rows] = (lse - (torch.exp(logits - lse) * logits).sum(-1, keepdim=True)).squeeze(-1)
        # The row log-normalisers (and entropies) are kept, [N] each, so backward gets p = exp(z − lse) from the
        # recomputed logits in place, without a second logsumexp.
        ctx.save_for_backward(hidden, weight, targets, lse_all, entropy)
        ctx.temperature, ctx.chunk, ctx.dtype = temperature, chunk, dtype
        device = hidden.device.type
        ctx.autocast = (device, torch.get_autocast_dtype(device), torch.is_autocast_enabled(device))
        ctx.set_materialize_grads(False)
        if not with_entropy:
            ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        device, dtype, enabled = ctx.autocast
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            return _ChunkedLinearLogProbs._backward(ctx, grad_logp, grad_entropy)

    @staticmethod
    def _backward(ctx, grad_logp, grad_entropy):
        hidden, weight, targets, lse_all, entropy = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[:2]
        grad_hidden = torch.zeros_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=ctx.dtype, device=weight.device) if need_weight else None
        if grad_logp is None and grad_entropy is None:
            return grad_hidden, grad_weight, None, None, None, None
        for start in range(0, hidden.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            # log p = z − lse, in place on the recomputed logits; every step below reuses that buffer
            log_p = _chunk_logits(hidden[rows], weight, ctx.temperature, ctx.dtype).sub_(lse_all[rows].unsqueeze(-1))
            g = grad_logp[rows].unsqueeze(-1) if grad_logp is not None else None
            if grad_entropy is None:
                dlogits = log_p.exp_().mul_(-g)  # −dlogp·p
            else:  # −p·(dlogp + dH·(log p + H))
                p = log_p.exp()
                dlogits = log_p.add_(entropy[rows].unsqueeze(-1)).mul_(grad_entropy[rows].unsqueeze(-1))
                if g is not None:
                    dlogits.add_(g)
                dlogits.mul_(p).neg_()
            if g is not None:
                dlogits.scatter_add_(-1, targets[rows].unsqueeze(-1), g)  # + dlogp·onehot
            if ctx.temperature != 1.0:
                dlogits.div_(ctx.temperature)
            dlogits = dlogits.to(weight.dtype)
            if need_hidden:
                grad_hidden[rows] = dlogits @ weight
            if need_weight:
                grad_weight += dlogits.T @ hidden[rows]
        if need_weight:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None


def selective_log_probs(
    hidden: Tensor,
    lm_head_weight: Tensor,
    targets: Tensor,
    temperature: float = 1.0,
    chunk: int = 1024,
    return_entropy: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Token log-probs (and entropies) straight from the last hidden state, never holding [N, V].

    hidden: [N, H] (or [..., H]); lm_head_weight: [V, H]; targets: [N] (or [...], long) -> logp [N]
    (float32, float64 for float64 inputs), or (logp, entropy) when return_entropy. The logits are
    hidden @ W.T / temperature, recomputed per chunk of rows in forward and backward, so peak extra
    memory is a few [chunk, V] buffers. Differentiable w.r.t. hidden and lm_head_weight, through both
    outputs. verl `FusedLinearForPPO`; TRL's Liger path does the same.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be a positive number of rows, got {chunk}")
    shape = targets.shape
    logp, entropy = _ChunkedLinearLogProbs.apply(
        hidden.reshape(-1, hidden.shape[-1]),
        lm_head_weight,
        targets.reshape(-1),
        float(temperature),
        int(chunk),
        bool(return_entropy),
    )
    if return_entropy:
        return logp.view(shape), entropy.view(shape)
    return logp.view(shape)


# --------------------------------------------------------------------------------------------------
# Reward shaping and masks
# --------------------------------------------------------------------------------------------------


def overlong_penalty(lengths: Tensor, max_len: int, buffer_len: int, factor: float = 1.0) -> Tensor:
    """DAPO soft overlong punishment, added to the reward. lengths: [B] -> [B], in [−factor, 0].

    0 up to max_len − buffer_len, then linear down to −factor at max_len, and −factor beyond it
    (OpenRLHF caps there; verl's formula keeps falling, but its lengths never pass max_len).
    """
    excess = (_as_float(lengths) - (max_len - buffer_len)).clamp(0, buffer_len)
    return -excess / buffer_len * factor


def nonzero_variance_group_mask(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """DAPO dynamic sampling: True for rows whose group has non-identical rewards. [B], [B] -> [B] bool.

    Groups where every reward is equal (including groups of one) carry no GRPO signal; verl's
    `filter_groups` drops them and regenerates. verl keeps groups of one; here they are False.
    """
    inv, num_groups = _group_index(group_ids)
    base = rewards.new_zeros(num_groups)
    high = base.scatter_reduce(0, inv, rewards, "amax", include_self=False)
    low = base.scatter_reduce(0, inv, rewards, "amin", include_self=False)
    return (high > low)[inv]


def truncation_mask(mask: Tensor, truncated: Tensor) -> Tensor:
    """Zero the loss mask of truncated completions (TRL `mask_truncated_completions`).

    mask: [B, T]; truncated: [B] bool -> [B, T], same dtype as mask.
    """
    return torch.where(truncated.unsqueeze(-1), torch.zeros_like(mask), mask)


# --------------------------------------------------------------------------------------------------
# Sampler–learner mismatch: the rollout engine (vLLM, a stale or lower-precision copy) samples from π_s,
# the learner's π_old differs from it; importance weights ρ = π_old / π_s correct for that
# --------------------------------------------------------------------------------------------------

def sampler_correction(old_logp: Tensor, sampler_logp: Tensor, mask: Tensor, mode: str = "tis", cap: float = 2.0,
                       level: str = "token") -> Tensor:
    """Importance weights `[B, T]` (no gradient) for tokens sampled from π_s but trained as if from π_old.

    log ρ_t = log π_old(y_t) − log π_s(y_t); at `level="sequence"`, log ρ is the masked mean of log ρ_t over
    the row (the geometric mean ratio, as verl's sequence-level rollout correction), broadcast to its tokens.
    - "tis" (truncated importance sampling, Yao et al. 2025; verl `tis_imp_ratio_cap`): w = min(ρ, cap);
    - "mask" (masked importance sampling, IcePop-style): w = 1 if 1/cap ≤ ρ ≤ cap else 0;
    - "none": w = 1.
    Multiply the per-token policy-gradient loss by w. old_logp, sampler_logp, mask: [B, T].
    """
    if mode == "none":
        return torch.ones_like(old_logp)
    log_rho = (old_logp - sampler_logp).detach() * mask
    if level == "sequence":
        log_rho = (log_rho.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)).expand_as(old_logp)
    elif level != "token":
        raise ValueError(f"level must be 'token' or 'sequence', got {level!r}")
    bound = torch.log(torch.tensor(cap, dtype=log_rho.dtype, device=log_rho.device))
    if mode == "tis":
        return torch.exp(log_rho.clamp(max=bound))
    if mode == "mask":
        return ((log_rho >= -bound) & (log_rho <= bound)).to(old_logp.dtype)
    raise ValueError(f"sampler correction must be one of {SAMPLER_CORRECTIONS}, got {mode!r}")


def sampler_mismatch(old_logp: Tensor, sampler_logp: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(k3 estimate of KL(π_s ‖ π_old), mean |log π_old − log π_s|) over the masked tokens, which π_s sampled.

    k3 = E_{π_s}[ρ − 1 − log ρ] with ρ = π_old/π_s (≥ 0, 0 iff the two agree on every sampled token).
    """
    delta = (old_logp - sampler_logp).detach()
    n = mask.sum().clamp(min=1)
    return ((torch.exp(delta) - 1 - delta) * mask).sum() / n, (delta.abs() * mask).sum() / n
