"""Hash short `agentenv train` runs so two versions of the code can be compared (metrics and final weights).

    python benchmarks/train_hashes.py [REPO_ROOT] [--old-keys] [--only NAME,...]

REPO_ROOT: a checkout of another commit (default: this one); `--old-keys` spells plug-in settings the way
the code before the plug-in redesign did (`--learner.hrr_beta=1`, not `--learner.plugins.hrr.beta=1`). Each case
is a subprocess with one thread; a case's hash covers every `metrics.jsonl` field except wall times, the
held-out figures, and every tensor of the final checkpoint's model. Equal hashes: identical runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SMALL = ["--steps=3", "--sft_steps=30", "--sft_episodes=128", "--eval_tasks=16", "--tasks_per_step=4", "--group_size=4",
         "--checkpoint_every=3"]
PRESETS = ["grpo", "dr_grpo", "dapo", "gspo", "cispo", "care", "amr_sd", "divergence", "direction", "fipo", "owpo", "nsr",
           "ih_grpo", "occ"]
LEDGER = ["config:env_id: agentenv/Ledger-v0\nenv_kwargs: {turns: 4, ledgers: 2, probe_every: 2, compressor: zip, "
          "budget_tokens: 256}\nmax_new_tokens: 24\n", "--sft_steps=10", "--sft_batch_size=8", "--eval_tasks=4"]


def cases(old_keys: bool) -> dict[str, list[str]]:
    out = {"default": []}
    for name in PRESETS:
        out[f"preset-{name}"] = [f"--learner.preset={name}"] + (["--env_kwargs.execution=delayed"] if name == "ih_grpo" else [])
    out["care-heuristic"] = ["--learner.preset=care", "--learner.care_acquisition=heuristic" if old_keys
                             else "--learner.plugins.care.acquisition=heuristic"]
    out["hrr-ledger"] = LEDGER + (["--learner.hrr_beta=1.0", "--learner.hrr_group_norm=true"] if old_keys
                                  else ["--learner.plugins.hrr.beta=1.0", "--learner.plugins.hrr.group_norm=true"])
    out["ledger-no-hrr"] = LEDGER
    return out


def run_case(root: Path, args: list[str]) -> str:
    import torch

    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        config = [a for a in args if a.startswith("config:")]
        if config:
            Path(out, "case.yaml").write_text(config[0].removeprefix("config:"))
            args = [str(Path(out, "case.yaml"))] + [a for a in args if not a.startswith("config:")]
        code = "import torch, sys; torch.set_num_threads(1); from agentenv.cli import main; sys.exit(main(sys.argv[1:]))"
        done = subprocess.run([sys.executable, "-c", code, "train", *SMALL, *args, f"--out_dir={out}/run"], env=env,
                              capture_output=True, text=True, cwd=root)
        if done.returncode != 0:
            return "FAILED: " + done.stderr.strip().splitlines()[-1]
        h = hashlib.sha256()
        for line in Path(out, "run", "metrics.jsonl").read_text().splitlines():
            row = {k: v for k, v in json.loads(line).items() if not k.endswith("_s") and k != "throughput_tok_s"}
            h.update(json.dumps(row, sort_keys=True).encode())
        summary = json.loads(Path(out, "run", "eval.json").read_text())
        h.update(json.dumps([summary["success_before"], summary["success_after"]]).encode())
        state = torch.load(Path(out, "run", "checkpoint", "state.pt"), weights_only=False)["model"]
        for name in sorted(state):
            h.update(name.encode())
            h.update(state[name].float().numpy().tobytes())
        return f"{h.hexdigest()[:16]} before={summary['success_before']} after={summary['success_after']}"


def main() -> None:
    argv = sys.argv[1:]
    old_keys = "--old-keys" in argv
    only = next((a.split("=", 1)[1].split(",") for a in argv if a.startswith("--only=")), None)
    positional = [a for a in argv if not a.startswith("--")]
    root = Path(positional[0]).resolve() if positional else Path(__file__).resolve().parents[1]
    for name, args in cases(old_keys).items():
        if only is None or name in only:
            print(f"{name:18s} {run_case(root, args)}", flush=True)


if __name__ == "__main__":
    main()
