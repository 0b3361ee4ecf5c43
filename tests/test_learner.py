"""The learner's stages on a tiny random Qwen2: log-probs, batch alignment, exact gradient accumulation,
on/off-policy ratios, and that an update moves probability the way the advantages say."""

import copy
from types import SimpleNamespace

import pytest
import torch

from agentenv.learn.learner import (Batch, LearnerConfig, episode_advantages, make_batch, micro_batch_rows, token_budget, sft_update,
                                    token_logprobs, update)
from agentenv.policies.tiny import tiny_model


def episode(group_id, reward, ids, first_generated, truncated=False):
    n = len(ids)
    mask = [0] * first_generated + [1] * (n - first_generated)
    sample = SimpleNamespace(token_ids=ids, loss_mask=mask, old_logprobs=[0.0] * n, control_mask=[0] * n)
    return SimpleNamespace(group_id=group_id, reward=reward, samples=[sample], truncated=truncated)


@pytest.fixture()
def episodes():
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(8):
        length = 6 + int(torch.randint(0, 10, (1,), generator=g))
        ids = torch.randint(10, 500, (length,), generator=g).tolist()
        out.append(episode(i // 4, float(i % 2), ids, first_generated=3))
    return out


def test_token_logprobs_match_full_softmax(episodes):
    model = tiny_model("tiny", seed=1)
    batch = make_batch(episodes, torch.zeros(len(episodes)), pad_id=0)
    logp, entropy = token_logprobs(model, batch, temperature=0.7, chunk=5, with_entropy=True)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float() / 0.7
    reference = logits.log_softmax(-1).gather(-1, batch.targets[..., None]).squeeze(-1)
    valid = batch.attention_mask[:, 1:].bool()
    assert torch.allclose(logp[valid], reference[valid], atol=1e-5)
    ref_entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
    assert torch.allclose(entropy[valid], ref_entropy[valid], atol=1e-4)


def test_make_batch_shifts_targets_and_masks(episodes):
    adv = torch.arange(len(episodes), dtype=torch.float32)
    batch = make_batch(episodes, adv, pad_id=0)
    ids = episodes[2].samples[0].token_ids
    assert batch.targets[2, : len(ids) - 1].tolist() == ids[1:]
    assert batch.loss_mask[2, : len(ids) - 1].tolist() == [0.0, 0.0] + [1.0] * (len(ids) - 3)
    assert batch.loss_mask[2, len(ids) - 1 :].sum() == 0  # padding never counts
    assert batch.advantages.tolist() == adv.tolist()


def test_episode_advantages_grpo_and_masks(episodes):
    cfg = LearnerConfig()
    adv = episode_advantages(episodes, cfg)
    assert torch.allclose(adv[:4], torch.tensor([-0.866025, 0.866025, -0.866025, 0.866025]), atol=1e-5)
    flat = [episode(0, 1.0, [1, 2, 3], 1), episode(0, 1.0, [1, 2, 3], 1), episode(1, 0.0, [1, 2], 1), episode(1, 1.0, [1, 2], 1, truncated=True)]
    adv = episode_advantages(flat, LearnerConfig(filter_zero_variance=True, mask_truncated=True))
    assert adv[:2].tolist() == [0.0, 0.0] and adv[3] == 0.0 and adv[2] < 0


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
def test_gradient_accumulation_is_exact(episodes, aggregation):
    base = tiny_model("tiny", seed=2)
    adv = episode_advantages(episodes, LearnerConfig())
    params = []
    for micro, tokens in ((8, 0), (3, 0), (8, 20)):  # rows only; fewer rows; a token budget cutting unevenly
        model = copy.deepcopy(base)
        cfg = LearnerConfig(aggregation=aggregation, micro_batch_size=micro, micro_batch_tokens=tokens, max_grad_norm=1e9)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        update(model, optimizer, make_batch(episodes, adv, pad_id=0), cfg)
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    moved = (params[0] - torch.cat([p.flatten() for p in base.parameters()])).abs().max()
    assert moved > 1e-4
    assert torch.allclose(params[0], params[1], atol=1e-6) and torch.allclose(params[0], params[2], atol=1e-6)


def test_micro_batches_keep_order_and_bound_rows_and_padded_tokens():
    lengths = [5, 5, 9, 3, 3, 3, 12, 2]
    ids = torch.ones(len(lengths), 12, dtype=torch.long)
    mask = (torch.arange(12)[None] < torch.tensor(lengths)[:, None]).long()
    batch = Batch(ids, mask, ids[:, 1:], mask[:, 1:].float(), torch.zeros(len(lengths), 11), torch.zeros(len(lengths)))
    runs = micro_batch_rows(batch, torch.arange(len(lengths)), LearnerConfig(micro_batch_size=3, micro_batch_tokens=16))
    # [5,5]: 2·5 = 10; adding 9 would pad to 3·9 = 27 > 16. [9]; [3,3,3] hits 3 rows; [12] alone (longer than the
    # budget, so it runs by itself); [2].
    assert [r.tolist() for r in runs] == [[0, 1], [2], [3, 4, 5], [6], [7]]
    runs = micro_batch_rows(batch, torch.tensor([7, 3, 4]), LearnerConfig(micro_batch_size=8, micro_batch_tokens=0))
    assert [r.tolist() for r in runs] == [[7, 3, 4]]


def test_micro_batch_token_budget_defaults_by_device():
    """Unset, the budget is 4,096 padded tokens on CPU and 16,384 on a GPU (where 4,096 ran at 0.45× the
    tokens/s, docs/vllm.md); a set value holds on both."""
    assert token_budget(LearnerConfig(), torch.device("cpu")) == 4096
    assert token_budget(LearnerConfig(), torch.device("cuda")) == 16384
    assert token_budget(LearnerConfig(micro_batch_tokens=0), torch.device("cuda")) == 0
    ids = torch.ones(8, 1000, dtype=torch.long)
    mask = torch.ones(8, 1000, dtype=torch.long)
    batch = Batch(ids, mask, ids[:, 1:], mask[:, 1:].float(), torch.zeros(8, 999), torch.zeros(8))
    assert [len(r) for r in micro_batch_rows(batch, torch.arange(8), LearnerConfig(micro_batch_size=32))] == [4, 4]


def test_on_policy_step_has_unit_ratio_and_mini_batches_go_off_policy(episodes):
    adv = episode_advantages(episodes, LearnerConfig())
    model = tiny_model("tiny", seed=3)
    stats = update(model, torch.optim.Adam(model.parameters(), lr=1e-2), make_batch(episodes, adv, 0), LearnerConfig())
    assert stats["clip_frac"] == 0.0 and abs(stats["approx_kl"]) < 1e-7
    model = tiny_model("tiny", seed=3)
    cfg = LearnerConfig(mini_batches=4, ppo_epochs=2, eps_low=0.01, eps_high=0.01)
    stats = update(model, torch.optim.Adam(model.parameters(), lr=3e-2), make_batch(episodes, adv, 0), cfg,
                   generator=torch.Generator().manual_seed(0))
    assert stats["clip_frac"] > 0.0 and stats["approx_kl"] != 0.0  # later mini-batches see π_θ ≠ π_old


def test_update_moves_probability_toward_positive_advantage():
    ids = list(range(20, 32))
    good, bad = episode(0, 1.0, ids, 4), episode(0, 0.0, ids[:4] + list(range(40, 48)), 4)
    model = tiny_model("tiny", seed=4)
    batch = make_batch([good, bad], episode_advantages([good, bad], LearnerConfig()), 0)
    before, _ = token_logprobs(model, batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(5):
        update(model, optimizer, batch, LearnerConfig())
    after, _ = token_logprobs(model, batch)
    gain = ((after - before) * batch.loss_mask).sum(-1).detach()
    assert gain[0] > 0 > gain[1]


def test_sft_update_lowers_nll(episodes):
    model = tiny_model("tiny", seed=5)
    batch = make_batch(episodes, torch.zeros(len(episodes)), 0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = [sft_update(model, optimizer, batch, LearnerConfig(micro_batch_size=3)) for _ in range(10)]
    assert losses[-1] < losses[0] - 0.5


def test_kl_penalty_against_reference(episodes):
    adv = episode_advantages(episodes, LearnerConfig())
    model, ref = tiny_model("tiny", seed=6), tiny_model("tiny", seed=7)
    stats = update(model, torch.optim.SGD(model.parameters(), lr=0.0), make_batch(episodes, adv, 0),
                   LearnerConfig(kl_coef=0.1), ref_model=ref)
    assert stats["kl"] > 0.0


def grouped_episodes(prompt_lengths=(40, 43), group=4, seed=0, system=0):
    """GRPO-shaped episodes: each group's samples share one prompt, then differ (different lengths); with
    `system` > 0 every prompt opens with the same `system` tokens."""
    g = torch.Generator().manual_seed(seed)
    opening = torch.randint(10, 500, (system,), generator=g).tolist()
    out = []
    for gid, plen in enumerate(prompt_lengths):
        prompt = opening + torch.randint(10, 500, (plen - system,), generator=g).tolist()
        for i in range(group):
            new = torch.randint(10, 500, (3 + int(torch.randint(0, 12, (1,), generator=g)),), generator=g).tolist()
            out.append(episode(gid, float(i % 2), prompt + new, first_generated=plen))
    return out


@pytest.mark.parametrize("layout", ["groups", "system prompt"])
def test_shared_prefix_forward_matches_plain_values_and_gradients(layout):
    from agentenv.learn.learner import _shared_prefix, final_hidden

    if layout == "groups":  # a GRPO batch: each group's prompt once
        episodes = grouped_episodes()
        batch = make_batch(episodes, torch.zeros(len(episodes)), pad_id=0)
        length, prefixes, inverse = _shared_prefix(batch, 32)
        assert length == 40 and prefixes.shape[0] == 2 and inverse.tolist() == [0] * 4 + [1] * 4
    else:  # an SFT-like batch: eight different tasks behind one 36-token system prompt, which is run once
        episodes = grouped_episodes(prompt_lengths=(40, 43, 41, 45, 42, 40, 44, 46), group=1, system=36)
        batch = make_batch(episodes, torch.zeros(len(episodes)), pad_id=0)
        length, prefixes, inverse = _shared_prefix(batch, 32)
        assert length == 36 and prefixes.shape[0] == 1 and inverse.tolist() == [0] * 8
    weight = torch.randn(128, generator=torch.Generator().manual_seed(1))
    results = []
    for share in (0, 32):
        model = tiny_model("tiny", seed=2).train()
        hidden = final_hidden(model, batch, share_prefix=share)
        ((hidden @ weight) * batch.loss_mask).sum().backward()
        results.append((hidden.detach() * batch.loss_mask[..., None], {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (h0, g0), (h1, g1) = results
    assert torch.allclose(h0, h1, atol=1e-5)
    assert g0.keys() == g1.keys() and all(float((g0[n] - g1[n]).norm()) <= 1e-5 * float(g0[n].norm()) for n in g0)
    # no shared prompt (or too short a one): the plain forward
    assert _shared_prefix(batch, 41) is None
    if layout == "groups":
        assert _shared_prefix(make_batch(episodes[::4], torch.zeros(2), pad_id=0), 8) is None


def test_token_logprobs_mask_scores_only_masked_positions(episodes):
    model = tiny_model("tiny", seed=1)
    batch = make_batch(episodes, torch.zeros(len(episodes)), pad_id=0)
    full, full_ent = token_logprobs(model, batch, temperature=0.7, chunk=5, with_entropy=True)
    part, part_ent = token_logprobs(model, batch, temperature=0.7, chunk=5, with_entropy=True, mask=batch.loss_mask)
    keep = batch.loss_mask.bool()
    assert torch.allclose(part[keep], full[keep], atol=1e-6) and torch.allclose(part_ent[keep], full_ent[keep], atol=1e-6)
    assert (part[~keep] == 0).all() and (part_ent[~keep] == 0).all()
    grads = []
    for mask in (None, batch.loss_mask):
        model.zero_grad()
        logp, ent = token_logprobs(model, batch, with_entropy=True, mask=mask)
        ((logp + 0.1 * ent) * batch.loss_mask).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


@pytest.mark.parametrize("epochs", [1, 2])
def test_update_with_shared_prefix_matches_plain_update(epochs):
    episodes = grouped_episodes()
    adv = episode_advantages(episodes, LearnerConfig())
    params = []
    for share in (0, 32):
        model = tiny_model("tiny", seed=3).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        cfg = LearnerConfig(share_prefix=share, micro_batch_size=4, ppo_epochs=epochs, entropy_coef=0.01)
        metrics = update(model, optimizer, make_batch(episodes, adv, pad_id=0), cfg)
        params.append((metrics, [p.detach().clone() for p in model.parameters()]))
    (m0, p0), (m1, p1) = params
    assert m0["loss"] == pytest.approx(m1["loss"], abs=1e-6) and m0["grad_norm"] == pytest.approx(m1["grad_norm"], rel=1e-4)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(p0, p1))
