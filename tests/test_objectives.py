"""Objectives: hand-computed values, gradient checks and the cross-framework traps.

The reference advantage table is §1.5 of the learner anchors note (rewards [1,0,0,1,1,0,0,0], n=8).
"""

import math

import pytest
import torch
from torch.autograd import gradcheck

from agentenv.learn.objectives import (
    AGGREGATIONS,
    aggregate,
    cispo_loss,
    combine_rewards,
    entropy_from_logits,
    gpg_loss,
    grpo_advantages,
    gspo_token_log_ratio,
    kl_penalty,
    log_probs_from_logits,
    nonzero_variance_group_mask,
    overlong_penalty,
    ppo_clip_loss,
    reinforce_pp_baseline_advantages,
    rloo_advantages,
    sapo_loss,
    selective_log_probs,
    sequence_log_ratio,
    token_log_ratio,
    truncation_mask,
)

from exact import F64, close, t  # tests/exact.py


# --------------------------------------------------------------------------------------------------
# Advantages
# --------------------------------------------------------------------------------------------------

REFERENCE = [1.0, 0, 0, 1, 1, 0, 0, 0]

# (framework, estimator, advantage of the 1s, advantage of the 0s) from the §1.5 table.
REFERENCE_ROWS = [
    ("verl", lambda r, g: grpo_advantages(r, g, eps=1e-6), 1.207612, -0.724567),
    ("TRL", lambda r, g: grpo_advantages(r, g, eps=1e-4), 1.207381, -0.724429),
    ("OpenRLHF", lambda r, g: grpo_advantages(r, g, eps=1e-9), 1.207615, -0.724569),
    ("CARE", lambda r, g: grpo_advantages(r, g, std="population", eps=0.0), 1.290994, -0.774597),
    ("Dr.GRPO", lambda r, g: grpo_advantages(r, g, scale="none"), 0.625, -0.375),
    ("RLOO", rloo_advantages, 0.714286, -0.428571),
]


@pytest.mark.parametrize(
    "estimator,adv_one,adv_zero", [row[1:] for row in REFERENCE_ROWS], ids=[row[0] for row in REFERENCE_ROWS]
)
def test_reference_table_with_interleaved_groups(estimator, adv_one, adv_zero):
    # The reference group (id 42) is interleaved with another group (id 7) that must not leak into it.
    other = [5.0, -2.0, 3.0]
    rewards = t(REFERENCE[:3] + other[:1] + REFERENCE[3:6] + other[1:] + REFERENCE[6:])
    group_ids = torch.tensor([42] * 3 + [7] + [42] * 3 + [7, 7] + [42] * 2)
    adv = estimator(rewards, group_ids)
    in_ref = group_ids == 42
    expected = torch.where(t(REFERENCE) == 1, t(adv_one), t(adv_zero))
    close(adv[in_ref], expected, tol=1e-6)


def test_unbiased_and_population_std_differ():
    rewards, groups = t([0.0, 1.0]), torch.tensor([0, 0])
    close(grpo_advantages(rewards, groups, eps=0.0), [-1 / math.sqrt(2), 1 / math.sqrt(2)])  # std = 0.7071
    close(grpo_advantages(rewards, groups, std="population", eps=0.0), [-1.0, 1.0])  # std = 0.5


def test_grpo_matches_a_per_group_loop_in_any_order():
    torch.manual_seed(0)
    rewards = torch.randn(40, dtype=F64)
    group_ids = torch.randint(0, 6, (40,)) * 11 + 3  # arbitrary ids, scattered
    adv = grpo_advantages(rewards, group_ids, eps=1e-4)
    for g in group_ids.unique():
        rows = group_ids == g
        r = rewards[rows]
        expected = (r - r.mean()) / (r.std() + 1e-4) if r.numel() > 1 else torch.zeros_like(r)
        close(adv[rows], expected, tol=1e-12)


def test_grpo_degenerate_groups_get_zero_even_without_eps():
    rewards = t([1.0, 1.0, 1.0, 0.3, 2.0])
    groups = torch.tensor([0, 0, 0, 1, 2])  # a constant group and two singletons
    for std in ("unbiased", "population"):
        adv = grpo_advantages(rewards, groups, std=std, eps=0.0)
        assert torch.equal(adv, torch.zeros(5, dtype=F64))
    assert torch.equal(rloo_advantages(rewards, groups), torch.zeros(5, dtype=F64))


