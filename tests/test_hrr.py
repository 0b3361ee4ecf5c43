"""Hindsight Response Replay: turn-level advantage reshaping by Q_com (docs/anchors-learner.md §2.2 tests)."""

import gymnasium as gym
import pytest
import torch

import agentenv  # noqa: F401
from agentenv.envs.ledger.scripted import LedgerReader
from agentenv.learn.plugins.hrr import broadcast_turns, hrr_advantages, hrr_deviation, q_com_rows, turn_index
from agentenv.learn.objectives import grpo_advantages

F64 = torch.float64


@pytest.fixture
def batch():
    torch.manual_seed(0)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0], dtype=F64)
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    q_com = torch.rand(6, 5, dtype=F64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 1, 1, 1, 1]], dtype=torch.bool)
    return grpo_advantages(rewards, groups), q_com, mask, groups


@pytest.mark.parametrize("mode", ["add", "mul"])
@pytest.mark.parametrize("group_norm", [False, True])
def test_beta_zero_reproduces_grpo(batch, mode, group_norm):
    advantages, q_com, mask, groups = batch
    out = hrr_advantages(advantages, q_com, mask, beta=0.0, mode=mode, group_ids=groups, group_norm=group_norm)
    assert torch.equal(out, advantages[:, None].expand_as(q_com))


def test_additive_reshaping_sums_to_zero_per_trajectory(batch):
    advantages, q_com, mask, groups = batch
    for group_norm in (False, True):
        out = hrr_advantages(advantages, q_com, mask, beta=0.7, group_ids=groups, group_norm=group_norm)
        shift = ((out - advantages[:, None]) * mask).sum(dim=1)
        assert torch.allclose(shift, torch.zeros(6, dtype=F64), atol=1e-12)
        assert not torch.allclose(out, advantages[:, None].expand_as(out))


def test_deviation_is_from_the_mean_over_valid_turns_only(batch):
    _, q_com, mask, _ = batch
    deviation = hrr_deviation(q_com, mask)
    row = q_com[2, [0, 2, 3]]
    assert torch.allclose(deviation[2, [0, 2, 3]], row - row.mean())
    assert torch.all(deviation[~mask] == 0)


def test_multiplicative_form_and_masked_turns(batch):
    advantages, q_com, mask, _ = batch
    out = hrr_advantages(advantages, q_com, mask, beta=0.5, mode="mul")
    expected = advantages[:, None] * (1 + 0.5 * hrr_deviation(q_com, mask))
    assert torch.allclose(out[mask], expected[mask])
    assert torch.equal(out[~mask], advantages[:, None].expand_as(out)[~mask])  # no Q_com: plain GRPO


def test_group_norm_gives_unit_population_std_per_group(batch):
    _, q_com, mask, groups = batch
    deviation = hrr_deviation(q_com, mask, groups, group_norm=True, eps=0.0)
    for g in (0, 1):
        values = deviation[groups == g][mask[groups == g]]
        assert torch.allclose((values**2).mean().sqrt(), torch.tensor(1.0, dtype=F64))


def test_user_errors():
    a, q, m = torch.zeros(2), torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="hrr_mode"):
        hrr_advantages(a, q, m, mode="max")
    with pytest.raises(ValueError, match="group_ids"):
        hrr_advantages(a, q, m, group_norm=True)


def test_turn_segmentation_and_broadcast_to_tokens():
    loss_mask = torch.tensor([[0, 0, 1, 1, 0, 1, 0, 1, 1], [1, 1, 1, 0, 0, 0, 0, 1, 0]])
    index = turn_index(loss_mask)
    assert index.tolist() == [[-1, -1, 0, 0, -1, 1, -1, 2, 2], [0, 0, 0, -1, -1, -1, -1, 1, -1]]
    per_turn = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    tokens = broadcast_turns(per_turn, index)
    assert tokens.tolist() == [[0, 0, 1, 1, 0, 2, 0, 3, 3], [4, 4, 4, 0, 0, 0, 0, 5, 0]]


def test_q_com_rows_from_ledger_episodes_with_zip():
    """The env's per-step `info["compression"]["q_com"]` feeds HRR directly."""
    infos = []
    for seed in range(2):
        env = gym.make("agentenv/Ledger-v0", turns=24, compressor="zip", budget_tokens=1024)
        obs, _ = env.reset(seed=seed)
        policy, turns = LedgerReader(), []
        while True:
            obs, _, terminated, truncated, info = env.step(policy.act(obs))
            turns.append(info)
            if terminated or truncated:
                break
        infos.append(turns)
    q_com, mask = q_com_rows(infos)
    assert q_com.shape == mask.shape == (2, 25)
    assert mask.any(dim=1).all() and not mask[:, 0].any()  # no Q_com before the first rewrite
    assert torch.all((q_com[mask] >= 0) & (q_com[mask] <= 1))
    out = hrr_advantages(torch.tensor([0.5, -0.5]), q_com, mask, beta=1.0)
    assert out.shape == (2, 25) and torch.allclose(((out - torch.tensor([[0.5], [-0.5]])) * mask).sum(1), torch.zeros(2), atol=1e-5)


