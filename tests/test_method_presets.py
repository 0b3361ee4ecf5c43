"""Each seed method is active as shipped, and each paper's baseline is one preset away (issue 16, items 1-2).

Two kinds of test:
- every method's preset changes the update against its baseline's on the same batch. The batch is real:
  scripted ToolReasoning episodes under delayed execution (so `<execute/>` appears), grouped so that the
  rewards vary, on a tiny policy warm-started on demonstrations together with its MTP head, as `train`
  does for OCC. The update is one `learner.update` with plain SGD from the same weights, so the
  difference of the two updates is the difference of the two gradients, with no optimizer normalisation
  in between; the margin each test states is the relative size of that difference;
- the baselines' defining behaviour, against hand-computed values.
"""

import copy
from types import SimpleNamespace

import pytest
import torch

from agentenv.envs.tool_reasoning.scripted import ScriptedPolicy
from agentenv.errors import UserError
from agentenv.learn.learner import Batch, LearnerConfig, episode_advantages, final_hidden, make_batch, policy_loss, update
from agentenv.learn.plugin import StepContext, build_plugins, registry, with_env_options
from agentenv.learn.plugins.care import care_labels
from agentenv.learn.plugins.nsr import nsr_decay, nsr_rescue
from agentenv.learn.plugins.occ import mtp_logprobs, mtp_mask, occ_mtp_loss
from agentenv.learn.presets import learner_preset
from agentenv.learn.train import TrainConfig, load_config, warm_start
from agentenv.policies.hf import HFPolicy
from agentenv.policies.tiny import tiny_model
from agentenv.rollout import collect, demonstrations

from exact import F64, close, t  # tests/exact.py

pytestmark = pytest.mark.usefixtures("one_thread")

ENV = "agentenv/ToolReasoning-v0"
# the default run's env (calculator, counting, difficulty 1) with the env options IH-GRPO asks for, and a one-line
# system prompt that still says calls are queued (the scripted demonstrator then writes `<execute/>`), so that
# sequences stay short on a CPU
ENV_KWARGS = {"tools": ["calculator"], "kinds": ["counting"], "difficulty": 1, "max_turns": 4, "execution": "delayed",
              "system_prompt": "Use the calculator; calls are queued until <execute/>. Answer in <answer></answer>."}
SFT_STEPS = 16


def _learner(name: str, **extra) -> LearnerConfig:
    overrides = {**learner_preset(name), "micro_batch_size": 16, **extra}
    plugins = overrides.pop("plugins")
    return LearnerConfig(**overrides, plugins=plugins)


@pytest.fixture(scope="module")
def warm():
    """A tiny policy after a short warm start on delayed-execution demonstrations, its MTP head trained with it
    (the occ plug-in's `sft_loss`), a copy of it halfway through (OWPO's reference), the MTP head's untrained
    weights, and the tokenizer's pad id."""
    model = tiny_model("tiny", seed=0)
    policy = HFPolicy(model, device="cpu", max_new_tokens=48, seed=0)
    occ = build_plugins(LearnerConfig(plugins=["occ"]))
    occ[0].setup(model, policy.tokenizer, group_size=4, seed=0)
    untrained_head = copy.deepcopy(model.mtp_head)
    cfg = TrainConfig(env_kwargs=ENV_KWARGS, sft_episodes=64, sft_steps=SFT_STEPS // 2, sft_batch_size=8, seed=0)
    warm_start(cfg, policy, model, lambda message: None, occ)
    reference = copy.deepcopy(model)
    cfg.seed = 1  # the second half draws other demonstrations
    warm_start(cfg, policy, model, lambda message: None, occ)
    return SimpleNamespace(model=model, reference=reference, untrained_head=untrained_head, tokenizer=policy.tokenizer,
                           pad_id=policy.chat.pad_id)


@pytest.fixture(scope="module")
def episodes(warm):
    """16 episodes, 4 groups of 4: groups 0-1 have one right answer against three wrong ones (the majority is
    wrong), groups 2-3 three right ones against one wrong."""
    tasks = list(range(500, 504))

    def run(policy):
        return collect(ENV, policy, tasks, 1, env_kwargs=ENV_KWARGS, tokenizer=warm.tokenizer)

    right = run(ScriptedPolicy())
    wrong = [run(ScriptedPolicy(wrong_formula=1.0, seed=s)) for s in range(3)]
    out = []
    for i in range(4):
        members = [right[i], *(w[i] for w in wrong)] if i < 2 else [right[i]] * 3 + [wrong[0][i]]
        for episode in members:
            episode = copy.copy(episode)
            episode.group_id = i
            out.append(episode)
    return out


def _params(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for n, p in model.named_parameters() if not n.startswith("mtp_head")])