def test_grpo_batch_scale_uses_group_mean_and_batch_std():
    rewards, groups = t([0.0, 1.0, 2.0, 6.0]), torch.tensor([0, 0, 1, 1])
    batch_std = rewards.std()  # unbiased, over all four rewards
    expected = t([-0.5, 0.5, -2.0, 2.0]) / (batch_std + 1e-4)
    close(grpo_advantages(rewards, groups, scale="batch", eps=1e-4), expected, tol=1e-12)


def test_grpo_accepts_integer_rewards():
    adv = grpo_advantages(torch.tensor([1, 0]), torch.tensor([0, 0]))
    assert adv.is_floating_point()


def test_rloo_is_reward_minus_mean_of_the_others():
    rewards, groups = t([1.0, 2.0, 3.0, 10.0]), torch.tensor([5, 5, 5, 9])
    close(rloo_advantages(rewards, groups), [1 - 2.5, 2 - 2.0, 3 - 1.5, 0.0], tol=1e-12)


def test_reinforce_pp_baseline_centres_then_whitens():
    rewards, groups = t([1.0, 0.0, 3.0, 1.0]), torch.tensor([0, 0, 1, 1])
    centred = t([0.5, -0.5, 1.0, -1.0])  # batch mean 0, unbiased var 2.5 / 3
    close(reinforce_pp_baseline_advantages(rewards, groups), centred / math.sqrt(2.5 / 3 + 1e-8), tol=1e-12)


def test_reinforce_pp_baseline_token_weighted_matches_verl_masked_whiten():
    torch.manual_seed(1)
    rewards, groups = torch.randn(6, dtype=F64), torch.tensor([0, 1, 0, 1, 2, 2])
    mask = (torch.rand(6, 9) < 0.7).to(F64)
    mask[:, 0] = 1
    # verl: broadcast the centred score over T, masked_whiten with an unbiased masked variance.
    centred = rewards - t([rewards[[0, 2]].mean(), rewards[[1, 3]].mean()] * 2 + [rewards[4:].mean()] * 2)
    scores = centred[:, None] * mask
    mean = (scores * mask).sum() / mask.sum()
    var = ((scores - mean) ** 2 * mask).sum() / mask.sum() * mask.sum() / (mask.sum() - 1)
    verl = ((scores - mean) * torch.rsqrt(var + 1e-8))[:, 0]
    close(reinforce_pp_baseline_advantages(rewards, groups, token_counts=mask.sum(-1)), verl, tol=1e-12)


def test_combine_rewards_sum_then_normalize_is_grpo_of_weighted_sum():
    torch.manual_seed(2)
    components, weights = torch.randn(8, 3, dtype=F64), t([1.0, 0.5, -2.0])
    groups = torch.tensor([0, 1] * 4)
    close(combine_rewards(components, weights, groups), grpo_advantages(components @ weights, groups), tol=1e-12)


def test_combine_rewards_normalize_then_sum_matches_trl_layout():
    torch.manual_seed(3)
    n, k = 4, 2
    components, weights = torch.randn(3 * n, k, dtype=F64), t([1.0, 0.3])
    # TRL's GDPO code path, on contiguous groups of n.
    grouped = components.view(-1, n, k)
    per_k = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).view(-1, k)
    summed = per_k @ weights
    trl = (summed - summed.mean()) / (summed.std() + 1e-4)
    # Ours, on the same rows in a shuffled order.
    perm = torch.randperm(3 * n)
    ids = torch.arange(3).repeat_interleave(n)
    ours = combine_rewards(components[perm], weights, ids[perm], mode="normalize_then_sum", eps=1e-4)
    close(ours, trl[perm], tol=1e-12)


# --------------------------------------------------------------------------------------------------
# Ratios
# --------------------------------------------------------------------------------------------------


def test_token_and_sequence_log_ratios():
    logp, old = t([[-1.0, -2.0, -3.0]]), t([[-1.5, -1.0, -9.0]])
    mask = t([[1.0, 1.0, 0.0]])
    close(token_log_ratio(logp, old), [[0.5, -1.0, 6.0]])
    close(token_log_ratio(logp, old, clamp=0.7), [[0.5, -0.7, 0.7]])
    close(sequence_log_ratio(logp, old, mask), [[-0.25]])  # the masked 6.0 is ignored


