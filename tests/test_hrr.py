"""Hindsight Response Replay: turn-level advantage reshaping by Q_com (docs/anchors-learner.md §2.2 tests)."""

import random
from types import SimpleNamespace

import gymnasium as gym
import pytest
import torch

import agentenv  # noqa: F401
from agentenv.envs.ledger.scripted import READ, LedgerOracle, LedgerReader
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


# -- Q_com is the policy's: it scores the agent's own compression decisions ---------------------------------

AGENT = {"turns": 32, "ledgers": 2, "probe_every": 8, "compressor": "zip", "compressor_options": {"mode": "agent"},
         "budget_tokens": 1536}
SEEDS = (0, 1, 2)


class RandomLevels(LedgerReader):
    """Reads and answers like the reader, but levels each page at random: compression without judgement."""

    def __init__(self, seed):
        self.rng = random.Random(seed)

    def zip_level(self, messages):
        return self.rng.randint(1, 5)


class MalformedTags(LedgerReader):
    """The reader's reads and answers, with zip tags that do not parse (so nothing is compressed by choice)."""

    def zip_level(self, messages):
        return None

    def act(self, messages):
        return '<zip level=two/><zip turn=3>< zip level=2/><zip level="/>' + super().act(messages)


def play(make_policy, seed, env_kwargs=AGENT, override=None):
    """One episode; returns (per-step Q_com, reward, per-step actions). `override(step, action)` may replace
    an action."""
    env = gym.make("agentenv/Ledger-v0", **env_kwargs)
    policy = make_policy(env)
    obs, _ = env.reset(seed=seed)
    q, actions = [], []
    while True:
        action = policy.act(obs)
        if override is not None:
            action = override(len(actions) + 1, action)
        obs, reward, terminated, truncated, info = env.step(action)
        q.append(info["compression"]["q_com"])
        actions.append(action)
        if terminated or truncated:
            return q, reward, actions


def mean_q(make_policy):
    """Mean over SEEDS of the episode's mean step Q_com, and the mean reward."""
    per_seed = [play(make_policy, seed) for seed in SEEDS]
    means = [sum(x for x in q if x is not None) / sum(x is not None for x in q) for q, _, _ in per_seed]
    return sum(means) / len(means), sum(r for _, r, _ in per_seed) / len(per_seed), means


def test_q_com_responds_to_the_policys_compression_decisions():
    """Acceptance (issue 16): garbage policies < the scripted reader < the hindsight oracle, on fixed seeds.
    Garbage: random text (never reads, compresses nothing), random levels, tags that do not parse."""
    results = {
        "garbage text": mean_q(lambda env: SimpleNamespace(act=lambda obs: "I think the answer is 42, lol")),
        "random levels": mean_q(lambda env: RandomLevels(0)),
        "malformed tags": mean_q(lambda env: MalformedTags()),
        "scripted reader": mean_q(lambda env: LedgerReader()),
        "oracle": mean_q(lambda env: LedgerOracle(env)),
    }
    table = "; ".join(f"{name}: Q_com {q:.3f} (per seed {', '.join(f'{x:.3f}' for x in seeds)}), reward {r:.2f}"
                      for name, (q, r, seeds) in results.items())
    reader, oracle = results["scripted reader"][0], results["oracle"][0]
    for name in ("garbage text", "random levels", "malformed tags"):
        assert results[name][0] < reader - 0.05, table
    assert reader < oracle, table
    for seed in range(len(SEEDS)):  # per seed too, not only on average
        assert results["random levels"][2][seed] < results["scripted reader"][2][seed] < results["oracle"][2][seed], table
    assert results["scripted reader"][1] == results["oracle"][1] == 1.0, table  # their compression keeps what probes need


def test_one_tag_sets_its_steps_q_com():
    """Same seed, same actions except one zip level: only that step's Q_com moves, and by a whole term
    (dropping a page whose fact a later probe needs loses its retention)."""
    env = gym.make("agentenv/Ledger-v0", **AGENT)
    env.reset(seed=0)
    stream = env.unwrapped.stream
    # a page with a fact that a probe after the next page asks about (so it must survive compression)
    page = next(f.page for p in stream.probes for f in p.needs if p.page > f.page + 1 and not f.key.startswith("event"))
    step = page + 1  # the action after reading `page` levels it
    base, _, actions = play(lambda env: LedgerReader(), 0)
    assert actions[step - 1].startswith("<zip level=2/>")
    dropped, _, _ = play(lambda env: LedgerReader(), 0, override=lambda k, a: a.replace("<zip level=2/>", "<zip level=1/>") if k == step else a)
    assert dropped[: step - 1] == base[: step - 1]
    assert base[step - 1] - dropped[step - 1] > 0.2, (base[step - 1], dropped[step - 1])