def _update_delta(warm, episodes, cfg: LearnerConfig, *, lr: float = 0.5, dtype=torch.float32, step: int = 3):
    """The policy's parameter change (MTP head excluded) after one update of `cfg` with SGD(lr) at training step
    `step`, and its stats."""
    model = copy.deepcopy(warm.model).to(dtype)
    reference = copy.deepcopy(warm.reference).to(dtype)
    plugins = build_plugins(cfg)
    for plugin in plugins:
        plugin.setup(model, warm.tokenizer, group_size=4, seed=0)
    generator = torch.Generator().manual_seed(5)
    hints = HFPolicy(model, warm.tokenizer, max_new_tokens=6, seed=0)  # AMR-SD writes its hints with the policy
    ctx = StepContext(cfg, step, model=model, policy=hints, ref_model=reference, generator=generator)
    batch = make_batch(episodes, episode_advantages(episodes, cfg, plugins=plugins, ctx=ctx), warm.pad_id,
                       plugins=plugins, ctx=ctx)
    start = _params(model)
    stats = update(model, torch.optim.SGD(model.parameters(), lr=lr), batch, cfg, plugins=plugins,
                   ref_model=reference, generator=generator, step=step, ctx=ctx)
    return _params(model) - start, stats


@pytest.fixture(scope="module")
def dapo(warm, episodes):
    """DAPO's update with one and with four mini-batches (the plug-ins that need π_θ ≠ π_old use four)."""
    return {mb: _update_delta(warm, episodes, _learner("dapo", mini_batches=mb))[0] for mb in (1, 4)}


def _relative(delta, base) -> float:
    return float((delta - base).norm() / base.norm())


# Each method's preset against DAPO with the same schedule (mini-batches): the update must change by more than
# 5% of its size (measured: 0.13 or more; ih_grpo has its own test below). The settings a method needs on this
# batch beyond its preset, each with the reason:
METHODS = {
    "care": {}, "divergence": {}, "direction": {}, "fipo": {}, "owpo": {}, "nsr": {}, "occ": {},
    # AMR-SD's gate is closed on this batch at its guessed thresholds τ⁺ = 0.2, τ⁻ = 0.5: the tiny policy's hints
    # move no demonstration token's log-prob that far (CIG in [−0.34, 0.12]), so its preset is DAPO here, exactly;
    # with the thresholds at 0 it acts.
    "amr_sd": {"tau_pos": 0.0, "tau_neg": 0.0},
}  # hrr (ZipRL) is tested in tests/test_hrr.py


@pytest.mark.parametrize("name", METHODS)
def test_each_method_preset_changes_the_update(name, warm, episodes, dapo):
    cfg = _learner(name)
    if METHODS[name]:
        cfg = _learner(name, plugins={name: METHODS[name]})
    delta, _ = _update_delta(warm, episodes, cfg)
    assert _relative(delta, dapo[cfg.mini_batches]) > 0.05


def test_every_registered_method_is_covered():
    assert set(registry()) == {*METHODS, "ih_grpo", "hrr"}


