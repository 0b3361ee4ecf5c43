"""Arms of a comparison that all start from one shared warm start (`ablation.py`, `hrr_ledger.py`).

The warm start (SFT + held-out evaluation, a `train` run with `steps=0`) is trained once; each arm resumes
from a copy of its step-0 checkpoint, so every arm starts from the same weights, optimizer and RNG state.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Callable

from agentenv.learn.train import TrainConfig, train


def run_arm(warm_dir: Path, cfg: TrainConfig, log: Callable[[str], None],
            prepare: Callable[[Path], None] | None = None) -> dict:
    """Copy `warm_dir` to `cfg.out_dir`, resume training there; per-step curves and the held-out summary.

    `prepare(out_dir)` may edit the copied checkpoint first (e.g. add an arm's extra parameters).
    """
    out_dir = Path(cfg.out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.copytree(warm_dir, out_dir)
    if prepare is not None:
        prepare(out_dir)
    (out_dir / "config.yaml").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))  # the arm's own config
    started = time.perf_counter()
    summary = train(cfg, resume=True, log=log)
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {"reward": [r["reward_mean"] for r in rows], "success": [r["success_rate"] for r in rows],
            "turns": [r["turns_mean"] for r in rows], "loss": [r["loss"] for r in rows],
            "success_before": summary["success_before"], "success_after": summary["success_after"],
            "wall_s": time.perf_counter() - started}
