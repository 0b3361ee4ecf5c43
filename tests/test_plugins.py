"""Seed-paper plug-ins (agentenv/learn/plugins/): each formula against hand-computed values, finite
differences on random float64 tensors, and the identities of docs/anchors-learner.md Part 2."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch.autograd import gradcheck

from agentenv.errors import UserError
from agentenv.learn import plugins as P
from agentenv.learn.learner import LearnerConfig, episode_advantages, make_batch, token_logprobs, update
from agentenv.learn.plugin import StepContext, build_plugins
from agentenv.learn.plugins.amr_sd import teacher_logprobs
from agentenv.policies.hf import HFPolicy
from agentenv.learn.objectives import ppo_clip_loss, selective_log_probs
from agentenv.learn.plugins import (
    MTPHead,
    amr_sd_advantages,
    annealed_lambda,
    answer_ids,
    cag_from_counts,
    care_labels,
    care_select,
    cig_gate,
    control_token_outputs,
    corrective_advantage_gap,
    direction_weights,
    discounted_future_sum,
    divergence_weights,
    extrapolation_logits,
    extrapolation_trigger,
    fipo_weights,
    heuristic_scores,
    ih_grpo_c_loss,
    insert_hint,
    majority_vote,
    mtp_logprobs,
    nsr_rescue,
    nsr_uniforms,
    occ_coefficient,
    owpo_weights,
    ratchet,
)
from agentenv.learn.presets import PRESETS, learner_preset, preset_names
from agentenv.policies.tiny import tiny_model, tiny_tokenizer
from agentenv.learn.train import load_config, train

from exact import F64, close, t  # tests/exact.py


def central_difference(f, x, h=1e-6):
    """∂ sum(f(x)) / ∂x, one coordinate at a time."""
    grad = torch.zeros_like(x)
    flat, out = x.detach().clone().view(-1), grad.view(-1)
    for i in range(flat.numel()):
        saved = flat[i].item()
        flat[i] = saved + h
        up = float(f(flat.view_as(x)).sum())
        flat[i] = saved - h
        down = float(f(flat.view_as(x)).sum())
        flat[i] = saved
        out[i] = (up - down) / (2 * h)
    return grad


# --------------------------------------------------------------------------------------------------
# IH-GRPO
# --------------------------------------------------------------------------------------------------

V_TOKEN = 3


def _ih_setup(seed=0, n=12, vocab=7):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, vocab, generator=g, dtype=F64)
    targets = torch.randint(0, vocab, (n,), generator=g)
    targets[:3] = V_TOKEN  # some tokens are the control token itself
    loss = torch.randn(n, generator=g, dtype=F64)
    return logits, targets, loss


def _c_of_logits(logits, targets, loss):
    """c_t as the learner computes it, with hidden = the logits and an identity output layer."""
    logp = logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
    logp_v, z_v = control_token_outputs(logits, torch.eye(logits.shape[-1], dtype=F64), targets, logp, V_TOKEN)
    return ih_grpo_c_loss(logp_v, z_v, targets == V_TOKEN, loss)


def test_control_token_outputs_match_the_full_softmax_values_and_gradients():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 5, 6, generator=g, dtype=F64, requires_grad=True)
    weight = torch.randn(9, 6, generator=g, dtype=F64, requires_grad=True)
    targets = torch.randint(0, 9, (2, 5), generator=g)
    temperature = 0.7
    logp = selective_log_probs(hidden, weight, targets, temperature=temperature, chunk=3)
    logp_v, z_v = control_token_outputs(hidden, weight, targets, logp, V_TOKEN, temperature)
    logits = hidden @ weight.T / temperature
    close(logp_v, logits.log_softmax(-1)[..., V_TOKEN], tol=1e-12)
    close(z_v, logits[..., V_TOKEN], tol=1e-12)
    probe = torch.randn(2, 5, generator=g, dtype=F64)
    got = torch.autograd.grad((probe * logp_v + z_v).sum(), (hidden, weight))
    ref = torch.autograd.grad((probe * logits.log_softmax(-1)[..., V_TOKEN] + logits[..., V_TOKEN]).sum(), (hidden, weight))
    for a, b in zip(got, ref):
        close(a, b, tol=1e-10)


def _log_z_not_v(logits):
    """logZ¬v as a plain function of the logits: c with y = v and ℓ = 1 is (1 − p_v)·logZ¬v."""
    controls = torch.full((logits.shape[0],), V_TOKEN)
    return _c_of_logits(logits, controls, torch.ones(logits.shape[0], dtype=F64)) / (1 - logits.softmax(-1)[:, V_TOKEN])


def test_ih_grpo_c_loss_has_no_gradient_on_the_control_logit():
    # γ and ℓ are stop-gradded, so finite differences of c itself would see them move: take them of logZ¬v.
    logits, targets, loss = _ih_setup()
    fd = central_difference(_log_z_not_v, logits)
    close(fd[:, V_TOKEN], torch.zeros(len(targets)), tol=1e-6)  # ∂logZ¬v/∂z_v ≈ 0, hence ∂c/∂z_v ≈ 0
    p = logits.softmax(-1)
    close(fd, p / (1 - p[:, V_TOKEN : V_TOKEN + 1]) * (torch.arange(7) != V_TOKEN), tol=1e-6)
    z = logits.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(_c_of_logits(z, targets, loss).sum(), z)
    close(grad[:, V_TOKEN], torch.zeros(len(targets)), tol=1e-12)
    assert grad.abs().max() > 1e-2  # the other logits do move


def test_ih_grpo_c_loss_gradient_is_softmax_weighted_on_the_other_logits():
    logits, targets, loss = _ih_setup(seed=2)
    z = logits.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(_c_of_logits(z, targets, loss).sum(), z)
    p = logits.softmax(-1)
    p_v = p[:, V_TOKEN : V_TOKEN + 1]
    kappa = ((1 - p_v).squeeze(-1) - (targets != V_TOKEN).to(F64)) * loss  # −p_v·ℓ, or (1 − p_v)·ℓ on y = v
    expected = kappa[:, None] * p / (1 - p_v)
    expected[:, V_TOKEN] = 0
    close(grad, expected, tol=1e-10)
    close(grad, kappa[:, None] * central_difference(_log_z_not_v, logits), tol=1e-6)


def test_ih_grpo_c_loss_value_zero_loss_and_log_z_without_v():
    logits, targets, loss = _ih_setup(seed=3)
    assert torch.equal(_c_of_logits(logits, targets, torch.zeros_like(loss)), torch.zeros_like(loss))
    others = torch.cat([logits[:, :V_TOKEN], logits[:, V_TOKEN + 1 :]], -1)
    close(_log_z_not_v(logits), torch.logsumexp(others, -1), tol=1e-10)
    p_v = logits.softmax(-1)[:, V_TOKEN]
    c = _c_of_logits(logits, targets, loss)
    close(c, ((1 - p_v) - (targets != V_TOKEN).to(F64)) * torch.logsumexp(others, -1) * loss, tol=1e-10)


# --------------------------------------------------------------------------------------------------
# OWPO
# --------------------------------------------------------------------------------------------------


def test_owpo_weights_by_hand():
    logp = t([[-1.0, -1.0, -1.0, -0.5]])
    ref = t([[-0.5, -2.0, -2.0, -0.5]])
    adv = t([[1.0, 1.0, -1.0, -1.0]])
    # δ = sign(A)·(logp − ref) = [−0.5, 1.0, −1.0, 0]: inferior, superior, inferior (ahead on a bad token), even
    close(owpo_weights(logp, ref, adv, kappa=2.0, delta_max=0.8), [[2.0, 1.0, 2.6, 1.0]])


def test_owpo_invariants_on_random_tensors():
    g = torch.Generator().manual_seed(5)
    logp = torch.randn(4, 30, generator=g, dtype=F64, requires_grad=True)
    ref = torch.randn(4, 30, generator=g, dtype=F64)
    adv = torch.randn(4, 1, generator=g, dtype=F64)
    w = owpo_weights(logp, ref, adv, kappa=1.5, delta_max=1.0)
    assert not w.requires_grad and (w >= 1).all() and (w <= 2.5 + 1e-12).all()
    plain = torch.autograd.grad(ppo_clip_loss(logp - logp.detach(), adv)[0].sum(), logp)[0]
    weighted = torch.autograd.grad(ppo_clip_loss(logp - logp.detach(), adv * w)[0].sum(), logp)[0]
    assert (weighted * plain >= 0).all()  # never the opposite sign of the κ = 0 gradient
    close(weighted, plain * w, tol=1e-12)
    # monotone in how inferior the token is
    deviation = torch.linspace(0, 2, 9, dtype=F64)[None]
    w_mono = owpo_weights(-deviation, torch.zeros_like(deviation), torch.ones(1, 1, dtype=F64), 1.0, 5.0)
    assert (w_mono.diff() > 0).all()
    # π_ref = π_θ, or κ = 0: DAPO
    assert torch.equal(owpo_weights(logp, logp.detach(), adv, 1.5, 1.0), torch.ones_like(w))
    assert torch.equal(owpo_weights(logp, ref, adv, 0.0, 1.0), torch.ones_like(w))


def test_owpo_ratchet_makes_the_reference_the_policy():
    torch.manual_seed(0)
    policy, reference = torch.nn.Linear(4, 6), torch.nn.Linear(4, 6)
    x = torch.randn(3, 4)
    logp, ref_logp = policy(x).log_softmax(-1), reference(x).log_softmax(-1)
    assert (owpo_weights(logp, ref_logp, torch.ones(3, 1), 1.0, 1.0) > 1).any()
    ratchet(reference, policy)
    ref_logp = reference(x).log_softmax(-1)
    assert torch.equal(logp, ref_logp)  # δ = 0 everywhere after the ratchet
    assert torch.equal(owpo_weights(logp, ref_logp, torch.ones(3, 1), 1.0, 1.0), torch.ones(3, 6))


# --------------------------------------------------------------------------------------------------
# NSR
# --------------------------------------------------------------------------------------------------


def _nsr_setup(seed=6, shape=(6, 200)):
    g = torch.Generator().manual_seed(seed)
    log_ratio = (torch.rand(shape, generator=g, dtype=F64) * 1.2 - 0.6).requires_grad_(True)  # r in [0.55, 1.82]
    adv = torch.randn(shape[0], 1, generator=g, dtype=F64)
    return log_ratio, adv


def test_nsr_by_hand():
    log_ratio = torch.log(t([[1.3, 1.3, 1.5, 0.75, 0.7, 1.3]]))
    adv = t([[1.0, 1.0, 1.0, -1.0, -1.0, -1.0]])
    uniform = t([[0.1, 0.9, 0.1, 0.1, 0.1, 0.1]])
    loss, _ = ppo_clip_loss(log_ratio, adv, 0.2, 0.28)
    out, rescued = nsr_rescue(loss, log_ratio, adv, 0.2, 0.28, band=0.1, prob=0.5, uniform=uniform)
    # 1.3 is in (1.28, 1.408]: rescued if U < p; 1.5 is past the band; 0.75 is in [0.72, 0.8); 0.7 is
    # past it; with A < 0 a high ratio is never clipped.
    assert rescued.tolist() == [[True, False, False, True, False, False]]
    close(out, [[-1.3, -1.28, -1.28, 0.75, 0.8, 1.3]], tol=1e-12)


def test_nsr_zero_probability_is_dapo_and_nothing_outside_the_band_is_rescued():
    log_ratio, adv = _nsr_setup()
    loss, clipped = ppo_clip_loss(log_ratio, adv, 0.2, 0.28)
    uniform = nsr_uniforms(log_ratio.shape, seed=3, epoch=0)
    out, rescued = nsr_rescue(loss, log_ratio, adv, 0.2, 0.28, band=0.1, prob=0.0, uniform=uniform)
    assert torch.equal(out, loss) and not rescued.any()
    out, rescued = nsr_rescue(loss, log_ratio, adv, 0.2, 0.28, band=0.1, prob=1.0, uniform=uniform)
    r = log_ratio.exp()
    band = ((r > 1.28) & (r <= 1.28 * 1.1)) | ((r < 0.8) & (r >= 0.8 * 0.9))
    assert rescued.any() and not (rescued & ~band).any() and not (rescued & ~clipped).any()
    assert torch.equal(rescued, clipped & band)  # p = 1 rescues every clipped token in the band


def test_nsr_rescued_tokens_have_the_unclipped_gradient():
    log_ratio, adv = _nsr_setup(seed=7)
    loss, _ = ppo_clip_loss(log_ratio, adv, 0.2, 0.28)
    out, rescued = nsr_rescue(loss, log_ratio, adv, 0.2, 0.28, 0.1, 0.5, nsr_uniforms(log_ratio.shape, 1, 0))
    (grad,) = torch.autograd.grad(out.sum(), log_ratio)
    r = log_ratio.detach().exp()
    close(grad[rescued], (-adv * r).expand_as(r)[rescued], tol=1e-12)
    assert (grad[rescued] != 0).all()
    kept = (~rescued).nonzero()[:3]  # finite differences on a few tokens of each kind
    for i, j in torch.cat([rescued.nonzero()[:3], kept]).tolist():
        def f(x, i=i, j=j):
            lr = log_ratio.detach().clone()
            lr[i, j] = x[0]
            return nsr_rescue(ppo_clip_loss(lr, adv, 0.2, 0.28)[0], lr, adv, 0.2, 0.28, 0.1, 0.5,
                              nsr_uniforms(lr.shape, 1, 0))[0]
        close(central_difference(f, log_ratio.detach()[i, j : j + 1]), grad[i, j : j + 1], tol=1e-6)


def test_nsr_rescue_rate_and_determinism():
    log_ratio, adv = _nsr_setup(seed=8, shape=(64, 2000))
    loss, clipped = ppo_clip_loss(log_ratio, adv, 0.2, 0.28)
    r = log_ratio.exp()
    eligible = clipped & (((r > 1.28) & (r <= 1.28 * 1.1)) | ((r < 0.8) & (r >= 0.72)))
    u = nsr_uniforms(log_ratio.shape, seed=11, epoch=2)
    _, rescued = nsr_rescue(loss, log_ratio, adv, 0.2, 0.28, 0.1, 0.3, u)
    rate = rescued.sum() / eligible.sum()
    assert eligible.sum() > 5000 and abs(float(rate) - 0.3) < 0.02
    assert torch.equal(u, nsr_uniforms(log_ratio.shape, seed=11, epoch=2))
    assert not torch.equal(u, nsr_uniforms(log_ratio.shape, seed=11, epoch=3))
    assert not torch.equal(u, nsr_uniforms(log_ratio.shape, seed=12, epoch=2))


# --------------------------------------------------------------------------------------------------
# FIPO
# --------------------------------------------------------------------------------------------------


def test_fipo_reference_vector():
    gamma = 2 ** (-1 / 32)
    close(gamma, 0.978572, tol=1e-6)
    d = t([[0.1, -0.05, 0.0, 0.2]])
    close(discounted_future_sum(d, gamma), [[0.238488, 0.141521, 0.195714, 0.2]], tol=1e-6)
    f = fipo_weights(d, torch.zeros_like(d), torch.ones(1, 1, dtype=F64), torch.ones_like(d))
    close(f, [[1.2, 1.152024, 1.2, 1.2]], tol=1e-6)


@pytest.mark.parametrize("chunk", [1, 3, 7, 128])
def test_discounted_future_sum_matches_the_recurrence(chunk):
    g = torch.Generator().manual_seed(9)
    x = torch.randn(3, 23, generator=g, dtype=F64)
    expected = torch.zeros_like(x)
    running = torch.zeros(3, dtype=F64)
    for k in reversed(range(23)):
        running = x[:, k] + 0.9 * running
        expected[:, k] = running
    close(discounted_future_sum(x, 0.9, chunk=chunk), expected, tol=1e-12)


def test_fipo_on_policy_is_a_no_op_and_off_policy_is_not():
    g = torch.Generator().manual_seed(10)
    logp = torch.randn(4, 50, generator=g, dtype=F64, requires_grad=True)
    adv, mask = torch.randn(4, 1, generator=g, dtype=F64), torch.ones(4, 50, dtype=F64)
    assert torch.equal(fipo_weights(logp, logp.detach(), adv, mask), torch.ones(4, 50, dtype=F64))
    old = logp.detach() + 0.05 * torch.randn(4, 50, generator=g, dtype=F64)
    f = fipo_weights(logp, old, adv, mask)
    assert not f.requires_grad and (f != 1).any() and (f >= 0.8).all() and (f <= 1.2).all()
    close(f, torch.exp(discounted_future_sum(logp.detach() - old, 2 ** (-1 / 32))).clamp(0.8, 1.2), tol=1e-12)


def test_fipo_clip_high_only_safety_cap_mask_and_ratio_filter():
    logp, old = t([[0.0, -0.5, 2.0, 0.0]]), t([[0.0, 0.0, 0.0, 0.0]])
    mask = t([[1.0, 1.0, 1.0, 0.0]])
    # d = [0, −0.5, 2, 0·mask]; r = [1, e^−0.5, e^2 ≈ 7.39, 1]
    f = fipo_weights(logp, old, t([[1.0]]), mask, decay_rate=1.0, clip_high_only=True, max_ratio=None)
    close(f, [[1.2, 1.2, 1.2, 1.0]])  # γ = ½: F = [0.25, 0.5, 2, 0], exp(F) clipped to [1, 1.2]
    capped = fipo_weights(logp, old, t([[-1.0]]), mask, decay_rate=1.0, safety=4.0, max_ratio=None)
    assert capped[0, 2] == 1.0 and capped[0, 1] == 1.2  # r = 7.39 > 4 with A < 0: capped to [0.8, 1]
    filtered = fipo_weights(logp, old, t([[1.0]]), mask, decay_rate=1.0, max_ratio=5.0)
    close(filtered, [[0.8, 0.8, 1.0, 1.0]])  # the r > 5 token is left out of d: F = [−0.25, −0.5, 0, 0]


# --------------------------------------------------------------------------------------------------
# Δlog p direction
# --------------------------------------------------------------------------------------------------


def test_direction_weights_by_hand_and_masks():
    old = torch.log(t([[0.01, 0.5, 0.99]]))
    close(direction_weights(old, t([[1.0]]), c=0.2), [[1.198, 1.1, 1.002]])
    adv = t([[1.0, -1.0, 1.0]])
    close(direction_weights(old, adv, 0.2, "positive"), [[1.198, 1.0, 1.002]])
    close(direction_weights(old, adv, 0.2, "negative"), [[1.0, 1.1, 1.0]])
    assert torch.equal(direction_weights(old, adv, 0.0), torch.ones(1, 3, dtype=F64))
    with pytest.raises(ValueError):
        direction_weights(old, adv, 0.2, "both")


def test_extrapolation_logits_and_trigger():
    g = torch.Generator().manual_seed(12)
    base, rl = torch.randn(3, 40, generator=g), torch.randn(3, 40, generator=g)
    out = extrapolation_logits(base, rl, alpha=0.1, top_k=5)
    top = base.topk(5, -1).indices
    kept = torch.isfinite(out)
    assert kept.sum(-1).tolist() == [5, 5, 5] and kept.gather(-1, top).all()
    lb, lr = base.log_softmax(-1), rl.log_softmax(-1)
    close(out.gather(-1, top), (lr + 0.1 * (lr - lb)).gather(-1, top), tol=1e-5)
    close(extrapolation_logits(base, rl, 0.0, 40), lr, tol=1e-6)  # α = 0, all tokens: pure replacement
    tokens = torch.tensor([0, 1, 2])
    diff = (lr - lb).gather(-1, tokens[:, None]).squeeze(-1)
    tau = float(diff.median())
    assert extrapolation_trigger(base, rl, tokens, tau).tolist() == (diff <= tau).tolist()


# --------------------------------------------------------------------------------------------------
# Divergence-weighted advantage
# --------------------------------------------------------------------------------------------------


def _logp_with_k3(kl):
    """log π_θ − log π_old = Δ with k3(Δ) = e^Δ − 1 − Δ = kl, Δ ≥ 0 (Newton)."""
    delta = torch.sqrt(2 * kl)
    for _ in range(50):
        delta = delta - (delta.exp() - 1 - delta - kl) / (delta.exp() - 1).clamp(min=1e-30)
    return delta


def test_divergence_weights_reference_values():
    kl = t([[0.0, 0.05, 0.5]])
    logp = _logp_with_k3(kl)
    close(divergence_weights(logp, torch.zeros_like(logp), 0.5, 10.0), [[1.0, 1.061230, 1.246654]])
    close(divergence_weights(logp, torch.zeros_like(logp), 0.5, -10.0), [[1.0, 0.938770, 0.753346]])


def test_divergence_weights_are_one_on_policy_and_detached():
    g = torch.Generator().manual_seed(13)
    logp = torch.randn(3, 20, generator=g, dtype=F64, requires_grad=True)
    assert torch.equal(divergence_weights(logp, logp.detach()), torch.ones(3, 20, dtype=F64))
    w = divergence_weights(logp, logp.detach() + 0.1 * torch.randn(3, 20, generator=g, dtype=F64))
    assert not w.requires_grad and (w > 1).all() and (w < 1.25).all()


# --------------------------------------------------------------------------------------------------
# OCC
# --------------------------------------------------------------------------------------------------


def test_occ_coefficient_identities():
    g = torch.Generator().manual_seed(14)
    old = torch.randn(3, 10, generator=g, dtype=F64)
    step = torch.rand(3, 10, generator=g, dtype=F64) + 0.5  # |a| ≥ 0.5, so 1e−8 is below 1e−7 relative
    mask = torch.ones(3, 10, dtype=F64)
    close(occ_coefficient(old + step, old + step, old, mask, scale=0.1, num_heads=2), 0.05, tol=1e-7)  # a = b
    close(occ_coefficient(old + step, old, old, mask), 0.0, tol=0)  # b = 0
    assert occ_coefficient(old + step, old - step, old, mask) < 0  # sign follows corr(a, b)
    # hand value with a mask: a = [1, 2, pad], b = [0.5, −2, 9] -> mean(0.5, −1) = −0.25
    got = occ_coefficient(t([[1.0, 2.0, 3.0]]), t([[0.5, -2.0, 9.0]]), t([[0.0, 0.0, 0.0]]), t([[1.0, 1.0, 0.0]]), 1.0)
    close(got, -0.25, tol=1e-7)


def test_mtp_logprobs_alignment_values_and_gradients():
    torch.manual_seed(15)
    head = MTPHead(8).double()
    embed = torch.nn.Embedding(11, 8).double()
    weight = torch.randn(11, 8, dtype=F64, requires_grad=True)
    hidden = torch.randn(2, 6, 8, dtype=F64, requires_grad=True)
    targets = torch.randint(0, 11, (2, 6))
    logq = mtp_logprobs(head, hidden, embed, weight, targets, temperature=0.8, chunk=4)
    assert logq.shape == (2, 6) and torch.equal(logq[:, 0], torch.zeros(2, dtype=F64))
    for s in range(1, 6):  # column s: from h_{s−1} and e(targets[s−1]), the token targets[s]
        out = head(hidden[:, s - 1], embed(targets[:, s - 1]))
        ref = (out @ weight.T / 0.8).log_softmax(-1).gather(-1, targets[:, s : s + 1]).squeeze(-1)
        close(logq[:, s], ref, tol=1e-12)
    assert gradcheck(lambda h: mtp_logprobs(head, h, embed, weight, targets, 0.8, 4), (hidden,))
    grads = torch.autograd.grad(logq.sum(), [weight, *head.parameters()])
    assert all(gr.abs().sum() > 0 for gr in grads)


# --------------------------------------------------------------------------------------------------
# AMR-SD
# --------------------------------------------------------------------------------------------------


def test_amr_sd_by_hand():
    adv = t([[1.0], [-2.0]])
    student = t([[-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]])
    teacher = t([[0.0, -0.9, -2.0], [-3.0, -0.5, -1.2]])  # CIG = [[1, 0.1, −1], [−2, 0.5, −0.2]]
    gate = cig_gate(teacher - student, adv, tau_pos=0.2, tau_neg=0.5)
    close(gate, [[0.8, 0.0, 0.0], [1.5, 0.0, 0.0]], tol=1e-12)
    close(amr_sd_advantages(adv, teacher, student, 0.5, 0.2, 0.5), [[1.4, 1.0, 1.0], [-2.75, -2.0, -2.0]])
    close(amr_sd_advantages(adv, teacher, student, 0.5, 0.2, 0.5, "mul"), [[1.4, 1.0, 1.0], [-3.5, -2.0, -2.0]])


def test_amr_sd_identities_on_random_tensors():
    g = torch.Generator().manual_seed(16)
    adv = torch.randn(8, 1, generator=g, dtype=F64)
    adv[0] = 0.0
    student = torch.randn(8, 30, generator=g, dtype=F64, requires_grad=True)
    teacher = student.detach() + torch.randn(8, 30, generator=g, dtype=F64)
    for mode in ("add", "mul"):
        assert torch.equal(amr_sd_advantages(adv, teacher, student, 0.0, 0.2, 0.3, mode), adv.expand(8, 30))
        out = amr_sd_advantages(adv, teacher, student, 0.7, 0.2, 0.3, mode)
        assert torch.equal(torch.sign(out), torch.sign(adv).expand_as(out)) and not out.requires_grad
    cig = teacher - student.detach()
    gate = cig_gate(cig, adv, 0.2, 0.3)
    inside = torch.where(adv > 0, cig <= 0.2, -cig <= 0.3)
    assert (gate[inside] == 0).all() and (gate[~inside] > 0).all()  # sparse: zero inside the threshold
    assert annealed_lambda(0, 0.5, 10) == 0.5 and annealed_lambda(5, 0.5, 10) == 0.25
    assert annealed_lambda(20, 0.5, 10) == 0.0 and annealed_lambda(20, 0.5, 0) == 0.5


def test_insert_hint_keeps_every_target_aligned():
    input_ids = torch.tensor([[5, 6, 7, 8, 9, 0], [5, 6, 7, 8, 9, 10]])
    attention = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    loss_mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 0, 1]], dtype=torch.float32)  # first generated: 3, 2
    ids, attn, column = insert_hint(input_ids, attention, loss_mask, [[77, 78], []], pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 77, 78, 8, 9, 0], [5, 6, 7, 8, 9, 10, 0, 0]]
    assert attn.tolist() == [[1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 0, 0]]
    for b in range(2):
        for col in range(5):
            if attention[b, col + 1] and col + 1 >= (3 if b == 0 else 2):
                assert ids[b, column[b, col] + 1] == input_ids[b, col + 1]  # the same target token
    assert column[1].tolist() == [0, 1, 2, 3, 4]


# --------------------------------------------------------------------------------------------------
# CARE
# --------------------------------------------------------------------------------------------------

CAG_TABLE = {  # docs/anchors-learner.md §2.3, n = 8: (x, y) -> CAG
    (1, 0): 2.8284, (1, 1): 4.2762, (2, 1): 4.4149, (2, 2): 4.6188, (3, 1): 4.5480, (3, 2): 4.8120,
    (3, 3): 5.0596, (4, 1): 4.6955, (4, 2): 5.0237, (4, 3): 5.3286, (4, 4): 5.6569, (5, 1): 4.8793,
    (5, 2): 5.2845, (5, 3): 5.6569, (6, 1): 5.1453, (6, 2): 5.6569, (7, 1): 5.6569, (8, 0): 0.0,
}


def test_cag_closed_form_reproduces_the_table():
    xs, ys = zip(*CAG_TABLE)
    close(cag_from_counts(8, torch.tensor(xs), torch.tensor(ys)), list(CAG_TABLE.values()), tol=5e-5)


@pytest.mark.parametrize("x,y", sorted(CAG_TABLE))
def test_cag_closed_form_equals_the_vector_definition(x, y):
    # 8 answers: x of the wrong majority (id 0), y correct (id 1), the rest all distinct
    answers = [0] * x + [1] * y + list(range(2, 2 + 8 - x - y))
    groups = torch.zeros(8, dtype=torch.long)
    label, size = majority_vote(torch.tensor(answers), groups)
    assert label[0] == 0 and size[0] == x  # ties (x = 1) go to the first answer
    gt = t([float(a == 1) for a in answers])
    pseudo = t([float(a == answers[0]) for a in answers])
    close(corrective_advantage_gap(gt, pseudo, groups), [float(cag_from_counts(8, x, y))] * 8, tol=1e-12)


def test_cag_is_zero_when_the_majority_is_right():
    answers = torch.tensor([3, 3, 3, 1, 2, 3, 4, 1])
    label, _ = majority_vote(answers, torch.zeros(8, dtype=torch.long))
    pseudo = (answers == label).to(F64)
    close(corrective_advantage_gap(pseudo.clone(), pseudo, torch.zeros(8, dtype=torch.long)), [0.0] * 8)


def test_answer_ids_and_majority_vote_per_group():
    ids = answer_ids(["42", "42.0", " 7 ", None, "forty", "Forty", "", "1/2", "0.5"])
    assert ids.tolist() == [0, 0, 1, -1, 2, 2, -1, 3, 3]
    answers = torch.tensor([5, 6, 6, -1, -1, -1, 9, 8])
    groups = torch.tensor([1, 1, 1, 2, 2, 2, 7, 7])
    label, size = majority_vote(answers, groups)
    assert label.tolist() == [6, 6, 6, -1, -1, -1, 9, 9] and size.tolist() == [2, 2, 2, 0, 0, 0, 1, 1]


def test_heuristic_scores_and_selection_by_hand():
    answers = torch.tensor([1, 1, 1, 1, 2, 2, 3, 4] + [5] * 8 + [6, 7, 7, 7, 7, 7, 7, 7])
    groups = torch.arange(3).repeat_interleave(8)
    p_majority, score = heuristic_scores(answers, groups)
    close(p_majority[[0, 8, 16]], [0.5, 1.0, 7 / 8])
    present = torch.tensor([0.0, 1.0, 2.0])  # group 0: non-majority clusters of sizes 2, 1, 1
    close(score[0], cag_from_counts(8, torch.full((3,), 4.0), present).mean(), tol=1e-12)
    close(score[8], 0.0)  # unanimous: no possible gap
    query, gated = care_select(t([3.0, 0.0, 5.0, 4.0]), t([0.5, 1.0, 0.9, 0.2]), top_pct=0.25, prob_gate=0.5, gate=True)
    assert gated.tolist() == [False, True, True, False] and query.tolist() == [False, False, False, True]
    query, gated = care_select(t([3.0, 0.0, 5.0, 4.0]), t([0.5, 1.0, 0.9, 0.2]), 0.5, 0.5, gate=False)
    assert not gated.any() and query.tolist() == [False, False, True, True]
    query, _ = care_select(torch.arange(10, dtype=F64), torch.zeros(10, dtype=F64), 0.7, 0.0, gate=False)
    assert query.sum() == 7  # ⌈0.7·10⌉ although 0.7·10 = 7.000000000000001 in floating point


def test_care_labels_rewards_and_coefficients():
    answers = torch.tensor([1, 1, 1, 2] + [3, 3, 4, -1] + [5, 5, 5, 5])
    groups = torch.arange(3).repeat_interleave(4)
    gt = t([0, 0, 0, 1] + [0, 0, 1, 0] + [1, 1, 1, 1])
    rewards, coef, queried = care_labels(gt, answers, groups, acquisition="heuristic", top_pct=0.3, prob_gate=0.3, gate=True)
    # P(maj) = [3/4, 1/2, 1]: group 2 is gated. s = mean CAG(4, x, y) over y: group 0 (x = 3, y ∈ {0, 1})
    # (2 + 4)/2 = 3, group 1 (x = 2, y ∈ {0, 1}) (2 + 3.5523)/2 → group 0 gets the one label
    close(heuristic_scores(answers, groups)[1][[0, 4]], [3.0, (2 + math.sqrt(8 + 8 / math.sqrt(3))) / 2])
    assert queried.tolist() == [True] * 4 + [False] * 8
    close(rewards, [0, 0, 0, 1] + [1, 1, 0, 0] + [1, 1, 1, 1])
    close(coef, [1.0] * 4 + [0.0] * 4 + [0.0] * 4)  # group 2 is gated but unanimous: s = 0
    everything, coef, queried = care_labels(gt, answers, groups, acquisition="heuristic", top_pct=1.0, gate=False)
    assert torch.equal(everything, gt) and torch.equal(coef, torch.ones(12, dtype=F64)) and queried.all()
    _, coef, queried = care_labels(gt, answers, groups, acquisition="oracle", top_pct=0.3)
    # true gaps: group 0 A(ps) = −A(gt), so 2·‖A(gt)‖ = 4; group 1 3.5523; group 2 0
    close(corrective_advantage_gap(gt, t([1, 1, 1, 0, 1, 1, 0, 0, 1, 1, 1, 1]), groups)[[0, 4, 8]],
          [4.0, math.sqrt(8 + 8 / math.sqrt(3)), 0.0])
    assert queried.tolist() == [True] * 4 + [False] * 8
    assert torch.equal(coef, torch.ones(12, dtype=F64))


# --------------------------------------------------------------------------------------------------
# Through the learner: each plug-in changes the update when on, and is exactly plain GRPO when off
# --------------------------------------------------------------------------------------------------

CONTROL_ID = 77
# Each plug-in: the knobs that make it act clearly, and the neutral knobs under which it must be exactly GRPO.
ACTIVE = {
    "hrr": {}, "care": {}, "amr_sd": {}, "divergence": {"alpha": 50.0}, "direction": {"c": 0.5}, "fipo": {}, "owpo": {},
    "nsr": {"prob": 1.0}, "ih_grpo": {"lam": 1.0}, "occ": {"scale": 1.0},
}
NEUTRAL = {
    "hrr": {"beta": 0.0}, "care": {"top_pct": 1.0}, "amr_sd": {"lam": 0.0}, "divergence": {"scale": 0.0},
    "direction": {"c": 0.0}, "fipo": {"eps": 0.0}, "owpo": {"kappa": 0.0}, "nsr": {"prob": 0.0}, "ih_grpo": {"lam": 0.0},
    "occ": {"scale": 0.0},
}
# No grad-norm clipping: OCC's MTP head adds (zero) gradients to the norm, whose sum may round differently.
OFF_POLICY = dict(ppo_epochs=2, mini_batches=4, micro_batch_size=3, eps_low=0.05, eps_high=0.05, max_grad_norm=1e9)


def _episodes():
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(12):
        length = 8 + int(torch.randint(0, 10, (1,), generator=g))
        ids = torch.randint(10, 500, (length,), generator=g).tolist()
        ids[5] = CONTROL_ID  # a generated control token in every row
        # group i // 4; the majority answer "1" of group 0 is wrong, the lone "2" is right
        answer = ["1", "1", "1", "2", "3", "3", "4", "5", "6", "6", "6", "6"][i]
        reward = float(answer in ("2", "3", "6")) if i < 8 else float(i % 2)
        sample = SimpleNamespace(token_ids=ids, loss_mask=[0] * 3 + [1] * (length - 3), old_logprobs=[0.0] * length,
                                 control_mask=[0] * 4 + [1] * 3 + [0] * (length - 7))
        messages = [{"role": "assistant", "content": f"<answer>{answer}</answer>"}]
        split = 3 + (length - 3) // 2  # two turns with different compression quality (HRR's Q_com)
        turns = [{"sample": 0, "start": 3, "end": split, "compression": {"q_com": 0.2 + 0.05 * i}},
                 {"sample": 0, "start": split, "end": length, "compression": {"q_com": 0.9 - 0.03 * i}}]
        out.append(SimpleNamespace(group_id=i // 4, reward=reward, samples=[sample], truncated=False, messages=messages,
                                   turns=turns, success=reward > 0.5))
    return out


def _run(plugins, **overrides):
    """Main-model parameters after one update (training step 3) of a fixed tiny model on a fixed batch;
    `plugins`: names (each at its `ACTIVE`-free defaults) or name -> settings."""
    settings = {name: dict(plugins[name]) if isinstance(plugins, dict) else {} for name in plugins}
    if "ih_grpo" in settings:
        settings["ih_grpo"]["token_id"] = CONTROL_ID
    cfg = LearnerConfig(plugins=settings, **{**OFF_POLICY, **overrides})
    model = tiny_model("tiny", seed=21)
    active = build_plugins(cfg)
    for plugin in active:
        plugin.setup(model, tiny_tokenizer(), group_size=4, seed=0)
    episodes = _episodes()
    ref = tiny_model("tiny", seed=22) if "owpo" in settings else None  # π_ref ≠ π_θ
    policy = HFPolicy(model, tiny_tokenizer(), max_new_tokens=6, seed=0) if "amr_sd" in settings else None  # writes the hints
    generator = torch.Generator().manual_seed(5)
    ctx = StepContext(cfg, 3, model=model, policy=policy, ref_model=ref, generator=generator)
    batch = make_batch(episodes, episode_advantages(episodes, cfg, plugins=active, ctx=ctx), pad_id=0, plugins=active, ctx=ctx)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    stats = update(model, optimizer, batch, cfg, plugins=active, ref_model=ref, generator=generator, step=3, ctx=ctx)
    params = torch.cat([p.detach().flatten() for name, p in model.named_parameters() if not name.startswith("mtp_head")])
    return params, stats


@pytest.fixture(scope="module")
def plain():
    return _run([])[0]


@pytest.mark.parametrize("name", P.PLUGINS)
def test_plugin_changes_the_update(name, plain):
    params, _ = _run({name: ACTIVE[name]})
    assert (params - plain).abs().max() > 1e-6


@pytest.mark.parametrize("name", P.PLUGINS)
def test_plugin_at_neutral_settings_is_exactly_grpo(name, plain):
    params, _ = _run({name: NEUTRAL[name]})
    assert torch.equal(params, plain)


@pytest.mark.parametrize("name", [p.name for p in P.BUILTIN if p.off_policy])
def test_off_policy_plugins_are_no_ops_on_a_fully_on_policy_update(name):
    on_policy = dict(ppo_epochs=1, mini_batches=1)
    plain_params, _ = _run([], **on_policy)
    params, _ = _run({name: ACTIVE[name]}, **on_policy)
    assert torch.equal(params, plain_params)


def test_nsr_rescues_tokens_and_reports_a_lower_clip_fraction():
    _, plain_stats = _run([])
    _, stats = _run({"nsr": {"prob": 1.0, "band": 1.0}})
    assert plain_stats["clip_frac"] > 0 and stats["clip_frac"] < plain_stats["clip_frac"]


def test_occ_reports_its_coefficient():
    _, stats = _run(["occ"])
    assert stats["occ_coef"] != 0.0


def test_update_rejects_unknown_plugins_and_missing_inputs():
    with pytest.raises(UserError, match="unknown plug-in .*'fpio' \\(did you mean 'fipo'"):
        _run(["fipo", "fpio"])
    with pytest.raises(ValueError, match="ref_model"):
        episodes = _episodes()
        model = tiny_model("tiny", seed=21)
        update(model, torch.optim.SGD(model.parameters(), lr=0.1), make_batch(episodes, torch.zeros(12), 0),
               LearnerConfig(plugins=["owpo"]))


def test_teacher_logprobs_line_up_with_the_student():
    episodes = _episodes()
    model = tiny_model("tiny", seed=23)
    batch = make_batch(episodes, torch.zeros(12), pad_id=0)
    cfg = LearnerConfig(micro_batch_size=5)
    student, _ = token_logprobs(model, batch)
    mask = batch.loss_mask.bool()
    no_hint = teacher_logprobs(model, batch, [[] for _ in range(12)], cfg)
    close(no_hint[mask], student.detach()[mask], tol=1e-5)
    hinted = teacher_logprobs(model, batch, [[300, 301]] * 12, cfg)
    row = batch.input_ids[4, : int(batch.attention_mask[4].sum())].tolist()
    ids = torch.tensor([row[:3] + [300, 301] + row[3:]])  # the first generated token is token 3
    manual = model(input_ids=ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    close(hinted[4, 2 : len(row) - 1], manual[4:].detach(), tol=1e-5)


def test_presets_load_from_the_train_config(tmp_path):
    cfg = load_config(None, ["--learner.preset=fipo", "--learner.lr=1e-4"])
    assert list(cfg.learner.plugins) == ["fipo"] and cfg.learner.mini_batches == 4 and cfg.learner.eps_high == 0.28
    cfg = load_config(None, ["--learner.plugins=fipo,owpo", "--learner.plugins.owpo.kappa=2"])
    assert list(cfg.learner.plugins) == ["fipo", "owpo"] and cfg.learner.plugins["owpo"].kappa == 2.0
    assert list(load_config(None, ["--learner.plugins=[nsr]"]).learner.plugins) == ["nsr"]
    assert load_config(None, ["--learner.plugins="]).learner.plugins == {}
    path = tmp_path / "plugins.yaml"
    path.write_text("learner:\n  plugins:\n    owpo: {kappa: 3}\n    hrr: {}\n")
    assert {k: type(v).__name__ for k, v in load_config(str(path)).learner.plugins.items()} == {"hrr": "HrrConfig", "owpo": "OwpoConfig"}
    path = tmp_path / "run.yaml"
    path.write_text("learner:\n  preset: gspo\n  eps_high: 5.0e-4\n")
    cfg = load_config(str(path))
    assert cfg.learner.ratio_level == "sequence" and cfg.learner.eps_low == 3e-4 and cfg.learner.eps_high == 5e-4
    cfg = load_config(None, ["--learner.preset=cispo", "--learner.preset=dr_grpo"])
    assert cfg.learner.loss == "ppo_clip" and cfg.learner.scale_rewards == "none"  # a preset sets every algorithm field
    with pytest.raises(UserError):
        load_config(None, ["--learner.preset=grpo2"])
    variants = {name for plugin in P.BUILTIN for name in plugin.presets}
    assert set(P.PLUGINS) | set(PRESETS) | variants == set(preset_names()) and set(PRESETS) == {"grpo", "dr_grpo", "dapo", "gspo", "cispo"}
    assert {"care_pseudo_label", "care_random", "nsr_decay", "occ_detach", "occ_ce", "occ_fixed", "owpo_kl"} <= variants
    preset = learner_preset("dapo")
    preset["plugins"].append("nsr")
    assert PRESETS["dapo"]["plugins"] == []  # callers get copies


def test_train_runs_and_resumes_with_every_plugin(tmp_path):
    args = ["--checkpoint_every=1", "--sft_steps=0", "--eval_tasks=0", "--tasks_per_step=2", "--group_size=2",
            "--max_new_tokens=12", "--learner.micro_batch_size=4", "--learner.mini_batches=2",
            "--env_kwargs.execution=delayed", "--env_kwargs.budget_tokens=4096",  # hrr makes the env compress: it needs a budget
            f"--out_dir={tmp_path}", "--learner.plugins=" + ",".join(P.PLUGINS)]
    train(load_config(None, ["--steps=1", *args]), log=lambda message: None)
    cfg = load_config(None, ["--steps=2", *args])
    train(cfg, resume=True, log=lambda message: None)
    assert cfg.learner.plugins["ih_grpo"].token_id == tiny_tokenizer().convert_tokens_to_ids("<execute/>")
    state = torch.load(tmp_path / "checkpoint" / "state.pt", weights_only=False)
    assert state["step"] == 2 and "ref_model" in state["extra"] and any(k.startswith("mtp_head.") for k in state["model"])