def test_ih_grpo_preset_runs_delayed_execution_and_changes_the_update(warm, episodes):
    """IH-GRPO at the paper's λ = 0.001, with its control token in the batch: the update differs from DAPO's by
    λ times the c-loss's own gradient (plain SGD, one mini-batch, no clipping, float64). That is 0.7e-5-2.6e-5
    of the update here (by the warm start's length), 1000 times more at λ = 1: a small effect, by the paper's
    own λ; the c-term acts only where the policy hesitates over the control token (p_v·(1 − p_v) large).

    The noise floor is float32's, not float64's: Qwen2's RMSNorm computes in float32 whatever the weights'
    dtype, so every trunk gradient carries ~2e-7 relative rounding. Hence the margin, 1e-6 (measured 6.8e-6),
    and linearity in λ checked to 25% at λ = 0.001 (the rounding is 8% of the c-term's effect there)."""
    control = warm.tokenizer.convert_tokens_to_ids("<execute/>")
    assert any(control in s.token_ids for e in episodes for s in e.samples)
    assert with_env_options({}, build_plugins(_learner("ih_grpo"))) == {"execution": "delayed", "python_semantics": "session"}
    exact = dict(max_grad_norm=1e9)
    base, _ = _update_delta(warm, episodes, _learner("dapo", **exact), dtype=F64)
    shipped, stats = _update_delta(warm, episodes, _learner("ih_grpo", **exact), dtype=F64)
    unit, _ = _update_delta(warm, episodes, _learner("ih_grpo", **exact, plugins={"ih_grpo": {"lam": 1.0}}), dtype=F64)
    assert _learner("ih_grpo").plugins["ih_grpo"].lam == 0.001
    assert stats["ih_c_loss"] != 0.0
    assert _relative(shipped, base) > 1e-6
    assert _relative(shipped - base, 0.001 * (unit - base)) < 0.25


def test_the_ih_grpo_preset_sets_its_env_and_a_clash_is_an_error(tmp_path):
    cfg = load_config(None, ["--learner.preset=ih_grpo"])
    env = with_env_options(cfg.env_kwargs, build_plugins(cfg.learner))
    assert env["execution"] == "delayed" and env["python_semantics"] == "session" and env["tools"] == ["calculator"]
    demos = demonstrations(ENV, 2, HFPolicy(tiny_model("tiny"), device="cpu").tokenizer, env_kwargs=env)
    assert all(any("<execute/>" in m["content"] for m in d.messages if m["role"] == "assistant") for d in demos)
    with pytest.raises(UserError, match="needs env_kwargs.execution='delayed'"):  # stopped before any work
        load_config(None, ["--learner.preset=ih_grpo", "--env_kwargs.execution=immediate"])
    fresh = load_config(None, ["--learner.preset=ih_grpo", "--learner.plugins.ih_grpo.python_semantics=fresh"])
    assert with_env_options({}, build_plugins(fresh.learner))["python_semantics"] == "fresh"


# -- OCC ---------------------------------------------------------------------------------------------------


def test_warm_start_trains_the_mtp_head(warm, episodes):
    batch = make_batch(episodes, torch.zeros(len(episodes)), warm.pad_id)
    model = warm.model
    with torch.no_grad():
        hidden = final_hidden(model, batch)

        def nll(head):
            logq = mtp_logprobs(head, hidden, model.get_input_embeddings(), model.get_output_embeddings().weight,
                                batch.targets)
            mask = mtp_mask(batch.loss_mask)
            return float(-(logq * mask).sum() / mask.sum())

        trained, untrained = nll(model.mtp_head), nll(warm.untrained_head)
    assert untrained > 6.0 and trained < untrained / 3  # measured: 7.6 (≈ log V) and 1.3-2


def test_occ_regimes_by_hand():
    # one row, column 0 masked (no MTP prediction there); a = q − old = [·, 0.1, −0.5], b = π − old = [·, 0.2, −0.2]
    old, mtp, logp = t([[0.0, -1.0, -2.0]]), t([[0.0, -0.9, -2.5]]), t([[0.0, -0.8, -2.2]])
    adv, mask = t([[1.0]]), t([[0.0, 1.0, 1.0]])
    kw = dict(scale=0.1, eps_low=0.2, eps_high=0.28)
    # c = 0.1·mean(0.1·0.2/0.01, 0.5·0.2/0.25) = 0.1·mean(2, 0.4) = 0.12; q/π_old = e^0.1 (inside the trust
    # region) and e^−0.5 < 0.8 (A > 0: the pessimistic branch is the unclipped one)
    loss, coef = occ_mtp_loss("occ", mtp, logp, old, adv, mask, **kw)
    close(coef, 0.12, tol=1e-6)
    close(loss, t([[0.0, -0.12 * 1.1051709, -0.12 * 0.6065307]]), tol=1e-6)
    loss, coef = occ_mtp_loss("fixed", mtp, logp, old, adv, mask, **kw)
    close(coef, 0.1, tol=0)
    close(loss, t([[0.0, -0.11051709, -0.06065307]]), tol=1e-7)
    loss, coef = occ_mtp_loss("ce", mtp, logp, old, adv, mask, **kw)  # 0.1·(−log q)
    close(loss, t([[0.0, 0.09, 0.25]]), tol=1e-12)
    q = mtp.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(occ_mtp_loss("ce", q, logp, old, adv, mask, **kw)[0].sum(), q)
    close(grad, t([[0.0, -0.1, -0.1]]), tol=1e-12)
    with pytest.raises(ValueError, match="occ loss"):
        occ_mtp_loss("policy", mtp, logp, old, adv, mask, **kw)


