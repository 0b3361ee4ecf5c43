"""Sampler–learner mismatch: the correction weights and the mismatch estimate against hand values, their
place in the loss, and a run whose sampler is deliberately one step stale."""

import json
import math

import pytest
import torch

from agentenv.learn import objectives as F
from agentenv.learn.train import load_config, train

OLD = torch.tensor([[-1.0, -2.0, -0.5, -3.0]], dtype=torch.float64)
SAMPLER = torch.tensor([[-1.5, -1.0, -0.5, 0.0]], dtype=torch.float64)
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)  # the last token is not a loss token

pytestmark = pytest.mark.usefixtures("one_thread")


def test_truncated_importance_weights_by_hand():
    w = F.sampler_correction(OLD, SAMPLER, MASK, "tis", cap=1.5)
    # log ρ = 0.5, −1, 0 (and 0 off the mask): min(e^0.5 = 1.6487, 1.5), e^−1, 1
    torch.testing.assert_close(w[0, :3], torch.tensor([1.5, math.exp(-1.0), 1.0], dtype=torch.float64))
    seq = F.sampler_correction(OLD, SAMPLER, MASK, "tis", cap=1.5, level="sequence")
    torch.testing.assert_close(seq[0], torch.full((4,), math.exp(-0.5 / 3), dtype=torch.float64))  # geometric mean


def test_masked_importance_weights_by_hand():
    w = F.sampler_correction(OLD, SAMPLER, MASK, "mask", cap=2.0)  # keep 1/2 ≤ ρ ≤ 2: log ρ in [−0.693, 0.693]
    assert w[0, :3].tolist() == [1.0, 0.0, 1.0]
    assert torch.equal(F.sampler_correction(OLD, SAMPLER, MASK, "none"), torch.ones_like(OLD))
    with pytest.raises(ValueError):
        F.sampler_correction(OLD, SAMPLER, MASK, "clip")


def test_mismatch_estimate_by_hand():
    kl, diff = F.sampler_mismatch(OLD, SAMPLER, MASK)
    k3 = [math.exp(d) - 1 - d for d in (0.5, -1.0, 0.0)]
    assert float(kl) == pytest.approx(sum(k3) / 3, rel=1e-12) and float(diff) == pytest.approx(1.5 / 3, rel=1e-12)
    zero_kl, zero_diff = F.sampler_mismatch(OLD, OLD, MASK)
    assert float(zero_kl) == 0.0 and float(zero_diff) == 0.0


def test_the_weights_scale_each_tokens_gradient_and_carry_none_themselves():
    from agentenv.learn.learner import Batch, LearnerConfig, policy_loss

    logp = torch.tensor([[-1.2, -1.8, -0.4, -2.0]], dtype=torch.float64, requires_grad=True)
    batch = Batch(torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 5, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long),
                  MASK, OLD, torch.tensor([0.7], dtype=torch.float64), {"sampler_logp": SAMPLER})
    grads = {}
    for mode in ("none", "tis"):
        cfg = LearnerConfig(sampler_correction=mode, sampler_cap=1.5, loss="gpg")  # gpg: −A·log π, linear in log π
        loss, metrics = policy_loss(logp, batch, cfg, num_tokens=3.0, num_seqs=1.0, norm_const=4.0)
        grads[mode] = torch.autograd.grad(loss, logp)[0]
    w = F.sampler_correction(OLD, SAMPLER, MASK, "tis", 1.5)
    torch.testing.assert_close(grads["tis"], grads["none"] * w)
    assert metrics["sampler_weight"] == pytest.approx(float((w * MASK).sum()) / 3)
    assert metrics["sampler_kl"] == pytest.approx(float(F.sampler_mismatch(OLD, SAMPLER, MASK)[0]))


def _run(tmp_path, name, *overrides):
    args = ["--steps=3", "--sft_steps=0", "--eval_tasks=0", "--tasks_per_step=2", "--group_size=2", "--max_new_tokens=8",
            "--learner.lr=3e-2", "--learner.entropy_coef=0.5", "--learner.micro_batch_size=8", f"--out_dir={tmp_path / name}",
            *overrides]  # the entropy term moves the weights even if every reward is 0
    train(load_config(None, args), log=lambda message: None)
    rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    state = torch.load(tmp_path / name / "checkpoint" / "state.pt", weights_only=False)
    return rows, state


def test_a_one_step_stale_sampler_shows_the_mismatch_and_the_correction_acts_on_it(tmp_path):
    fresh, _ = _run(tmp_path, "fresh")
    stale, stale_state = _run(tmp_path, "stale", "--rollout.stale_steps=1")
    corrected, corrected_state = _run(tmp_path, "corrected", "--rollout.stale_steps=1", "--learner.sampler_correction=mask",
                                      "--learner.sampler_cap=1.05")
    # the learner's own model samples: only float noise; a stale sampler: none at step 0 (same weights), then real
    assert max(r["sampler_kl"] for r in fresh) < 1e-6
    assert stale[0]["sampler_kl"] < 1e-6 and min(r["sampler_kl"] for r in stale[1:]) > 100 * max(r["sampler_kl"] for r in fresh)
    # the correction drops the tokens whose ratio left [1/1.05, 1.05]: weight 1 at step 0, < 1 after
    assert corrected[0]["sampler_weight"] == 1.0 and all(r["sampler_weight"] < 1.0 for r in corrected[1:])
    assert len(stale_state["extra"]["sampler_history"]) == 2  # the learner's last two weights: resumable exactly