def test_malformed_zip_tags_never_crash_an_episode():
    bad = ['<zip level=99/>', '<zip turn=0 level=2/>', '<zip turn=-1 level=2/>', '<zip turn=999999 level=3/>', '<zip',
           '<zip level=/>', '<zip turn="a" level="b"/>', '<zip level=2>' * 50, '<zip level=2/' + 'x' * 5000]
    env = gym.make("agentenv/Ledger-v0", **AGENT)
    env.reset(seed=3)
    for tag in bad:
        _, _, terminated, truncated, info = env.step(tag + READ)
        assert not terminated and info["compression"]["ignored_tags"], tag
        assert "zip" not in {kind for _, _, kind in info["control_spans"]}


# -- HRR in the learner ------------------------------------------------------------------------------

LEDGER = {"turns": 4, "ledgers": 1, "probe_every": 2, "noise_lines": [1, 3], "compressor": "zip",
          "compressor_options": {"mode": "agent"}, "budget_tokens": 900}  # the opening messages take ~520


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


# -- the HRR preset: a complete method, and a different update from its baseline -----------------------


def test_hrr_preset_makes_the_agent_compress_and_rejects_a_contradicting_env():
    from agentenv.errors import UserError
    from agentenv.learn.train import load_config

    ledger = "--env_kwargs={turns: 4, budget_tokens: 560}"
    cfg = load_config(None, ["--env_id=agentenv/Ledger-v0", ledger, "--learner.preset=hrr"])
    assert list(cfg.learner.plugins) == ["hrr"]
    assert cfg.env_kwargs == {"turns": 4, "budget_tokens": 560, "compressor": "zip", "compressor_options": {"mode": "agent"}}
    same = load_config(None, ["--env_id=agentenv/Ledger-v0", "--env_kwargs={compressor: zip, compressor_options: {mode: agent}}",
                              "--learner.plugins=hrr"])  # saying it explicitly (or twice) is no conflict
    assert same.env_kwargs["compressor_options"] == {"mode": "agent"}
    with pytest.raises(UserError, match=r"needs env_kwargs.compressor_options.mode='agent', but the config sets 'rule'"):
        load_config(None, ["--env_kwargs={compressor: zip, compressor_options: {mode: rule}, budget_tokens: 560}", "--learner.preset=hrr"])
    with pytest.raises(UserError, match=r"needs env_kwargs.compressor='zip'"):
        load_config(None, ["--env_kwargs={compressor: window, budget_tokens: 560}", "--learner.preset=hrr"])


def test_hrr_preset_changes_the_update_versus_dapo_on_the_same_batch():
    """The same episodes (agent-driven compression, one group: the reader and a random-level compressor)
    updated by `--learner.preset=hrr` and by its baseline `--learner.preset=dapo`: the per-turn Q_com of the
    agent's decisions changes the update."""
    from agentenv.config import apply_overrides
    from agentenv.learn.learner import LearnerConfig, episode_advantages, make_batch, update
    from agentenv.learn.plugin import build_plugins
    from agentenv.policies.tiny import tiny_model, tiny_tokenizer
    from agentenv.rollout import collect

    episodes = [collect("agentenv/Ledger-v0", policy, [5], env_kwargs=LEDGER, tokenizer=tiny_tokenizer())[0]
                for policy in (LedgerReader(), RandomLevels(1))]
    for i, episode in enumerate(episodes):
        episode.group_id, episode.index = 0, i
    q_com, mask = q_com_rows([e.turns for e in episodes])
    assert mask.sum() >= 6 and len(set(q_com[mask].tolist())) > 2  # every step after the first decides a level

    def run(preset):
        cfg = LearnerConfig(lr=1e-2, micro_batch_size=4, share_prefix=0)
        apply_overrides(cfg, {"preset": preset})
        plugins = build_plugins(cfg)
        model = tiny_model(seed=0).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        batch = make_batch(episodes, episode_advantages(episodes, cfg, plugins=plugins), tiny_tokenizer().pad_token_id, plugins=plugins)
        update(model, optimizer, batch, cfg, plugins=plugins)
        return batch, [p.detach().clone() for p in model.parameters()]

    dapo_batch, dapo = run("dapo")
    hrr_batch, hrr = run("hrr")
    assert torch.equal(dapo_batch.input_ids, hrr_batch.input_ids)  # the same batch
    assert "token_advantages" not in dapo_batch.extras and "token_advantages" in hrr_batch.extras
    assert not all(torch.equal(a, b) for a, b in zip(dapo, hrr))