def test_gspo_sequence_ratio_gradient_is_s_times_mean_grad_logp():
    torch.manual_seed(4)
    logp = (-torch.rand(3, 5, dtype=F64)).requires_grad_()
    old = -torch.rand(3, 5, dtype=F64)
    mask = t([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    s = sequence_log_ratio(logp, old, mask).exp()  # [B, 1]
    (grad,) = torch.autograd.grad(s.sum(), logp)
    close(grad, s.detach() * mask / mask.sum(-1, keepdim=True), tol=1e-12)
    assert gradcheck(lambda lp: sequence_log_ratio(lp, old, mask), (logp,))


def test_gspo_token_form_has_sequence_value_and_same_gradient_as_plain_form():
    torch.manual_seed(5)
    logp = (-torch.rand(3, 6, dtype=F64)).requires_grad_()
    old = logp.detach() + 0.05 * torch.randn(3, 6, dtype=F64)
    mask = t([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]])
    adv = t([[1.0], [-0.5], [2.0]])
    token_form = gspo_token_log_ratio(logp, old, mask)
    seq = sequence_log_ratio(logp, old, mask)
    close(token_form.detach(), seq.detach().expand(3, 6), tol=1e-12)
    # verl (token form, seq-mean-token-mean) and TRL (sequence ratio [B,1]) give the same loss and gradient.
    wide = dict(eps_low=10.0, eps_high=10.0)  # no clipping, so the surrogate's gradient shows
    verl = aggregate(ppo_clip_loss(token_form, adv, **wide)[0], mask, "seq-mean-token-mean")
    trl = aggregate(ppo_clip_loss(seq, adv, **wide)[0], mask, "seq-mean-token-mean")
    (g_verl,) = torch.autograd.grad(verl, logp)
    (g_trl,) = torch.autograd.grad(trl, logp)
    close(verl, trl, tol=1e-12)
    close(g_verl, g_trl, tol=1e-12)


def test_gspo_token_form_clamps_log_ratio_at_ten():
    logp, old, mask = t([[0.0, 0.0]]), t([[-30.0, -30.0]]), t([[1.0, 1.0]])
    close(gspo_token_log_ratio(logp, old, mask), [[10.0, 10.0]])


# --------------------------------------------------------------------------------------------------
# Loss forms
# --------------------------------------------------------------------------------------------------


def test_ppo_clip_hand_values_with_clip_higher():
    log_ratio = t([[0.5, 1.0, 1.25, 1.5]]).log().expand(2, 4)
    adv = t([[1.0], [-1.0]])
    loss, clipped = ppo_clip_loss(log_ratio, adv, eps_low=0.2, eps_high=0.28)
    # A > 0: max(-r, -clip(r)); only r = 1.5 is clipped (to 1.28). A < 0: only r = 0.5 is (to 0.8).
    close(loss, [[-0.5, -1.0, -1.25, -1.28], [0.8, 1.0, 1.25, 1.5]])
    assert clipped.tolist() == [[False, False, False, True], [True, False, False, False]]
    symmetric, _ = ppo_clip_loss(log_ratio, adv, eps_low=0.2)  # eps_high defaults to eps_low
    close(symmetric[0, 2], -1.2)


def test_dual_clip_caps_only_negative_advantages():
    torch.manual_seed(6)
    log_ratio = 2.0 * torch.randn(64, 8, dtype=F64)  # ratios far outside the trust region
    adv = torch.randn(64, 1, dtype=F64)
    plain, plain_clipped = ppo_clip_loss(log_ratio, adv, 0.2, 0.28)
    dual, dual_clipped = ppo_clip_loss(log_ratio, adv, 0.2, 0.28, dual_clip=3.0)
    pos = (adv > 0).expand_as(plain)
    assert torch.equal(dual[pos], plain[pos]) and torch.equal(dual_clipped[pos], plain_clipped[pos])
    changed = dual != plain
    assert changed.any() and not (changed & pos).any()
    close(dual[changed], (-adv * 3.0).expand_as(dual)[changed], tol=1e-12)  # ℓ = min(ℓ1, −A·c) = |A|·c
    hand, _ = ppo_clip_loss(t([[math.log(4.0)]]), t([[-1.0]]), 0.2, 0.28, dual_clip=3.0)
    close(hand, [[3.0]])  # without dual clip this is 4.0
    with pytest.raises(ValueError, match="dual_clip"):
        ppo_clip_loss(log_ratio, adv, dual_clip=0.5)


def test_trl_delta_equals_verl_dual_clip_when_delta_above_clip_range():
    torch.manual_seed(7)
    log_ratio = 1.5 * torch.randn(32, 8, dtype=F64)
    adv = torch.randn(32, 1, dtype=F64)
    by_delta, clipped_delta = ppo_clip_loss(log_ratio, adv, 0.2, 0.28, delta=2.5)
    by_dual, _ = ppo_clip_loss(log_ratio, adv, 0.2, 0.28, dual_clip=2.5)
    close(by_delta, by_dual, tol=1e-12)
    assert clipped_delta[log_ratio.exp() > 2.5].all()


def test_ppo_clip_gradcheck():
    torch.manual_seed(8)
    log_ratio = (0.4 * torch.randn(4, 6, dtype=F64)).requires_grad_()
    adv = torch.randn(4, 1, dtype=F64)
    for kwargs in ({}, {"eps_high": 0.28}, {"dual_clip": 1.3}, {"delta": 1.2}):
        assert gradcheck(lambda lr: ppo_clip_loss(lr, adv, eps_low=0.2, **kwargs)[0], (log_ratio,))


def test_clipped_tokens_have_zero_gradient():
    torch.manual_seed(9)
    log_ratio = torch.randn(16, 8, dtype=F64).requires_grad_()
    adv = torch.randn(16, 1, dtype=F64)
    loss, clipped = ppo_clip_loss(log_ratio, adv, 0.2, 0.28, dual_clip=3.0)
    (grad,) = torch.autograd.grad(loss.sum(), log_ratio)
    assert clipped.any() and torch.equal(grad[clipped], torch.zeros_like(grad[clipped]))
    assert (grad[~clipped] != 0).all()


def test_cispo_cap_conventions_differ():
    ratio = t([[0.5, 1.1, 1.3, 6.0]])
    logp, adv = t([[-1.0, -2.0, -0.5, -3.0]]), t([[2.0]])
    # The same number, eps_high=0.28: TRL reads an absolute cap, verl the PPO range 1 ± eps.
    trl, trl_clipped = cispo_loss(logp, ratio.log(), adv, eps_high=0.28, convention="trl")
    verl, verl_clipped = cispo_loss(logp, ratio.log(), adv, eps_high=0.28, eps_low=0.2, convention="verl")
    close(trl, -t([[0.28] * 4]) * adv * logp)
    close(verl, -t([[0.8, 1.1, 1.28, 1.28]]) * adv * logp)
    assert trl_clipped.all() and verl_clipped.tolist() == [[True, False, True, True]]
    trl5, _ = cispo_loss(logp, ratio.log(), adv, eps_high=5.0)  # ScaleRL's recommended cap
    close(trl5, -t([[0.5, 1.1, 1.3, 5.0]]) * adv * logp)
    with pytest.raises(ValueError, match="convention"):
        cispo_loss(logp, ratio.log(), adv, eps_high=5.0, convention="openrlhf")


def test_cispo_gradient_flows_through_logp_only():
    torch.manual_seed(10)
    logp = (-torch.rand(3, 4, dtype=F64)).requires_grad_()
    log_ratio = (0.5 * torch.randn(3, 4, dtype=F64)).requires_grad_()
    adv = torch.randn(3, 1, dtype=F64)
    loss, _ = cispo_loss(logp, log_ratio, adv, eps_high=1.2)
    g_logp, g_ratio = torch.autograd.grad(loss.sum(), (logp, log_ratio), allow_unused=True)
    close(g_logp, -log_ratio.detach().exp().clamp(max=1.2) * adv, tol=1e-12)
    assert g_ratio is None or torch.equal(g_ratio, torch.zeros_like(g_ratio))
    assert gradcheck(lambda lp: cispo_loss(lp, log_ratio.detach(), adv, 0.2, convention="verl")[0], (logp,))


def test_sapo_values_and_gradient_at_ratio_one():
    adv = t([[1.0], [-2.0]])
    log_ratio = torch.zeros(2, 3, dtype=F64, requires_grad=True)
    loss = sapo_loss(log_ratio, adv, tau_pos=1.0, tau_neg=1.05)
    close(loss, t([[-2.0] * 3, [2 * 2 / 1.05] * 3]), tol=1e-12)  # −σ(0)·4/τ·A = −2A/τ
    (grad,) = torch.autograd.grad(loss.sum(), log_ratio)
    close(grad, (-adv).expand(2, 3), tol=1e-12)  # at r = 1 the soft gate has the surrogate's gradient
    ratio = 1.4
    hand = -torch.sigmoid(t(1.05 * (ratio - 1))) * 4 / 1.05 * -2.0
    close(sapo_loss(t([[math.log(ratio)]]), t([[-2.0]])), [[hand]])
    torch.manual_seed(11)
    signs = t([[1.0], [-1.0], [0.5]])
    assert gradcheck(lambda lr: sapo_loss(lr, signs), (torch.randn(3, 4, dtype=F64, requires_grad=True),))


def test_gpg_is_minus_advantage_times_logp():
    logp = t([[-1.0, -2.0]]).requires_grad_()
    loss = gpg_loss(logp, t([[3.0]]))
    close(loss, [[3.0, 6.0]])
    assert gradcheck(lambda lp: gpg_loss(lp, t([[3.0]])), (logp,))


# --------------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------------


def test_aggregation_modes_by_hand():
    loss = t([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    mask = t([[1, 1, 0], [1, 0, 0], [0, 0, 0]])  # the empty third sequence counts nowhere
    close(aggregate(loss, mask, "token-mean"), 7 / 3)
    close(aggregate(loss, mask, "seq-mean-token-mean"), (1.5 + 4.0) / 2)
    close(aggregate(loss, mask, "seq-mean-token-sum"), (3.0 + 4.0) / 2)
    close(aggregate(loss, mask, "seq-mean-token-sum-norm"), 7.0 / (2 * 3))  # norm_const defaults to T
    close(aggregate(loss, mask, "seq-mean-token-sum-norm", norm_const=10), 7.0 / 20)
    close(aggregate(t([[2.0], [4.0], [0.0]]), mask, "seq-mean-token-mean"), 3.0)  # a [B,1] sequence loss
    close(aggregate(loss, mask.bool(), "token-mean"), 7 / 3)
    with pytest.raises(ValueError, match="seq-mean-token-mean"):
        aggregate(loss, mask, "sum")


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_grad_accumulation_over_two_micro_batches_equals_full_batch(mode):
    torch.manual_seed(12)
    B, T = 6, 7
    theta = torch.randn(T, dtype=F64, requires_grad=True)
    inputs = torch.randn(B, T, dtype=F64)
    mask = (torch.rand(B, T) < 0.6).to(F64)
    mask[:, 0] = 1
    lengths_differ = mask[:3].sum() != mask[3:].sum()
    assert lengths_differ  # otherwise token-mean would accumulate correctly by accident

    def per_token(rows):
        return (inputs[rows] * theta).tanh() ** 2

    full = aggregate(per_token(slice(None)), mask, mode)
    (g_full,) = torch.autograd.grad(full, theta)

    norms = dict(num_tokens_global=mask.sum(), num_seqs_global=(mask.sum(-1) > 0).sum(), norm_const=T)
    accumulated, g_acc = 0.0, torch.zeros_like(theta)
    for rows in (slice(0, 2), slice(2, B)):  # unequal micro-batches
        micro = aggregate(per_token(rows), mask[rows], mode, **norms)
        (g,) = torch.autograd.grad(micro, theta)
        accumulated, g_acc = accumulated + micro.detach(), g_acc + g
    close(accumulated, full, tol=1e-12)
    close(g_acc, g_full, tol=1e-12)

    # The trap: averaging local means over micro-batches is not the full-batch loss.
    local = sum(aggregate(per_token(rows), mask[rows], mode, norm_const=T) for rows in (slice(0, 2), slice(2, B))) / 2
    assert not torch.isclose(local, full)


# --------------------------------------------------------------------------------------------------
# KL
# --------------------------------------------------------------------------------------------------


def test_kl_estimators_by_hand():
    logp, ref = t([-1.0, -2.0, 0.5]), t([0.0, -2.0, -1.5])  # Δ = [-1, 0, 2]
    close(kl_penalty(logp, ref, "k1"), [-1.0, 0.0, 2.0])
    close(kl_penalty(logp, ref, "abs"), [1.0, 0.0, 2.0])
    close(kl_penalty(logp, ref, "k2"), [0.5, 0.0, 2.0])
    close(kl_penalty(logp, ref, "k3"), [math.e - 2, 0.0, math.exp(-2) + 1])
    close(kl_penalty(logp, ref, "low_var_kl"), kl_penalty(logp, ref, "k3"))
    close(kl_penalty(logp, ref, "mse"), kl_penalty(logp, ref, "k2"))
    with pytest.raises(ValueError, match="k3"):
        kl_penalty(logp, ref, "full")


def test_kl_gradcheck():
    torch.manual_seed(13)
    logp = torch.randn(3, 4, dtype=F64, requires_grad=True)
    ref = torch.randn(3, 4, dtype=F64)
    for kind in ("k1", "abs", "k2", "k3"):
        assert gradcheck(lambda lp: kl_penalty(lp, ref, kind), (logp,))


def test_k3_plus_forward_is_k3_and_gradient_is_k2():
    torch.manual_seed(14)
    logp = torch.randn(4, 5, dtype=F64, requires_grad=True)
    ref = torch.randn(4, 5, dtype=F64)
    st = kl_penalty(logp, ref, "k3+")
    close(st, kl_penalty(logp, ref, "k3"), tol=1e-12)
    (grad,) = torch.autograd.grad(st.sum(), logp)
    (k2_grad,) = torch.autograd.grad(kl_penalty(logp, ref, "k2").sum(), logp)
    close(grad, k2_grad, tol=1e-12)
    close(grad, (logp - ref).detach(), tol=1e-12)  # ∇ ½Δ² = Δ


def test_kl_clamp_bounds_value_and_keeps_gradient_finite():
    logp = t([-100.0, 0.0, 100.0]).requires_grad_()
    kl = kl_penalty(logp, torch.zeros(3, dtype=F64), "k3", clamp=10.0)
    close(kl, [10.0, 0.0, 10.0])
    (grad,) = torch.autograd.grad(kl.sum(), logp)
    assert torch.isfinite(grad).all()


# --------------------------------------------------------------------------------------------------
# Entropy and log-probs
# --------------------------------------------------------------------------------------------------


def test_entropy_from_logits():
    close(entropy_from_logits(torch.zeros(2, 5, dtype=F64)), [math.log(5)] * 2, tol=1e-12)
    close(entropy_from_logits(t([[0.0, -1e4]])), [0.0], tol=1e-12)
    torch.manual_seed(15)
    logits = torch.randn(3, 7, dtype=F64, requires_grad=True)
    p = logits.softmax(-1)
    close(entropy_from_logits(logits), -(p * p.log()).sum(-1), tol=1e-12)
    assert gradcheck(entropy_from_logits, (logits,))


def test_log_probs_from_logits():
    torch.manual_seed(16)
    logits = torch.randn(2, 3, 11)
    targets = torch.randint(0, 11, (2, 3))
    expected = logits.log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)
    close(log_probs_from_logits(logits, targets), expected)
    half = log_probs_from_logits(logits.bfloat16(), targets)
    assert half.dtype == torch.float32
    close(half, logits.bfloat16().float().log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1))


def _naive(hidden, weight, targets, temperature):
    logits = hidden @ weight.T / temperature
    return log_probs_from_logits(logits, targets), entropy_from_logits(logits)


@pytest.mark.parametrize("chunk", [1, 8, 1024])
def test_selective_log_probs_matches_full_softmax_values_and_gradients(chunk):
    torch.manual_seed(17)
    n, h, v, temperature = 37, 6, 11, 0.7
    hidden = torch.randn(n, h, dtype=F64, requires_grad=True)
    weight = torch.randn(v, h, dtype=F64, requires_grad=True)
    targets = torch.randint(0, v, (n,))
    a, b = torch.randn(n, dtype=F64), torch.randn(n, dtype=F64)

    logp, ent = selective_log_probs(hidden, weight, targets, temperature, chunk=chunk, return_entropy=True)
    ref_logp, ref_ent = _naive(hidden, weight, targets, temperature)
    close(logp, ref_logp, tol=1e-9)
    close(ent, ref_ent, tol=1e-9)

    for objective, reference in (((a * logp).sum(), (a * ref_logp).sum()), ((b * ent).sum(), (b * ref_ent).sum())):
        grads = torch.autograd.grad(objective, (hidden, weight), retain_graph=True)
        ref_grads = torch.autograd.grad(reference, (hidden, weight), retain_graph=True)
        for g, r in zip(grads, ref_grads):
            close(g, r, tol=1e-9)
    both = torch.autograd.grad((a * logp + b * ent).sum(), (hidden, weight))
    ref_both = torch.autograd.grad((a * ref_logp + b * ref_ent).sum(), (hidden, weight))
    for g, r in zip(both, ref_both):
        close(g, r, tol=1e-9)


def test_selective_log_probs_gradcheck_and_shapes():
    torch.manual_seed(18)
    hidden = torch.randn(2, 3, 4, dtype=F64, requires_grad=True)  # [B, T, H]
    weight = torch.randn(5, 4, dtype=F64, requires_grad=True)
    targets = torch.randint(0, 5, (2, 3))
    both = lambda hd, w: selective_log_probs(hd, w, targets, 1.3, chunk=2, return_entropy=True)  # noqa: E731
    assert gradcheck(both, (hidden, weight), fast_mode=True)
    logp = selective_log_probs(hidden, weight, targets, chunk=4)
    assert logp.shape == (2, 3)
    close(logp, _naive(hidden, weight, targets, 1.0)[0], tol=1e-12)
    assert gradcheck(lambda hd, w: selective_log_probs(hd, w, targets, chunk=4), (hidden, weight), fast_mode=True)


def test_selective_log_probs_low_precision_returns_float32():
    torch.manual_seed(19)
    hidden, weight = torch.randn(9, 8).bfloat16(), torch.randn(13, 8).bfloat16()
    targets = torch.randint(0, 13, (9,))
    logp = selective_log_probs(hidden.requires_grad_(), weight.requires_grad_(), targets, chunk=4)
    assert logp.dtype == torch.float32
    close(logp, _naive(hidden.float(), weight.float(), targets, 1.0)[0], tol=2e-2)
    logp.sum().backward()
    assert hidden.grad.dtype == torch.bfloat16 and weight.grad.dtype == torch.bfloat16


def test_selective_log_probs_backward_runs_under_the_forwards_autocast():
    """Autograd runs backward outside autocast: without restoring it, a bf16 forward's three [chunk, V] products
    in backward ran in float32 (on an H200 the 0.5B update ran at 0.6x a naive HF step). Every matrix product of
    the backward must take the forward's autocast dtype, and the gradients stay those of the bf16 computation."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class MatmulDtypes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.dtypes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm):
                self.dtypes.append(tuple(a.dtype for a in args if isinstance(a, torch.Tensor)))
            return func(*args, **(kwargs or {}))

    torch.manual_seed(23)
    hidden, weight = torch.randn(10, 8, requires_grad=True), torch.randn(13, 8, requires_grad=True)
    targets = torch.randint(0, 13, (10,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logp = selective_log_probs(hidden, weight, targets, chunk=4)
        naive = torch.log_softmax((hidden @ weight.T).float(), -1).gather(-1, targets[:, None]).squeeze(-1)
    recorder = MatmulDtypes()
    with recorder:
        grads = torch.autograd.grad(logp.sum(), (hidden, weight))
    assert recorder.dtypes and all(d == (torch.bfloat16,) * len(d) for d in recorder.dtypes), recorder.dtypes
    expected = torch.autograd.grad(naive.sum(), (hidden, weight))
    for got, want in zip(grads, expected):
        assert got.dtype == torch.float32
        close(got, want, tol=3e-2)


# --------------------------------------------------------------------------------------------------
# Shaping and masks
# --------------------------------------------------------------------------------------------------


def test_overlong_penalty():
    lengths = torch.tensor([5, 6, 8, 10, 12])
    close(overlong_penalty(lengths, max_len=10, buffer_len=4), [0.0, 0.0, -0.5, -1.0, -1.0])
    close(overlong_penalty(lengths, max_len=10, buffer_len=4, factor=0.5), [0.0, 0.0, -0.25, -0.5, -0.5])


def test_nonzero_variance_group_mask():
    rewards = t([1.0, 0.5, 1.0, 0.5, 0.0, 2.0, 1.0])
    groups = torch.tensor([0, 2, 0, 2, 1, 3, 1])  # groups 0, 2 constant; 1 varied; 3 a singleton
    assert nonzero_variance_group_mask(rewards, groups).tolist() == [False, False, False, False, True, False, True]


def test_truncation_mask():
    mask = torch.ones(3, 4)
    out = truncation_mask(mask, torch.tensor([False, True, False]))
    assert out.dtype == mask.dtype and out.sum(-1).tolist() == [4.0, 0.0, 4.0]