def test_the_correction_changes_an_update_from_a_one_step_stale_sampler():
    import copy

    from agentenv.learn.learner import LearnerConfig, episode_advantages, make_batch, update
    from agentenv.policies.hf import HFPolicy
    from agentenv.policies.tiny import tiny_model, tiny_tokenizer
    from agentenv.rollout import collect

    stale = tiny_model("tiny", seed=4)
    episodes = collect("agentenv/ToolReasoning-v0", HFPolicy(stale, tiny_tokenizer(), max_new_tokens=12, seed=0), [0, 1],
                       group_size=4, env_kwargs={"tools": ["calculator"]}, max_turns=2)
    for i, e in enumerate(episodes):
        e.reward = float(i % 3 == 0)  # reward variance in each group, so the policy gradient is not zero
    learner = copy.deepcopy(stale)
    with torch.no_grad():  # one step ahead of the sampler
        for p in learner.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    params = {}
    for mode in ("none", "tis", "mask"):
        cfg = LearnerConfig(sampler_correction=mode, sampler_cap=1.2, lr=1e-2, micro_batch_size=4)
        model = copy.deepcopy(learner)
        batch = make_batch(episodes, episode_advantages(episodes, cfg), tiny_tokenizer().pad_token_id)
        stats = update(model, torch.optim.SGD(model.parameters(), lr=1e-2), batch, cfg)
        params[mode] = torch.cat([p.detach().flatten() for p in model.parameters()])
        assert stats["sampler_kl"] > 1e-3  # the logged mismatch
    assert not torch.equal(params["none"], params["tis"]) and not torch.equal(params["none"], params["mask"])


def test_a_stale_sampler_run_resumes_exactly(tmp_path):
    args = ["--sft_steps=0", "--eval_tasks=0", "--tasks_per_step=2", "--group_size=2", "--max_new_tokens=8",
            "--learner.lr=3e-2", "--learner.entropy_coef=0.5", "--checkpoint_every=1", "--rollout.stale_steps=1"]
    train(load_config(None, ["--steps=3", f"--out_dir={tmp_path / 'straight'}", *args]), log=lambda m: None)
    train(load_config(None, ["--steps=2", f"--out_dir={tmp_path / 'resumed'}", *args]), log=lambda m: None)
    train(load_config(None, ["--steps=3", f"--out_dir={tmp_path / 'resumed'}", *args]), resume=True, log=lambda m: None)
    a, b = (torch.load(tmp_path / run / "checkpoint" / "state.pt", weights_only=False) for run in ("straight", "resumed"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


# -- asynchronous rollouts ---------------------------------------------------------------------------


def test_async_rollouts_never_exceed_the_staleness_bound_and_reach_it_when_the_learner_is_slow():
    import time
    from types import SimpleNamespace

    from agentenv.learn.sampler import AsyncRollouts, Sampler
    from agentenv.policies.hf import HFPolicy
    from agentenv.policies.tiny import tiny_model, tiny_tokenizer

    model = tiny_model("tiny", seed=0)
    learner_policy = HFPolicy(model, tiny_tokenizer(), max_new_tokens=4)
    from agentenv.learn.train import RolloutConfig

    cfg = SimpleNamespace(rollout=RolloutConfig(engine="hf", stale_steps=0, max_staleness=2), temperature=1.0, top_p=1.0,
                          max_new_tokens=4, seed=0)
    for k in (1, 2):
        sampler = Sampler(cfg, learner_policy, model, set(model.state_dict()))
        seen = []  # (step, version of the weights it was generated with)
        pipeline = AsyncRollouts(sampler, lambda step: ("rollouts", step), 0, 8, k)
        pipeline.publish(0, model)
        for step in range(8):
            (_, got), lag = pipeline.next(step)
            assert got == step and 0 <= lag <= k
            seen.append(lag)
            # a slow update: the producer runs ahead as far as it may (waited for, so machine load cannot change it)
            deadline = time.monotonic() + 60
            while pipeline._ready.qsize() < min(k, 7 - step) and time.monotonic() < deadline:
                time.sleep(0.01)
            pipeline.publish(step + 1, model)
        pipeline.close()
        assert max(seen) == k and seen[0] == 0  # the bound is reached, never passed


def test_async_training_runs_within_its_bound(tmp_path):
    rows, _ = _run(tmp_path, "async", "--rollout.max_staleness=1", "--steps=4")
    assert [r["step"] for r in rows] == [0, 1, 2, 3] and all(0 <= r["weights_lag"] <= 1 for r in rows)
    with pytest.raises(Exception, match="exclude each other"):
        load_config(None, ["--rollout.max_staleness=1", "--rollout.stale_steps=1"])