def test_occ_regime_presets_change_the_update_and_detach_is_exactly_dapo(warm, episodes, dapo):
    occ, _ = _update_delta(warm, episodes, _learner("occ"))
    for name in ("occ_fixed", "occ_ce"):
        delta, _ = _update_delta(warm, episodes, _learner(name))
        assert _relative(delta, dapo[4]) > 0.05 and _relative(delta, occ) > 0.05
    # the regime's loss trains the MTP head alone: the policy's gradient is DAPO's, bit for bit (without the shared
    # grad-norm clip, which also counts the head's gradient)
    unclipped = dict(max_grad_norm=1e9)
    detach, stats = _update_delta(warm, episodes, _learner("occ_detach", **unclipped))
    assert torch.equal(detach, _update_delta(warm, episodes, _learner("dapo", mini_batches=4, **unclipped))[0])
    assert stats["occ_coef"] > 0


def test_detached_mtp_loss_reaches_the_head_only(warm, episodes):
    model = copy.deepcopy(warm.model)
    batch = make_batch(episodes[:2], torch.zeros(2), warm.pad_id)
    hidden = final_hidden(model, batch)
    logq = mtp_logprobs(model.mtp_head, hidden, model.get_input_embeddings(), model.get_output_embeddings().weight,
                        batch.targets, detach=True)
    (-(logq * mtp_mask(batch.loss_mask)).sum()).backward()
    assert all((p.grad is not None) == n.startswith("mtp_head") for n, p in model.named_parameters())


# -- NSR vs deterministic decay -------------------------------------------------------------------------------


def test_nsr_decay_by_hand_and_as_nsrs_expectation():
    # ε = 0.2 / 0.28, band 0.1 (r in (1.28, 1.408] or [0.72, 0.8)), p = 0.5; log r for r = 1.3, 1.5, 0.75, 1.1
    ratio = t([[1.3, 1.5, 0.75, 1.1]])
    adv = t([[1.0, 1.0, -1.0, 1.0]])
    clip = t([[-1.28, -1.28, 0.8, -1.1]])  # PPO-clip's loss: the clipped branch on the first three
    log_ratio = ratio.log().requires_grad_(True)
    loss, eligible = nsr_decay(clip, log_ratio, adv, 0.2, 0.28, 0.1, 0.5)
    assert eligible.tolist() == [[True, False, True, False]]  # r = 1.5 is outside the band, 1.1 is not clipped
    close(loss, t([[0.5 * -1.3 + 0.5 * -1.28, -1.28, 0.5 * 0.75 + 0.5 * 0.8, -1.1]]), tol=1e-12)
    (grad,) = torch.autograd.grad(loss.sum(), log_ratio)
    close(grad, t([[0.5 * -1.3, 0.0, 0.5 * 0.75, 0.0]]), tol=1e-12)  # p·∂(−A·r)/∂log r on the eligible tokens
    # the mean of NSR over a rescued and a not-rescued draw is the decay, value and gradient
    rescued, _ = nsr_rescue(clip, log_ratio, adv, 0.2, 0.28, 0.1, 0.5, torch.zeros(1, 4, dtype=F64))
    kept, _ = nsr_rescue(clip, log_ratio, adv, 0.2, 0.28, 0.1, 0.5, torch.full((1, 4), 0.99, dtype=F64))
    close((rescued + kept) / 2, loss, tol=1e-12)
    close(torch.autograd.grad(((rescued + kept) / 2).sum(), log_ratio)[0], grad, tol=1e-12)


def test_nsr_decay_preset_differs_from_nsr(warm, episodes, dapo):
    nsr, _ = _update_delta(warm, episodes, _learner("nsr"))
    decay, _ = _update_delta(warm, episodes, _learner("nsr_decay"))
    assert _relative(decay, dapo[4]) > 0.05 and _relative(decay, nsr) > 0.05


