"""A training run killed with SIGKILL mid-way resumes exactly: same steps, same numbers, nothing lost or repeated."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


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

    subprocess.run(train_command(killed, resume=True), check=True, env=env, capture_output=True, timeout=240)
    resumed = project(rows(killed))
    assert [r["step"] for r in resumed] == [0, 1, 2, 3]  # every step exactly once
    assert resumed == expected  # same RNG, optimizer and data: the same numbers
    assert (killed / "checkpoint" / "state.pt").exists() and not (killed / "checkpoint.tmp").exists()
