"""Peer side of benchmarks/bench_sandbox.py: gem-llm's and skyrl-gym's python tools on the same programs.

Run with the peers' venv (benchmarks/setup_peers.sh), never the project's:

    .venv-peers/bin/python benchmarks/peers_sandbox.py PROGRAMS_JSON [--quick]

Both peers run each call as `subprocess.run(["python", "-c", code])` (gem-llm 0.1.0:
`gem.utils.sandbox.run_python(code, "none")`, which first greps the source for forbidden imports;
skyrl-gym 0.4.0: `PythonCodeExecutorToolGroup.python`). The venv's bin directory goes first on PATH, as
activating the venv does, so `python` is this CPython and not a pyenv shim script. Prints one JSON line
per (peer, program): {"peer", "program", "median_us", "min_us", "n"}.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time


def main() -> None:
    programs: dict[str, list[str]] = json.loads(open(sys.argv[1]).read())
    os.environ["PATH"] = os.path.dirname(os.path.abspath(sys.executable)) + os.pathsep + os.environ.get("PATH", "")
    os.chdir(tempfile.mkdtemp(prefix="agentenv-peers-sandbox-"))  # gem makes a temp dir in cwd per call
    from gem.utils.sandbox import run_python
    from skyrl_gym.tools.python import PythonCodeExecutorToolGroup

    skyrl = PythonCodeExecutorToolGroup(timeout=30)
    peers = {
        "gem-llm": lambda code: run_python(code, "none", timeout=30)[1],
        "skyrl-gym": lambda code: skyrl.python(code),
    }
    for peer, run in peers.items():
        for program, sources in programs.items():
            times = []
            for source in sources:  # every source is new: a peer pays a fresh interpreter per call anyway
                t0 = time.perf_counter()
                out = run(source)
                times.append(time.perf_counter() - t0)
                if not str(out).strip():
                    raise SystemExit(f"{peer} printed nothing for {program}: {out!r}")
            print(json.dumps({"peer": peer, "program": program, "n": len(times),
                              "median_us": statistics.median(times) * 1e6, "min_us": min(times) * 1e6}), flush=True)


if __name__ == "__main__":
    main()