# -- CARE vs pseudo-label-only and random-label ----------------------------------------------------------------

GROUPS = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4])
ANSWERS = torch.tensor([1, 1, 2, 3, 3, 3, 4, 5, 5, 6, 7, 7, -1, 8, 8])  # majorities: 1, 3, 5, 7, 8
GT = t([0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 0, 1, 1])  # group 0's and group 2's majorities are wrong


def test_care_pseudo_label_trains_every_prompt_on_the_majority():
    rewards, scale, queried = care_labels(GT, ANSWERS, GROUPS, acquisition="pseudo_label")
    close(rewards, t([1, 1, 0, 1, 1, 1, 0, 1, 1, 0, 1, 1, 0, 1, 1]), tol=0)
    close(scale, torch.ones(15, dtype=F64), tol=0)
    assert not queried.any()


@pytest.mark.parametrize("mask_non_gt", [True, False])
def test_care_random_queries_a_uniform_draw(mask_non_gt):
    picked = torch.randperm(5, generator=torch.Generator().manual_seed(7))[:2]  # ⌈0.4·5⌉ = 2 prompts
    rewards, scale, queried = care_labels(GT, ANSWERS, GROUPS, acquisition="random", top_pct=0.4,
                                          generator=torch.Generator().manual_seed(7), mask_non_gt=mask_non_gt)
    chosen = torch.isin(GROUPS, picked)
    assert torch.equal(queried, chosen) and int(chosen.sum()) == 6
    pseudo = t([1, 1, 0, 1, 1, 1, 0, 1, 1, 0, 1, 1, 0, 1, 1])
    close(rewards, torch.where(chosen, GT, pseudo), tol=0)
    close(scale, chosen.to(F64) if mask_non_gt else torch.ones(15, dtype=F64), tol=0)


def test_care_presets_differ_from_care_and_from_each_other(warm, episodes):
    # step 25: after CARE's 20-step warm-up, its gate is open (before it, CARE too trains only the prompts it
    # queries, and on 4 prompts its one pick may be the random one)
    deltas = {name: _update_delta(warm, episodes, _learner(name), step=25)[0]
              for name in ("care", "care_pseudo_label", "care_random")}
    assert _relative(deltas["care_pseudo_label"], deltas["care"]) > 0.05
    assert _relative(deltas["care_random"], deltas["care"]) > 0.05
    assert _relative(deltas["care_random"], deltas["care_pseudo_label"]) > 0.05


# -- OWPO vs a reference-constrained (KL) baseline --------------------------------------------------------------


def _token_gradients(name: str, delta_ref: list[float], adv: float = 0.01) -> torch.Tensor:
    """∂loss/∂log π_θ per token under preset `name`, on-policy (r = 1), 2 tokens, log π_θ − log π_ref = delta_ref."""
    cfg = _learner(name)
    logp = t([[-1.0, -1.0]]).requires_grad_(True)
    batch = Batch(torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long),
                  torch.ones(1, 2, dtype=F64), logp.detach().clone(), t([adv]),
                  {"ref_logp": logp.detach() - t([delta_ref])})
    loss, _ = policy_loss(logp, batch, cfg, num_tokens=2.0, num_seqs=1.0, norm_const=2.0, ref_logp=batch.extras["ref_logp"],
                          plugins=build_plugins(cfg))
    return torch.autograd.grad(loss, logp)[0]


def test_owpo_keeps_the_verifiers_direction_where_the_kl_baseline_flips_it():
    # A = 0.01 > 0 on both tokens; token 0 is ahead of π_ref by 1 nat (a gain), token 1 behind by 0.5.
    # token-mean over 2 tokens: ∂/∂log π = ½·(−A·w) for OWPO, w = 1 ahead, 1 + κ·0.5 = 1.5 behind (κ = 1);
    # ½·(−A + β·(1 − e^{−Δ})) for the k3 baseline, β = 0.04: ½·(−0.01 + 0.04·0.632121) > 0 on token 0.
    owpo = _token_gradients("owpo", [1.0, -0.5])
    kl = _token_gradients("owpo_kl", [1.0, -0.5])
    close(owpo, t([[-0.005, -0.0075]]), tol=1e-12)
    close(kl, t([[0.5 * (-0.01 + 0.04 * (1 - 0.36787944117)), 0.5 * (-0.01 + 0.04 * (1 - 1.6487212707))]]), tol=1e-10)
    assert kl[0, 0] > 0 > owpo[0, 0]  # the constraint pushes a rewarded token down: the direction flipped


