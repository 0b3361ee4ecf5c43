"""Data-parallel learner (torch.distributed, gloo on CPU): one update with world size 2 equals world size 1 on
the same batch, and `torchrun -m agentenv train` runs and resumes exactly."""

import json
import os
import socket
import subprocess
import sys
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


@pytest.mark.parametrize("settings", [
    {"aggregation": "token-mean", "micro_batch_size": 2},
    pytest.param({"aggregation": "seq-mean-token-mean", "micro_batch_size": 4, "ppo_epochs": 2}, marks=pytest.mark.slow),
    pytest.param({"aggregation": "seq-mean-token-sum-norm", "micro_batch_size": 3, "entropy_coef": 0.01}, marks=pytest.mark.slow),
], ids=["token-mean", "seq-mean-2-epochs", "sum-norm-entropy"])
def test_world_size_two_equals_world_size_one(tmp_path, settings):
    settings = {"lr": 0.5, "max_grad_norm": 0.5, **settings}  # the clip is active: it must see the global gradient
    one, two = _update(tmp_path, 1, settings), _update(tmp_path, 2, settings)
    for name, value in one["params"].items():
        torch.testing.assert_close(two["params"][name], value, rtol=0, atol=1e-6)
    for key in ("loss", "grad_norm", "clip_frac"):
        assert two["stats"][key] == pytest.approx(one["stats"][key], rel=1e-5, abs=1e-7)


def _torchrun(out_dir: Path, *args: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port()),
           "-m", "agentenv", "train", "--tasks_per_step=4", "--group_size=2", "--sft_steps=10", "--sft_episodes=32",
           "--eval_tasks=8", "--max_new_tokens=8", "--checkpoint_every=1", "--learner.micro_batch_size=4",
           f"--out_dir={out_dir}", *args]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_torchrun_trains_and_resumes_exactly(tmp_path):
    _torchrun(tmp_path / "straight", "--steps=2")
    _torchrun(tmp_path / "resumed", "--steps=1")
    _torchrun(tmp_path / "resumed", "--steps=2", "--resume")
    rows = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]  # rank 0 alone writes: one row per step
    a, b = (torch.load(tmp_path / run / "checkpoint" / "state.pt", weights_only=False) for run in ("straight", "resumed"))
    assert len(a["rng_ranks"]) == 2 and a["step"] == b["step"] == 2
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    resumed = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in rows]
