"""CARE's learned two-stage probe (plugins/care.py, docs/anchors-learner.md §2.3): masks and scores by hand, that
it learns online from queried prompts only, that it never reads the ground truth of the others, that its
state round-trips exactly, and that it runs through `episode_advantages` and `train` on the tiny model."""

import copy
import io
import math
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from agentenv.learn import plugins as P
from agentenv.learn.learner import LearnerConfig, episode_advantages
from agentenv.learn.plugin import StepContext
from agentenv.learn.plugins.care import Care, care_hidden_states
from agentenv.learn.plugins.care import care_select, corrective_advantage_gap

N, H = 8, 16  # responses per prompt, hidden width of the synthetic streams


def _features(answers: list[list[int]], seed: int = 0) -> P.ProbeFeatures:
    """Features of hand-written answer groups with random hidden states."""
    g = torch.Generator().manual_seed(seed)
    flat = torch.tensor([a for group in answers for a in group])
    groups = torch.arange(len(answers)).repeat_interleave(len(answers[0]))
    hidden = torch.randn(len(flat), H, generator=g)
    return P.probe_features(flat, groups, hidden, torch.randn(len(flat), H, generator=g),
                            torch.arange(len(flat)).float(), len_norm=10.0)


def _stream(g: torch.Generator, prompts: int, separation: float = 1.5):
    """A synthetic step whose features carry the labels: (answers, groups, gt rewards, features, majority correct,
    true CAG per prompt).

    Answers come from 4 candidates with random weights (10% unparsable). The majority is right half of the
    time; otherwise the right answer is one of the other clusters or none of them. The prompt's hidden
    state is N(±separation·e₀, I) by whether the majority is right, and a correct response's hidden state
    gets +2·e₁, so stage 2 can count the correct responses outside the majority.
    """
    answers, rewards, prompt, responses, majority_right = [], [], [], [], []
    for _ in range(prompts):
        weights = torch.rand(4, generator=g) ** 2
        a = torch.multinomial(weights / weights.sum(), N, replacement=True, generator=g)
        a[torch.rand(N, generator=g) < 0.1] = -1
        votes = Counter(v for v in a.tolist() if v >= 0).most_common()
        right_is_majority = bool(votes) and bool(torch.rand(1, generator=g) < 0.5)
        if right_is_majority:
            right = votes[0][0]
        else:
            candidates = [v for v, _ in votes[1:]] + [99]  # 99: an answer nobody gave
            right = candidates[int(torch.randint(len(candidates), (1,), generator=g))]
        r = (a == right).double()
        answers.append(a)
        rewards.append(r)
        majority_right.append(right_is_majority)
        prompt.append((torch.randn(1, H, generator=g) + separation * (2 * right_is_majority - 1) * torch.eye(H)[0]).expand(N, H))
        responses.append(torch.randn(N, H, generator=g) + 2.0 * r.float()[:, None] * torch.eye(H)[1])
    answers, rewards = torch.cat(answers), torch.cat(rewards)
    groups = torch.arange(prompts).repeat_interleave(N)
    lengths = torch.randint(10, 200, (prompts * N,), generator=g).float()
    features = P.probe_features(answers, groups, torch.cat(prompt), torch.cat(responses), lengths, len_norm=4000.0)
    pseudo = ((answers == P.majority_vote(answers, groups)[0]) & (answers >= 0)).double()
    true_gap = corrective_advantage_gap(rewards, pseudo, groups)[::N]
    return answers, groups, rewards, features, torch.tensor(majority_right), true_gap


def _auc(score: torch.Tensor, label: torch.Tensor) -> float:
    pos, neg = score[label], score[~label]
    return float((pos[:, None] > neg[None, :]).double().mean() + 0.5 * (pos[:, None] == neg[None, :]).double().mean())


def _step(probe, g, step, prompts=32, **kwargs):
    answers, groups, gt, features, _, _ = _stream(g, prompts)
    return P.care_labels(gt, answers, groups, acquisition="probe", probe=probe, features=features,
                         gate=step >= 5, **kwargs)