# -- HRR in the learner ------------------------------------------------------------------------------

LEDGER = {"turns": 4, "ledgers": 1, "probe_every": 2, "noise_lines": [1, 3], "compressor": "zip", "budget_tokens": 560}


@pytest.fixture(scope="module")
def ledger_episodes():
    """Real rollout records: the Ledger reader played through `collect` (tiny tokenizer), with zip rewrites, so
    episodes have several samples and per-turn Q_com."""
    from agentenv.rollout import collect
    from agentenv.policies.tiny import tiny_tokenizer

    episodes = collect("agentenv/Ledger-v0", LedgerReader(), [1], group_size=2, env_kwargs=LEDGER, tokenizer=tiny_tokenizer())
    assert all(len(e.samples) > 1 for e in episodes)  # the context was rewritten: a new Sample each time
    return episodes


def _update(episodes, advantages, cfg, token_advantages=None):
    """One learner update of a fresh tiny model (same init every call); returns its parameters."""
    from agentenv.learn.learner import make_batch, update
    from agentenv.policies.tiny import tiny_model, tiny_tokenizer

    from agentenv.learn.plugin import build_plugins

    model = tiny_model(seed=0).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = make_batch(episodes, advantages, tiny_tokenizer().pad_token_id, plugins=build_plugins(cfg))
    if token_advantages is not None:
        batch.extras["token_advantages"] = token_advantages
    update(model, optimizer, batch, cfg)
    return batch, [p.detach().clone() for p in model.parameters()]


def test_beta_zero_through_the_learner_is_plain_grpo(ledger_episodes):
    from dataclasses import replace

    from agentenv.learn.plugins.hrr import token_advantages
    from agentenv.learn.learner import LearnerConfig

    advantages = torch.tensor([1.0, -1.0])
    cfg = LearnerConfig(lr=1e-2, micro_batch_size=4, share_prefix=0)
    plain_batch, plain = _update(ledger_episodes, advantages, cfg)
    assert "token_advantages" not in plain_batch.extras
    # the per-token path itself, at beta = 0: the same update, bit for bit
    length = plain_batch.input_ids.shape[1]
    zero = token_advantages(ledger_episodes, advantages, length, beta=0.0, group_norm=True)[:, 1:].contiguous()
    _, via_tokens = _update(ledger_episodes, advantages, cfg, token_advantages=zero)
    assert all(torch.equal(a, b) for a, b in zip(plain, via_tokens))
    # and beta > 0 does reach the gradient
    hrr_batch, reshaped = _update(ledger_episodes, advantages, replace(cfg, plugins={"hrr": {"beta": 1.0, "group_norm": True}}))
    assert "token_advantages" in hrr_batch.extras
    assert not all(torch.equal(a, b) for a, b in zip(plain, reshaped))


@pytest.mark.parametrize("mode", ["add", "mul"])
def test_each_turns_generated_tokens_carry_that_turns_reshaped_advantage(ledger_episodes, mode):
    from agentenv.learn.learner import LearnerConfig, make_batch
    from agentenv.policies.tiny import tiny_tokenizer

    advantages = torch.tensor([1.0, -1.0])
    from agentenv.learn.plugin import build_plugins

    cfg = LearnerConfig(plugins={"hrr": {"beta": 0.8, "mode": mode}})
    batch = make_batch(ledger_episodes, advantages, tiny_tokenizer().pad_token_id, plugins=build_plugins(cfg))
    tokens = batch.extras["token_advantages"]
    assert tokens.shape == batch.loss_mask.shape
    q_com, mask = q_com_rows([e.turns for e in ledger_episodes])
    expected = hrr_advantages(advantages, q_com, mask, beta=0.8, mode=mode, group_ids=torch.tensor([0, 0]))
    row = 0
    for i, episode in enumerate(ledger_episodes):
        for j, turn in enumerate(episode.turns):
            # targets are shifted by one: token t of a sample is column t - 1
            span = tokens[row + turn["sample"], turn["start"] - 1 : turn["end"] - 1]
            assert torch.allclose(span, expected[i, j].expand_as(span))
            assert batch.loss_mask[row + turn["sample"], turn["start"] - 1 : turn["end"] - 1].all()
        shift = ((expected[i] - advantages[i]) * mask[i]).sum()
        if mode == "add":  # the reshaping of a trajectory sums to zero over its turns
            assert abs(float(shift)) < 1e-5
        row += len(episode.samples)
    outside = batch.loss_mask == 0
    assert torch.equal(tokens[outside], batch.advantages[:, None].expand_as(tokens)[outside])
    assert mask.any() and not torch.equal(tokens, batch.advantages[:, None].expand_as(tokens))
