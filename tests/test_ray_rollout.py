"""The Ray rollout backend (`agentenv.distributed`): the same episodes as the local loop, stateful tools living
with their env in the actor, and a worker killed mid-rollout replaced with nothing lost or duplicated.

One local cluster for the module (2 CPUs, no dashboard, no auth token written under ~): `ray.init` costs
~11-17 s, each set of 2 env actors ~2 s. Skipped when the `ray` extra is not installed."""

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster: no token under ~/.ray
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # CI reaches package registries only

import pytest

ray = pytest.importorskip("ray", reason="the Ray backend needs the `ray` extra: pip install 'agentenv[ray]'")

import sys  # noqa: E402

import torch  # noqa: E402

import agentenv  # noqa: E402, F401 - registers the envs
from agentenv.distributed import EnvWorker, RayRollout, WorkerLost  # noqa: E402
from agentenv.distributed.ray_rollout import import_ray  # noqa: E402
from agentenv.envs.tool_reasoning.scripted import ScriptedPolicy  # noqa: E402
from agentenv.errors import UserError  # noqa: E402
from agentenv.learn.learner import LearnerConfig, episode_advantages, make_batch, update  # noqa: E402
from agentenv.policies.hf import HFPolicy  # noqa: E402
from agentenv.policies.tiny import tiny_model, tiny_tokenizer  # noqa: E402
from agentenv.registration import scripted_policy  # noqa: E402
from agentenv.rollout import collect, drive, iter_episodes  # noqa: E402

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
    import json

    from agentenv.learn.train import load_config, train

    args = ["--steps=2", "--sft_steps=20", "--sft_episodes=64", "--eval_tasks=8", "--tasks_per_step=2", "--group_size=4",
            "--max_new_tokens=12"]
    torch.set_num_threads(1)
    runs = {}
    for backend in ("local", "ray"):
        out = tmp_path / backend
        summary = train(load_config(None, [*args, f"--out_dir={out}", f"--rollout.backend={backend}", "--rollout.workers=2"]),
                        log=lambda message: None)
        rows = [{k: v for k, v in json.loads(line).items() if not k.endswith("_s") and k != "throughput_tok_s"}
                for line in (out / "metrics.jsonl").read_text().splitlines()]
        runs[backend] = (rows, summary["success_before"], summary["success_after"],
                         torch.load(out / "checkpoint" / "state.pt", weights_only=False)["model"])
    (a_rows, a_before, a_after, a_model), (b_rows, b_before, b_after, b_model) = runs["local"], runs["ray"]
    assert a_rows == b_rows and (a_before, a_after) == (b_before, b_after)
    assert all(torch.equal(a_model[k], b_model[k]) for k in a_model)