def _state_equal(a: dict, b: dict) -> bool:
    """Deep equality of two probe state dicts (tensors bit for bit)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_state_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_state_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


# --------------------------------------------------------------------------------------------------
# (1) features and stage-2 masking, (2) the score by hand
# --------------------------------------------------------------------------------------------------

GROUPS = [
    [1, 1, 1, 1, 2, 2, 3, -1],  # x = 4; other clusters 2, 1; one unparsable
    [5, 5, 5, 5, 5, 5, 5, 5],  # unanimous: only y = 0
    [-1] * 8,  # no answer at all
    [7, 8, 7, 9, 8, 7, 6, 6],  # x = 3; other clusters 2, 2, 1
]


def test_probe_features_by_hand():
    f = _features(GROUPS)
    assert f.majority.tolist() == [4, 8, 0, 3]
    assert torch.equal(f.stats[0], torch.tensor([7, 4, 2, 1, 0, 0, 0, 0, 0]) / 8.0)
    assert torch.equal(f.stats[3], torch.tensor([8, 3, 2, 2, 1, 0, 0, 0, 0]) / 8.0)
    assert f.stats[2].abs().sum() == 0
    assert [torch.nonzero(row).flatten().tolist() for row in f.classes] == [[0, 1, 2], [0], [0], [0, 1, 2]]
    assert f.valid[0].tolist() == [True] * 7 + [False] and f.in_majority[0].tolist() == [True] * 4 + [False] * 4
    assert f.in_majority[3].tolist() == [True, False, True, False, False, True, False, False]
    assert torch.equal(f.rows, torch.arange(32).view(4, 8))
    close_lengths = torch.arange(32).float().view(4, 8) / 10.0
    assert torch.equal(f.lengths, close_lengths.clamp(max=1.0))


def test_probe_targets_from_ground_truth():
    f = _features(GROUPS)
    correct = torch.zeros(4, 8, dtype=torch.bool)
    correct[0, 4:6] = True  # the 2-cluster is right: y = 2
    correct[1] = True  # the unanimous majority is right
    correct[2, 0] = True  # an unparsable response can never count as correct
    correct[3, [1, 4, 3]] = True  # two clusters judged right (a lenient verifier): y = 2 + 1
    t = P.probe_targets(f, correct)
    assert t.majority_correct.tolist() == [0, 1, 0, 0] and t.count.tolist() == [2, 0, 0, 3]
    assert t.correct[2].sum() == 0 and t.correct[0].tolist() == [0, 0, 0, 0, 1, 1, 0, 0]


def test_stage2_probabilities_are_zero_on_absent_counts_and_sum_to_one():
    f = _features(GROUPS)
    probe = P.CareProbe(H, N, seed=3)
    for _ in range(2):  # untrained, then after one step of training passes
        p_majority, p_count, _ = probe.predict(f)
        assert p_count.shape == (4, N + 1) and p_majority.shape == (4,)
        assert torch.all(p_count[~f.classes] == 0) and torch.all(p_count[f.classes] > 0)
        torch.testing.assert_close(p_count.sum(-1), torch.ones(4, dtype=torch.float64))
        assert torch.all((p_majority > 0) & (p_majority < 1))
        probe.learn(f, P.probe_targets(f, torch.rand(4, 8, generator=torch.Generator().manual_seed(0)) > 0.5))
    assert probe.buffer["count"].shape == (8,)  # both calls buffered their 4 prompts


def _cag_by_hand(n: int, x: int, y: int) -> float:
    pseudo = n if 0 < x < n else 0
    truth = n if 0 < y < n else 0
    cross = 2 * n * math.sqrt(x * y / ((n - x) * (n - y))) if pseudo and truth else 0.0
    return math.sqrt(pseudo + truth + cross)


def test_selection_score_is_the_expected_cag_by_hand():
    f = _features(GROUPS)
    p_majority, p_count, score = P.CareProbe(H, N, seed=4).predict(f)
    expected = []
    for g, x in enumerate(f.majority.tolist()):
        present = [y for y in range(N + 1) if f.classes[g, y] and y <= x and x + y <= N]
        expected.append(sum(float(p_count[g, y]) * _cag_by_hand(N, x, y) for y in present))
    torch.testing.assert_close(score, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    # group 0: P(y=0)·√8 + P(1)·CAG(8,4,1) + P(2)·CAG(8,4,2); unanimous and answerless groups score 0
    torch.testing.assert_close(score[0], p_count[0, 0] * math.sqrt(8) + p_count[0, 1] * 4.6955 + p_count[0, 2] * 5.0237,
                               rtol=0, atol=1e-4)
    assert score[1] == 0 and score[2] == 0


# --------------------------------------------------------------------------------------------------
# (3) it learns online from queried prompts; (4) it never reads unqueried ground truth
# --------------------------------------------------------------------------------------------------


def test_probe_learns_online_and_selects_higher_cag_than_the_heuristic():
    probe = P.CareProbe(H, N, seed=0)  # the paper's defaults: lr 1e-4, 3 passes, buffer 2048, draws of 16
    held_out = _stream(torch.Generator().manual_seed(99), 512)
    _, _, _, features, majority_right, _ = held_out
    before = _auc(probe.predict(features)[0], majority_right)
    g = torch.Generator().manual_seed(1)
    for step in range(60):
        _, _, queried = _step(probe, g, step)
        assert queried.sum() == 7 * N  # ⌈0.2·32⌉ prompts a step get ground truth
    assert probe.buffer["count"].shape == (60 * 7,)  # the probe has seen exactly the queried prompts
    after = _auc(probe.predict(features)[0], majority_right)
    assert after > 0.9 and after > before + 0.2, (before, after)

    evaluation = torch.Generator().manual_seed(7)
    probe_gap, heuristic_gap, random_gap = [], [], []
    for _ in range(16):
        answers, groups, _, features, _, true_gap = _stream(evaluation, 32)
        p_majority, _, score = probe.predict(features)
        query, _ = care_select(score, p_majority, 0.2, 0.25, gate=True)
        p_heuristic, s_heuristic = (v[::N] for v in P.heuristic_scores(answers, groups))
        query_heuristic, _ = care_select(s_heuristic, p_heuristic, 0.2, 0.25, gate=True)
        probe_gap.append(true_gap[query].mean())
        heuristic_gap.append(true_gap[query_heuristic].mean())
        random_gap.append(true_gap.mean())
    probe_gap, heuristic_gap = torch.stack(probe_gap).mean(), torch.stack(heuristic_gap).mean()
    assert probe_gap > heuristic_gap + 1.0 and probe_gap > torch.stack(random_gap).mean(), (probe_gap, heuristic_gap)


def test_probe_never_reads_the_ground_truth_of_unqueried_prompts():
    seen, blind = P.CareProbe(H, N, seed=5), P.CareProbe(H, N, seed=5)
    g = torch.Generator().manual_seed(2)
    rng = torch.get_rng_state()
    for step in range(8):
        answers, groups, gt, features, _, _ = _stream(g, 16)
        kwargs = dict(acquisition="probe", top_pct=0.25, gate=step >= 4)
        rewards, coef, queried = P.care_labels(gt, answers, groups, probe=seen, features=features, **kwargs)
        hidden_gt = torch.where(queried, gt, torch.nan)  # what the method may not know
        rewards_b, coef_b, queried_b = P.care_labels(hidden_gt, answers, groups, probe=blind, features=features, **kwargs)
        assert torch.equal(queried, queried_b) and torch.equal(rewards, rewards_b) and torch.equal(coef, coef_b)
        assert not rewards.isnan().any()
        assert _state_equal(seen.state_dict(), blind.state_dict())
    assert torch.equal(torch.get_rng_state(), rng)  # the probe draws from its own generator only
    assert all(p.isfinite().all() for p in blind.stage1.parameters())


# --------------------------------------------------------------------------------------------------
# (6) state round trip, determinism
# --------------------------------------------------------------------------------------------------


def test_checkpoint_round_trip_gives_identical_next_selections():
    probe = P.CareProbe(H, N, seed=6)
    g = torch.Generator().manual_seed(3)
    for step in range(6):
        _step(probe, g, step)
    saved = io.BytesIO()
    torch.save(probe.state_dict(), saved)  # as train.py does, inside the checkpoint's `extra`
    saved.seek(0)
    restored = P.CareProbe(H, N, seed=123)  # a different init: everything must come from the state
    restored.load_state_dict(torch.load(saved, weights_only=False))
    fresh = P.CareProbe(H, N, seed=123)
    g_probe, g_restored, g_fresh = (copy.deepcopy(g) for _ in range(3))
    differs = False
    for step in range(6, 10):  # the same next steps: same selections, coefficients and training
        expected = _step(probe, g_probe, step)
        got = _step(restored, g_restored, step)
        assert all(torch.equal(a, b) for a, b in zip(expected, got))
        differs |= not torch.equal(expected[2], _step(fresh, g_fresh, step)[2])
    assert _state_equal(probe.state_dict(), restored.state_dict())
    assert differs  # the state matters: an untrained probe would have asked for other labels
    with pytest.raises(ValueError, match="checkpoint is for"):
        P.CareProbe(H + 1, N).load_state_dict(probe.state_dict())


def test_probe_is_deterministic_for_a_seed():
    runs = []
    for _ in range(2):
        probe, g = P.CareProbe(H, N, seed=8), torch.Generator().manual_seed(4)
        runs.append([_step(probe, g, step) for step in range(4)] + [probe.state_dict()])
    for a, b in zip(runs[0][:-1], runs[1][:-1]):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert _state_equal(runs[0][-1], runs[1][-1])


def test_care_labels_probe_needs_its_probe():
    f = _features(GROUPS)
    answers = torch.tensor([a for group in GROUPS for a in group])
    with pytest.raises(ValueError, match="CareProbe"):
        P.care_labels(torch.zeros(32, dtype=torch.float64), answers, torch.arange(4).repeat_interleave(8), features=f)
    with pytest.raises(ValueError, match="same number of responses"):
        P.probe_features(answers[:7], torch.tensor([0, 0, 0, 1, 1, 1, 1]), torch.zeros(7, H), torch.zeros(7, H),
                         torch.zeros(7), 1.0)


# --------------------------------------------------------------------------------------------------
# (5) through the learner on real tiny-model rollouts, and a train run that resumes exactly
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rollouts():
    from agentenv.policies.hf import HFPolicy
    from agentenv.rollout import collect

    policy = HFPolicy("tiny", max_new_tokens=16, seed=0)
    env_kwargs = {"tools": ["calculator"], "kinds": ["counting"], "difficulty": 1, "max_turns": 2}
    episodes = collect("agentenv/ToolReasoning-v0", policy, [0, 1, 2, 3], group_size=4, env_kwargs=env_kwargs,
                       max_seq_len=1024)
    return policy.model, episodes


def test_care_hidden_states_are_the_policy_last_layer_states(rollouts):
    model, episodes = rollouts
    cfg = LearnerConfig(micro_batch_size=5, share_prefix=8)  # groups straddle micro-batches; prompts shared
    prompt, response, lengths = care_hidden_states(model, episodes, cfg)
    assert prompt.shape == response.shape == (16, model.config.hidden_size) and prompt.dtype == torch.float32
    for e, p, r, n in zip(episodes, prompt, response, lengths):
        sample = e.samples[0]
        generated = [i for i, m in enumerate(sample.loss_mask) if m]
        with torch.no_grad():
            states = model.base_model(input_ids=torch.tensor([sample.token_ids])).last_hidden_state[0]
        torch.testing.assert_close(p, states[generated[0] - 1], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(r, states[generated[-1]], rtol=1e-4, atol=1e-4)
        assert n == len(generated) and generated[0] == sample.prompt_len


def test_care_hidden_states_of_a_split_episode_take_the_prompt_from_the_first_sample():
    from agentenv.policies.tiny import tiny_model

    model = tiny_model("tiny", seed=3)
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(10, 500, (n,), generator=g).tolist() for n in (12, 9, 15)]

    def sample(tokens, prompt):  # prompt, generated tokens, then two env tokens
        return SimpleNamespace(token_ids=tokens, loss_mask=[0] * prompt + [1] * (len(tokens) - prompt - 2) + [0, 0])

    split = SimpleNamespace(samples=[sample(ids[0], 5), sample(ids[1], 3)])  # a compressor started a new sample
    whole = SimpleNamespace(samples=[sample(ids[2], 4)])
    prompt, response, lengths = care_hidden_states(model, [split, whole], LearnerConfig(micro_batch_size=2))
    with torch.no_grad():
        states = [model.base_model(input_ids=torch.tensor([x])).last_hidden_state[0] for x in ids]
    torch.testing.assert_close(prompt, torch.stack([states[0][4], states[2][3]]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(response, torch.stack([states[1][6], states[2][12]]), rtol=1e-4, atol=1e-4)
    assert lengths.tolist() == [5 + 4, 9]  # generated tokens of every sample; trailing env tokens excluded


def test_episode_advantages_with_care_probe_on_tiny_model_rollouts(rollouts):
    model, episodes = rollouts
    cfg = LearnerConfig(plugins={"care": {"top_pct": 0.5, "warmup": 1}})
    assert cfg.plugins["care"].acquisition == "probe"  # the default
    care = Care(cfg.plugins["care"])
    probe = care.make_probe(model.config.hidden_size, group_size=4, seed=0)
    with pytest.raises(ValueError, match="model"):
        episode_advantages(episodes, cfg, plugins=[care], ctx=StepContext(cfg, 0))
    adv = episode_advantages(episodes, cfg, plugins=[care], ctx=StepContext(cfg, 0, model=model))
    assert adv.shape == (16,) and adv.isfinite().all()
    assert probe.buffer["count"].shape == (2,)  # ⌈0.5·4⌉ queried prompts
    # The random tiny model never answers, so give its real rollouts answers (only `messages` change; the
    # token ids the probe reads stay the model's): groups with a wrong and a right majority, a split one.
    answers = ["3", "3", "3", "4", "5", "5", "6", "5", "7", "8", "7", "8", "9", "9", "9", "9"]
    rewards = [0, 0, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 1, 1]
    for e, answer, reward in zip(episodes, answers, rewards):
        e.messages = [*e.messages, {"role": "assistant", "content": f"<answer>{answer}</answer>"}]
        e.reward = float(reward)
    adv = episode_advantages(episodes, cfg, plugins=[care], ctx=StepContext(cfg, 1, model=model))
    assert adv.shape == (16,) and adv.isfinite().all() and adv.abs().sum() > 0
    # the two prompts just queried were buffered with their true labels: per group (majority right, y) =
    # (no, 1), (yes, 0), (no, 2: the tie goes to the first answer, 7), (yes, 0)
    truth = [(0, 1), (1, 0), (0, 2), (1, 0)]
    prompts = care_hidden_states(model, episodes, cfg)[0][::4]
    assert probe.buffer["count"].shape == (4,)
    for hidden, right, count in zip(probe.buffer["prompt"][2:], probe.buffer["majority_correct"][2:], probe.buffer["count"][2:]):
        group = int((prompts - hidden).abs().sum(-1).argmin())
        assert (int(right), int(count)) == truth[group]
    assert Care(LearnerConfig(plugins={"care": {"acquisition": "heuristic"}}).plugins["care"]).make_probe(64, 4, 0) is None


def test_train_with_the_care_probe_resumes_exactly(tmp_path):
    from agentenv.learn.train import load_config, train

    args = ["--checkpoint_every=1", "--sft_steps=0", "--eval_tasks=0", "--tasks_per_step=3", "--group_size=2",
            "--max_new_tokens=8", "--learner.micro_batch_size=6", "--learner.plugins.care.warmup=1",
            "--learner.plugins.care.top_pct=0.5"]
    train(load_config(None, ["--steps=3", f"--out_dir={tmp_path / 'straight'}", *args]), log=lambda message: None)
    train(load_config(None, ["--steps=2", f"--out_dir={tmp_path / 'resumed'}", *args]), log=lambda message: None)
    train(load_config(None, ["--steps=3", f"--out_dir={tmp_path / 'resumed'}", *args]), resume=True, log=lambda message: None)
    straight, resumed = (torch.load(tmp_path / run / "checkpoint" / "state.pt", weights_only=False)
                         for run in ("straight", "resumed"))
    assert straight["step"] == resumed["step"] == 3
    straight_probe, resumed_probe = (run["extra"]["plugins"]["care"]["probe"] for run in (straight, resumed))
    assert straight_probe["buffer"]["count"].shape == (3 * 2,)  # ⌈0.5·3⌉ = 2 prompts a step
    assert _state_equal(straight_probe, resumed_probe)
    assert all(torch.equal(straight["model"][k], resumed["model"][k]) for k in straight["model"])
