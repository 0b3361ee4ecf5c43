"""The python tool's cost, side by side with gem-llm's and skyrl-gym's python tools and with plain `exec`.

    python benchmarks/bench_sandbox.py [--quick] [--json out.json]

Every call gets a new source (a constant changes), so no compile cache ever hits; cold starts are
measured in fresh processes and reported apart. Measured:

* ours: cold start (a fresh process: `PythonTool()` -> first result, the shared zygote's start included;
  the `import agentenv` before it reported apart), first call of an episode (a fresh pre-forked worker:
  `reset()` then `run`), a trivial call (`print(k+1)`), and three loop-heavy programs (a loop with
  `s += i*i`, a sieve with list index writes, a dict word count with `.get` and `.split`), end to end
  through `PythonTool.run` against plain `exec(compile(src))` of the same source in this process;
* peers (their own venv, benchmarks/peers_sandbox.py): the same trivial and loop-heavy programs through
  gem-llm's `run_python(code, "none")` and skyrl-gym's `PythonCodeExecutorToolGroup.python`, which start
  a new `python -c` per call (so each of their calls is a cold start);
* collect: 64 scripted ToolReasoning-v0 episodes (16 envs in lockstep, the runner of `agentenv run`),
  each variant in a fresh process with env construction and the pool's start inside the timing: the
  sandboxed `python` tool, the same programs through an unsandboxed in-process `exec` tool of the same
  name and output (the sandbox's whole cost is the difference), and calculator only (the scripted agent's
  python calls then fail at once as unknown tools: a floor, not the same work).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PEER_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
PROGRAMS = {
    "trivial": "print({k} + 1)",
    "loop": "s = 0\nfor i in range(300000):\n    s += i * i\nprint(s + {k})",
    "sieve": (
        "n = 200000\nis_p = [True] * (n + 1)\nis_p[0] = is_p[1] = False\nfor i in range(2, int(n ** 0.5) + 1):\n"
        "    if is_p[i]:\n        for j in range(i * i, n + 1, i):\n            is_p[j] = False\nprint(sum(is_p) + {k})"
    ),
    "dict-count": (
        "words = ('the quick brown fox jumps over the lazy dog {k} ' * 20000).split()\nd = {{}}\n"
        "for w in words:\n    d[w] = d.get(w, 0) + 1\nprint(len(d))"
    ),
}
_counter = iter(range(10**9))


def source(program: str) -> str:
    return PROGRAMS[program].format(k=next(_counter))


def _median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def _p90_us(samples: list[float]) -> float:
    return sorted(samples)[int(0.9 * (len(samples) - 1))] * 1e6


def cold_start() -> dict[str, float]:
    script = (
        "import time\nt0 = time.perf_counter()\nfrom agentenv.tools.python_tool import PythonTool\n"
        "t1 = time.perf_counter()\nr = PythonTool().run('print(1 + 1)')\nt2 = time.perf_counter()\n"
        "assert r.ok and r.content == '2', r\nprint(t1 - t0, t2 - t1)"
    )
    runs = []
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
        runs.append([float(x) for x in out.stdout.split()])
    return {"import_ms": statistics.median(r[0] for r in runs) * 1e3, "first_result_ms": statistics.median(r[1] for r in runs) * 1e3}


def ours(quick: bool) -> dict[str, dict[str, float]]:
    from agentenv.tools.python_tool import PythonTool

    tool = PythonTool(timeout_s=60)
    tool.start()
    results: dict[str, dict[str, float]] = {}
    firsts = []
    for _ in range(20 if quick else 100):
        tool.reset()  # a new episode: the next call leases a fresh pre-forked worker
        t0 = time.perf_counter()
        assert tool.run(source("trivial")).ok
        firsts.append(time.perf_counter() - t0)
    results["episode first call"] = {"median_us": _median_us(firsts), "p90_us": _p90_us(firsts)}
    for label, new in (("trivial (new source)", True), ("trivial (same source)", False)):
        samples = []
        for _ in range(300 if quick else 3000):
            code = source("trivial") if new else "print(1 + 1)"
            t0 = time.perf_counter()
            tool.run(code)
            samples.append(time.perf_counter() - t0)
        results[label] = {"median_us": _median_us(samples), "p90_us": _p90_us(samples)}
    for program in ("loop", "sieve", "dict-count"):
        sandboxed, plain = [], []
        for _ in range(3 if quick else 9):  # alternate, so drift in machine load hits both sides alike
            code = source(program)
            t0 = time.perf_counter()
            result = tool.run(code)
            sandboxed.append(time.perf_counter() - t0)
            assert result.ok, result
            code = source(program)
            t0 = time.perf_counter()
            exec(compile(code, "<plain>", "exec"), {"print": lambda *a: None})
            plain.append(time.perf_counter() - t0)
        results[program] = {"median_us": _median_us(sandboxed), "plain_exec_us": _median_us(plain),
                            "min_us": min(sandboxed) * 1e6, "plain_min_us": min(plain) * 1e6}
    tool.close()
    return results


def peers(quick: bool) -> dict[tuple[str, str], dict]:
    if not PEER_PYTHON.exists():
        print(f"peers not installed: run `bash benchmarks/setup_peers.sh` to create {PEER_PYTHON.parent.parent}", file=sys.stderr)
        return {}
    n = {"trivial": 20 if quick else 50, "loop": 3 if quick else 7, "sieve": 3 if quick else 7, "dict-count": 3 if quick else 7}
    programs = {p: [source(p) for _ in range(count)] for p, count in n.items()}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(programs, fh)
    try:
        out = subprocess.run([str(PEER_PYTHON), str(ROOT / "benchmarks" / "peers_sandbox.py"), fh.name],
                             capture_output=True, text=True, check=True)
    finally:
        os.unlink(fh.name)
    records = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return {(r["peer"], r["program"]): r for r in records}


COLLECT = """
import sys, time
t0 = time.perf_counter()
import gymnasium as gym
import agentenv
from agentenv.envs.tool_reasoning.scripted import ScriptedPolicy
from agentenv.runner import run_episodes
variant = sys.argv[1]
tools = {"sandboxed": ["python", "calculator"], "calculator only": ["calculator"]}.get(variant)
if tools is None:  # unsandboxed: the same programs through plain exec in this process
    import contextlib, io
    @agentenv.tool(name="python")
    def python(code: str) -> str:
        '''Run Python code (unsandboxed reference).'''
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, "<plain>", "exec"), {})
        return out.getvalue().rstrip("\\n")
    tools = [python, "calculator"]
