"""Env overhead side by side: agentenv vs gem-llm vs skyrl-gym on the same math task, in one run.

Measures the median µs of one `env.step` (a) with an action that calls no tool and does not end the
episode, and (b) with an action that makes one trivial python call (`print(1+1)`, with a comment that
changes every call, so our compile cache never hits; the peers start a new `python -c` per call, which
has no cache to hit). gem-llm has no non-terminal step without a tool call: its (a) figure is a terminal
step graded through a multiprocessing pool, not the same operation, and the table says so. The agentenv side
runs in this process; the peers run in their own venv (`benchmarks/setup_peers.sh` builds
`.venv-peers`), launched from here by `benchmarks/peers_env.py`, which documents exactly how each
peer's env is built and stepped. Only `step` is timed; resets are not.

    python benchmarks/bench_env.py [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym

import agentenv  # noqa: F401 - registers the envs

sys.path.insert(0, str(Path(__file__).parent))
from peers_env import ANSWER, CODE, NO_TOOL_ACTION, QUESTION  # noqa: E402 - the shared task definition

ROOT = Path(__file__).resolve().parent.parent
PEER_PYTHON = ROOT / ".venv-peers" / "bin" / "python"


def python_action(i: int) -> str:
    return '<tool_call>{"name": "python", "arguments": {"code": "%s  # call %d"}}</tool_call>' % (CODE, i)


def time_steps(action_for, n: int, warmup: int, check) -> list[int]:
    env = gym.make("agentenv/ToolReasoning-v0", tools=["python"], tasks=[{"question": QUESTION, "answer": ANSWER}])
    env.reset(seed=0)
    samples = []
    for i in range(n + warmup):
        action = action_for(i)
        t0 = time.perf_counter_ns()
        obs, reward, terminated, truncated, info = env.step(action)
        t1 = time.perf_counter_ns()
        if i == 0:
            check(obs, info)
        if i >= warmup:
            samples.append(t1 - t0)
        if terminated or truncated:
            env.reset(seed=0)
    env.close()
    return samples


def check_no_tool(obs, info):
    assert info["tool_calls"] == [] and obs[-2]["content"] == NO_TOOL_ACTION


def check_python(obs, info):
    assert info["tool_results"][0]["ok"] and info["tool_results"][0]["content"].strip() == "2", info


def ours(quick: bool) -> dict[str, float]:
    n_fast, n_tool = (200, 50) if quick else (5000, 1000)
    return {
        "step_no_tool": statistics.median(time_steps(lambda i: NO_TOOL_ACTION, n_fast, 100, check_no_tool)) / 1000,
        "python_call": statistics.median(time_steps(python_action, n_tool, 20, check_python)) / 1000,
    }


def peers(quick: bool) -> dict[tuple[str, str], dict]:
    if not PEER_PYTHON.exists():
        print(f"peers not installed: run `bash benchmarks/setup_peers.sh` to create {PEER_PYTHON.parent.parent}", file=sys.stderr)
        return {}
    command = [str(PEER_PYTHON), str(ROOT / "benchmarks" / "peers_env.py")] + (["--quick"] if quick else [])
    lines = subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    return {(r["peer"], r["what"]): r for r in records if r.get("primary")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions (smoke run)")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    args = parser.parse_args()

    mine = ours(args.quick)
    theirs = peers(args.quick)
    rows = []
    print(f"{'measurement':<14} {'agentenv µs':>12} {'gem-llm µs':>12} {'skyrl-gym µs':>13} {'gem/ours':>9} {'skyrl/ours':>11}")
    for what in ("step_no_tool", "python_call"):
        gem = (theirs.get(("gem-llm", what)) or {}).get("median_us")
        sky = (theirs.get(("skyrl-gym", what)) or {}).get("median_us")
        ratio = lambda peer: f"{peer / mine[what]:.1f}x" if peer else "n/a"
        print(f"{what:<14} {mine[what]:>12.1f} {gem or float('nan'):>12.1f} {sky or float('nan'):>13.1f} {ratio(gem):>9} {ratio(sky):>11}")
        rows.append({"what": what, "agentenv_us": mine[what], "gem_llm_us": gem, "skyrl_gym_us": sky})
    print("(ratio > 1: the peer is that many times slower than agentenv; medians, same machine, same run)")
    print("not the same operation: gem-llm's step_no_tool is a TERMINAL step graded by math_verify through a "
          "multiprocessing.Pool(1) round trip (gem has no non-terminal step without a tool call); ours and "
          "skyrl-gym's are non-terminal steps that only append to the history.")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "peers": {f"{k[0]}:{k[1]}": v for k, v in theirs.items()}}, indent=1))


if __name__ == "__main__":
    main()
