"""Audio through the one learner: `agentenv train` on AudioReasoning-v0 tone tasks with the audio-language policy
(configs/audio.yaml: it hears the clip) and with the text policy (configs/audio-tools.yaml: tools only), side by
side. Writes `OUT.json` (each run's eval.json, wall time, load average, per-step metrics, per-kind held-out
accuracy of the warm start and of the final model) and `OUT.png` (training success per GRPO step; held-out
success before/after RL). Figures and commentary: benchmarks/audio_train.md.

    python benchmarks/bench_audio_train.py [--configs configs/audio.yaml configs/audio-tools.yaml] [--per-kind 100]
        [--out benchmarks/audio_train] [--set KEY=VALUE ...]

One torch thread (OMP_NUM_THREADS=1), as the README recommends on small CPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import agentenv  # noqa: E402,F401 - registers the envs
from agentenv.learn.train import held_out_seeds, load_config, train, trained_policy  # noqa: E402
from agentenv.rollout import collect  # noqa: E402


def per_kind_success(cfg, run_dir: Path, n: int) -> dict[str, float]:
    """Held-out success per task kind of the model checkpointed in `run_dir` (the train run's own evaluation seeds)."""
    policy, _ = trained_policy(cfg, run_dir)
    out = {}
    for kind in cfg.env_kwargs.get("kinds", []):
        episodes = collect(cfg.env_id, policy, held_out_seeds(n), env_kwargs={**cfg.env_kwargs, "kinds": [kind]},
                           max_seq_len=cfg.max_seq_len)
        out[kind] = float(np.mean([e.success for e in episodes]))
    return out


def run(config: str, overrides: list[str], per_kind: int) -> dict:
    cfg = load_config(config, overrides)
    out_dir = Path(cfg.out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    warm = out_dir / "warm_start"  # a run directory holding the step-0 checkpoint

    def log(message: str) -> None:
        print(f"[{Path(config).stem}] {message}", flush=True)
        # the step-0 checkpoint (the warm start) is replaced at step `checkpoint_every`: keep a copy for per-kind figures
        if message.startswith("step 1/") and not warm.exists():
            shutil.copytree(out_dir / "checkpoint", warm / "checkpoint")

    load_before, started = os.getloadavg(), time.perf_counter()
    summary = train(cfg, log=log)
    wall = time.perf_counter() - started
    load_after = os.getloadavg()
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    result = {"config": config, "overrides": overrides, "summary": summary, "wall_s": wall,
              "load_avg_1m_5m_15m": {"start": load_before, "end": load_after}, "torch_threads": torch.get_num_threads(),
              "metrics": rows}
    if per_kind and warm.exists():
        result["per_kind"] = {"n": per_kind, "warm_start": per_kind_success(cfg, warm, per_kind),
                              "after_rl": per_kind_success(cfg, out_dir, per_kind)}
    return result


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    names = []
    for result in results:
        name = f"{Path(result['config']).stem} ({result['summary']['input_path'].split(':')[0]})"
        names.append(name)
        steps = [r["step"] + 1 for r in result["metrics"]]
        success = np.array([r["success_rate"] for r in result["metrics"]])
        smooth = np.convolve(success, np.ones(5) / 5, mode="valid") if success.size >= 5 else success
        line, = left.plot(steps, success, alpha=0.3)
        left.plot(steps[len(steps) - smooth.size:], smooth, color=line.get_color(), label=f"{name}, 5-step mean")
    left.set_xlabel("GRPO step")
    left.set_ylabel("success of the step's rollouts")
    left.set_ylim(0, 1)
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    width = 0.38
    for i, result in enumerate(results):
        before, after = result["summary"]["success_before"], result["summary"]["success_after"]
        bars = right.bar([i - width / 2, i + width / 2], [before, after], width, color=["#999999", "#3366cc"])
        for bar, value in zip(bars, (before, after)):
            right.text(bar.get_x() + bar.get_width() / 2, value + 0.02, f"{value:.3f}", ha="center", fontsize=9)
    right.set_xticks(range(len(results)), names, fontsize=8)
    right.set_ylim(0, 1)
    right.set_title(f"held-out success ({results[0]['summary']['eval_tasks']} tasks): warm start (grey) → after GRPO (blue)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["configs/audio.yaml", "configs/audio-tools.yaml"])
    parser.add_argument("--per-kind", type=int, default=100, help="held-out tasks per kind for the per-kind figures (0: skip)")
    parser.add_argument("--out", default="benchmarks/audio_train")
    parser.add_argument("--set", nargs="*", default=[], help="overrides for every config, KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    for config in args.configs:  # written after each run: a later failure keeps the earlier figures
        results.append(run(config, [f"--{item}" for item in args.set], args.per_kind))
        Path(f"{args.out}.json").write_text(json.dumps(results, indent=1))
        plot(results, Path(f"{args.out}.png"))
    for result in results:
        print(json.dumps({k: result[k] for k in ("config", "summary", "wall_s", "load_avg_1m_5m_15m")} | {"per_kind": result.get("per_kind")}))


if __name__ == "__main__":
    main()