t1 = time.perf_counter()
logs = list(run_episodes("agentenv/ToolReasoning-v0", ScriptedPolicy(), 64, seed=0, batch_size=16, env_kwargs={"tools": tools}))
t2 = time.perf_counter()
print(t2 - t1, sum(l.success for l in logs), sum(l.tool_calls for l in logs))
"""


def collect(quick: bool) -> dict[str, dict[str, float]]:
    rows = {}
    for variant in ("sandboxed", "unsandboxed exec", "calculator only"):
        walls, process_walls, success, calls = [], [], 0, 0
        for _ in range(1 if quick else 3):
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", COLLECT, variant], cwd=ROOT, capture_output=True, text=True, check=True)
            process_walls.append(time.perf_counter() - t0)
            wall, success, calls = out.stdout.split()
            walls.append(float(wall))
        rows[variant] = {"wall_s": statistics.median(walls), "process_wall_s": statistics.median(process_walls),
                         "success": int(success), "tool_calls": int(calls)}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions (smoke run)")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; python {sys.version.split()[0]}")

    cold = cold_start()
    mine = ours(args.quick)
    theirs = peers(args.quick)
    gathered = collect(args.quick)

    print(f"\ncold start (fresh process): import agentenv.tools.python_tool {cold['import_ms']:.0f} ms, "
          f"PythonTool() -> first result {cold['first_result_ms']:.0f} ms (zygote start + first worker)")
    print(f"\n{'program':<22} {'agentenv':>12} {'plain exec':>11} {'ours/exec':>9} {'gem-llm':>11} {'skyrl-gym':>11} {'gem/ours':>9} {'skyrl/ours':>10}")
    for label, row in mine.items():
        program = label.split(" ")[0] if label.startswith("trivial") else label
        gem = theirs.get(("gem-llm", program), {}).get("median_us") if "same source" not in label and label != "episode first call" else None
        sky = theirs.get(("skyrl-gym", program), {}).get("median_us") if gem is not None else None
        plain = row.get("plain_exec_us")
        cells = [f"{row['median_us']:>10.0f}µs", f"{plain:>9.0f}µs" if plain else f"{'':>11}",
                 f"{row['median_us'] / plain:>8.2f}x" if plain else f"{'':>9}",
                 f"{gem:>9.0f}µs" if gem else f"{'n/a':>11}", f"{sky:>9.0f}µs" if sky else f"{'n/a':>11}",
                 f"{gem / row['median_us']:>8.1f}x" if gem else f"{'':>9}", f"{sky / row['median_us']:>9.1f}x" if sky else ""]
        print(f"{label:<22} " + " ".join(cells))
    print("(medians; new source every call; peers start `python -c` per call; ratio > 1: the peer is slower)")
    base = gathered["unsandboxed exec"]
    print("\n64-episode collect, scripted policy (fresh process each, 16 envs in lockstep): the collect alone "
          "(env construction and the pool's start included), and the whole process as `agentenv run` pays it "
          "(interpreter start and imports included)")
    for variant, row in gathered.items():
        print(f"  {variant:<18} collect {row['wall_s']:6.3f} s ({row['wall_s'] / base['wall_s']:5.2f}x)   "
              f"process {row['process_wall_s']:5.2f} s ({row['process_wall_s'] / base['process_wall_s']:4.2f}x)   "
              f"success {row['success']}/64, {row['tool_calls']} tool calls")
    extra_ms = (gathered["sandboxed"]["wall_s"] - base["wall_s"]) / 64 * 1e3
    print(f"  the sandbox adds {extra_ms:.1f} ms per episode (a fresh forked, confined worker each)")
    if args.json:
        Path(args.json).write_text(json.dumps({"cold": cold, "ours": mine, "collect": gathered,
                                               "peers": {f"{k[0]}:{k[1]}": v for k, v in theirs.items()}}, indent=1))


if __name__ == "__main__":
    main()
