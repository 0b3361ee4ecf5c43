"""A training run killed with SIGKILL mid-way resumes exactly: same steps, same numbers, nothing lost or repeated."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentenv.cli import main
from agentenv.learn.train import COMPLETE_MARKER, find_checkpoint


ARGS = ["--steps=4", "--checkpoint_every=1", "--sft_steps=2", "--sft_episodes=8", "--learner.lr=2e-4", "--eval_tasks=0", "--tasks_per_step=2",
        "--group_size=2", "--max_new_tokens=12", "--learner.micro_batch_size=4", "--env_kwargs.kinds=[counting]"]
COMPARED = ("step", "reward_mean", "success_rate", "generated_tokens", "tokens", "loss", "grad_norm", "clip_frac")


def train_command(out_dir: Path, resume: bool = False) -> list[str]:
    return [sys.executable, "-m", "agentenv.cli", "train", f"--out_dir={out_dir}", *ARGS] + (["--resume"] if resume else [])


def rows(out_dir: Path) -> list[dict]:
    text = (out_dir / "metrics.jsonl").read_text() if (out_dir / "metrics.jsonl").exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def project(records):
    return [{k: r[k] for k in COMPARED} for r in records]


def test_sigkill_then_resume_continues_exactly(tmp_path):
    env = {**os.environ, "OMP_WAIT_POLICY": "passive", "HF_HUB_OFFLINE": "1"}
    reference = tmp_path / "reference"
    subprocess.run(train_command(reference), check=True, env=env, capture_output=True, timeout=240)
    expected = project(rows(reference))
    assert [r["step"] for r in expected] == [0, 1, 2, 3]

    killed = tmp_path / "killed"
    process = subprocess.Popen(train_command(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 200
    while len(rows(killed)) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # poll for the second step's record, then kill mid-run
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 2 <= len(rows(killed)) < 4, "the run must be killed mid-way for this test to mean anything"

    # and as if the kill had hit save_checkpoint between its two renames: only .tmp (newest) and .old left
    assert find_checkpoint(killed) is not None  # whichever window the real kill hit
    for leftover in ("checkpoint.tmp", "checkpoint.old"):
        shutil.rmtree(killed / leftover, ignore_errors=True)
    shutil.copytree(killed / "checkpoint", killed / "checkpoint.old")
    os.replace(killed / "checkpoint", killed / "checkpoint.tmp")
    subprocess.run(train_command(killed, resume=True), check=True, env=env, capture_output=True, timeout=240)
    resumed = project(rows(killed))
    assert [r["step"] for r in resumed] == [0, 1, 2, 3]  # every step exactly once
    assert resumed == expected  # same RNG, optimizer and data: the same numbers
    assert (killed / "checkpoint" / "state.pt").exists() and not (killed / "checkpoint.tmp").exists()


def _checkpoint_dir(path: Path, step: int, complete: bool = True) -> None:
    path.mkdir(parents=True)
    (path / "state.pt").write_text(f"step {step}")
    if complete:
        (path / COMPLETE_MARKER).write_text(f"{step}\n")


@pytest.mark.parametrize("left, expected_step", [
    ({"checkpoint": 3, "checkpoint.tmp": None}, 3),              # killed while writing the next one
    ({"checkpoint.old": 2, "checkpoint.tmp": 3}, 3),             # killed between the two renames
    ({"checkpoint": 3, "checkpoint.old": 2}, 3),                 # killed before removing the old one
    ({"checkpoint.old": 2, "checkpoint.tmp": None}, 2),          # between the renames, the new one still partial
])
def test_every_crash_window_of_save_checkpoint_leaves_a_checkpoint_to_resume(tmp_path, left, expected_step):
    for name, step in left.items():
        _checkpoint_dir(tmp_path / name, step if step is not None else 9, complete=step is not None)
    found = find_checkpoint(tmp_path)
    assert found == tmp_path / "checkpoint" and (found / "state.pt").read_text() == f"step {expected_step}"


def test_resume_with_nothing_to_resume_is_an_error_not_a_fresh_run(tmp_path, capsys):
    _checkpoint_dir(tmp_path / "checkpoint.tmp", 1, complete=False)  # a partial one does not count
    assert main(["train", f"--out_dir={tmp_path}", "--resume", *ARGS]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "config.yaml").exists()
