"""Hindsight Response Replay: turn-level advantage reshaping by Q_com (anchors-learner.md §2.2 tests)."""

import gymnasium as gym
import pytest
import torch

import agentenv  # noqa: F401
from agentenv.envs.ledger_scripted import LedgerReader
from agentenv.policies.hrr import broadcast_turns, hrr_advantages, hrr_deviation, q_com_rows, turn_index
from agentenv.policies.objectives import grpo_advantages

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
