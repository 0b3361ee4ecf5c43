"""Data-parallel learner (torch.distributed, gloo on CPU), DDP-style and FSDP2: updates with world size 2 equal
world size 1 on the same batch, and `torchrun -m agentenv train` runs, and resumes exactly after one rank is
killed."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
ROOT = HERE.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _update(tmp_path, world: int, settings: dict) -> dict:
    out = tmp_path / f"world{world}.pt"
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(world),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{HERE}"}
    procs = [subprocess.Popen([sys.executable, str(HERE / "dist_update.py"), str(out), json.dumps(settings)],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stderr=subprocess.PIPE, text=True)
             for r in range(world)]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-2000:]
    return torch.load(out, weights_only=False)


# FSDP2 cases: 3 GRPO groups, so rank 0 has 6 rows and rank 1 has 3 (3 vs 2 micro-batches of 2: rank 1 runs a
# zero-loss filler, as every forward is a collective); share_prefix=4 takes the shared-prompt path (two forwards)
# where both ranks can; two updates with SGD momentum, so the second one reads optimizer state.
FSDP2_UNEVEN = {"parallel": "fsdp2", "groups": 3, "micro_batch_size": 2, "share_prefix": 4, "updates": 2, "momentum": 0.9}


@pytest.mark.parametrize("settings", [
    {"aggregation": "token-mean", "micro_batch_size": 2},
    pytest.param({"aggregation": "seq-mean-token-mean", "micro_batch_size": 4, "ppo_epochs": 2}, marks=pytest.mark.slow),
    pytest.param({"aggregation": "seq-mean-token-sum-norm", "micro_batch_size": 3, "entropy_coef": 0.01}, marks=pytest.mark.slow),
    {**FSDP2_UNEVEN, "aggregation": "token-mean"},
    pytest.param({**FSDP2_UNEVEN, "aggregation": "seq-mean-token-mean", "ppo_epochs": 2, "entropy_coef": 0.01},
                 marks=pytest.mark.slow),
], ids=["token-mean", "seq-mean-2-epochs", "sum-norm-entropy", "fsdp2-token-mean", "fsdp2-2-epochs-entropy"])
def test_world_size_two_equals_world_size_one(tmp_path, settings):
    settings = {"lr": 0.5, "max_grad_norm": 0.5, **settings}  # the clip is active: it must see the global gradient
    one, two = _update(tmp_path, 1, settings), _update(tmp_path, 2, settings)
    for name, value in one["params"].items():
        torch.testing.assert_close(two["params"][name], value, rtol=0, atol=1e-6)
    for key in ("loss", "grad_norm", "clip_frac"):
        assert two["stats"][key] == pytest.approx(one["stats"][key], rel=1e-5, abs=1e-7)


TRAIN_ARGS = ["--tasks_per_step=4", "--group_size=2", "--sft_steps=10", "--sft_episodes=32", "--eval_tasks=2",
              "--max_new_tokens=8", "--checkpoint_every=1", "--learner.micro_batch_size=4", "--steps=3",
              "--learner.entropy_coef=0.01"]  # the entropy term moves the weights even when every reward is equal


def _torchrun(out_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port()),
            "-m", "agentenv", "train", *TRAIN_ARGS, f"--out_dir={out_dir}", *args]


TORCHRUN_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _rows(out_dir: Path) -> list[dict]:
    path = out_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _kill_rank(launcher: subprocess.Popen, rank: int) -> None:
    """SIGKILL the worker process of `rank` that torchrun (`launcher`) started."""
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    for pid in children:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            os.kill(int(pid), signal.SIGKILL)
            return
    raise AssertionError(f"no worker of rank {rank} among {children}")


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp2"])
def test_torchrun_trains_and_resumes_exactly_after_a_rank_is_killed(tmp_path, parallel):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = subprocess.run(_torchrun(straight, f"--parallel={parallel}"), env=TORCHRUN_ENV, capture_output=True, text=True,
                          timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _rows(straight)
    assert [r["step"] for r in rows] == [0, 1, 2]  # rank 0 alone writes: one row per step
    held_out = json.loads((straight / "eval.json").read_text())["held_out_after"]
    assert len(held_out) == 2  # each rank ran one of the two tasks; eval.json has both, in seed order
    assert done.stdout.count("step 1/3 ") == 1  # and logs

    launcher = subprocess.Popen(_torchrun(killed, f"--parallel={parallel}"), env=TORCHRUN_ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not _rows(killed) and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the first step's record: kill rank 1 somewhere in the second step
    _kill_rank(launcher, 1)
    assert launcher.wait(timeout=120) != 0  # torchrun stops the other rank and fails
    assert 1 <= len(_rows(killed)) < 3, "the run must be killed mid-way for this test to mean anything"
    done = subprocess.run(_torchrun(killed, f"--parallel={parallel}", "--resume"), env=TORCHRUN_ENV, capture_output=True,
                          text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]

    resumed = _rows(killed)
    assert [r["step"] for r in resumed] == [0, 1, 2]  # every step exactly once
    compared = ("reward_mean", "generated_tokens", "tokens", "loss", "grad_norm", "entropy", "clip_frac")
    assert [[r[k] for k in compared] for r in resumed] == [[r[k] for k in compared] for r in rows]
    a, b = (torch.load(run / "checkpoint" / "state.pt", weights_only=False) for run in (straight, killed))
    assert len(a["rng_ranks"]) == 2 and a["step"] == b["step"] == 3
    assert a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(x, y) for i in a["optimizer"]["state"] for x, y in
               zip(a["optimizer"]["state"][i].values(), b["optimizer"]["state"][i].values()))