def test_owpo_kl_preset_is_owpos_reference_with_a_kl_term(warm, episodes, dapo):
    cfg = _learner("owpo_kl")
    assert cfg.plugins["owpo"].kappa == 0.0 and cfg.kl_coef == 0.04 and cfg.kl_estimator == "k3" and not cfg.kl_in_reward
    owpo, _ = _update_delta(warm, episodes, _learner("owpo"))
    kl, stats = _update_delta(warm, episodes, cfg)
    assert stats["kl"] > 0 and _relative(kl, dapo[1]) > 0.05 and _relative(kl, owpo) > 0.05


# -- the ablation's arms: each method against its paper's baseline, one config apart ---------------------------


def test_every_paper_comparison_is_one_config():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from arms import PAPER_COMPARISONS, RECIPES, comparison_configs, warm_start_key

    base = TrainConfig()
    for name, comparison in PAPER_COMPARISONS.items():
        method, baseline = comparison_configs(RECIPES[comparison.recipe](), name)
        assert (method.learner, method.env_kwargs) != (baseline.learner, baseline.env_kwargs), name
        assert comparison.paper_sign in (-1, 0, 1) and comparison.claim
    assert {c.method.preset for c in PAPER_COMPARISONS.values()} == set(registry()) | {"dapo"}  # dapo: adaptive levels
    assert {"care_pseudo_label", "care_random", "occ_detach", "occ_ce", "occ_fixed", "nsr_decay", "owpo_kl"} <= {
        c.baseline.preset for c in PAPER_COMPARISONS.values()}
    occ, detach = comparison_configs(base, "occ_vs_detach")  # one warm start, which trains the MTP head
    assert warm_start_key(occ) == warm_start_key(detach) and warm_start_key(occ)[1] == ("occ",)
    ih, immediate = comparison_configs(base, "ih_grpo")  # the paper's baseline executes at once: its own demos
    assert warm_start_key(ih) != warm_start_key(immediate) and immediate.env_kwargs["execution"] == "immediate"
    # ZipRL on the ledger recipe: HRR and DAPO share the agent-driven env and its warm start; the uniform baseline
    # compresses every page at one level and learns from the reader's own demonstrations (no zip tags to show)
    hrr, dapo = comparison_configs(RECIPES["ledger"](), "hrr_vs_dapo")
    assert warm_start_key(hrr) == warm_start_key(dapo) and dapo.env_kwargs["compressor_options"] == {"mode": "agent"}
    adaptive, uniform = comparison_configs(RECIPES["ledger"](), "zip_adaptive_vs_uniform")
    assert adaptive == dapo and uniform.env_kwargs["compressor_options"] == {"mode": "uniform", "level": 3}
    assert (adaptive.sft_teacher, uniform.sft_teacher) == ({"every_level": True}, {})
    assert warm_start_key(adaptive) != warm_start_key(uniform)


def test_ablation_paired_bootstrap_carries_task_and_seed_spread():
    """benchmarks/ablation.py's interval: the mean over seeds of the paired per-task differences; resampling seeds
    then tasks. No spread gives a zero-width interval; seeds that disagree widen it to their range, never beyond."""
    import sys
    from pathlib import Path

    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from ablation import paired_bootstrap

    same = [np.full(200, 0.05)] * 3
    assert paired_bootstrap(same) == pytest.approx((0.05, 0.05, 0.05))
    spread = [np.full(200, -0.1), np.full(200, 0.0), np.full(200, 0.1)]  # no task noise: only the seeds differ
    mean, low, high = paired_bootstrap(spread)
    assert mean == pytest.approx(0.0) and -0.1 - 1e-9 <= low < -0.03 and 0.03 < high <= 0.1 + 1e-9
    rng = np.random.default_rng(1)
    noisy = [rng.choice([-1.0, 0.0, 0.0, 1.0], 200) + 0.0 for _ in range(3)]  # task noise alone, same mean per seed
    mean, low, high = paired_bootstrap(noisy)
    assert low < mean < high and high - low > 0.05
