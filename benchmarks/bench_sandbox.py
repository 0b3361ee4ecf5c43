"""Benchmark of the python tool: the chosen worker-process design against the rejected in-process one.

    python benchmarks/bench_sandbox.py [--calls 3000] [--quick]

Measures, for `agentenv.tools.PythonTool` (persistent RestrictedPython worker subprocess):
  * a trivial call (`print(1+1)`) end to end from `invoke` (median / p90, µs),
  * a call whose source is new each time (RestrictedPython compile, no cache hit),
  * a loop-heavy program,
  * the cold start (new tool -> first result), the first call after a timeout kill (with and without the
    spare worker), the worker's memory baseline,
and for the rejected design (RestrictedPython in-process, `sys.settrace` budget):
  * the same trivial call and loop-heavy program,
  * how far a 50 ms budget is overshot by one long C-level operation (the trace hook cannot interrupt it).
The in-process design also cannot bound memory: `'a'*10**10` would allocate 10 GB in the caller's process
(when tried, the process was OOM-killed), so that case is not run here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agentenv.tools._sandbox_worker import SANDBOX_FILENAME, Sandbox  # noqa: E402
from agentenv.tools.python_tool import PythonTool  # noqa: E402

TRIVIAL = "print(1+1)"
LOOP = "s = 0\nfor i in range(300000):\n    s += i * i\nprint(s)"
C_LEVEL = "import math\nx = math.factorial(250000)\nprint(x % 10)"


def _us(seconds: float) -> float:
    return seconds * 1e6


def _timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


class TracedInProcess:
    """The rejected alternative: the same sandbox, in this process, stopped by a settrace step budget."""

    def __init__(self) -> None:
        self.sandbox = Sandbox()

    def run(self, code: str, budget_s: float = 5.0) -> tuple[bool, str | None, str]:
        deadline = time.perf_counter() + budget_s
        counter = [0]

        def local(frame, event, arg):  # checks the clock every 256 events
            counter[0] += 1
            if not counter[0] & 255 and time.perf_counter() > deadline:
                raise TimeoutError(f"execution exceeded {budget_s:g} s")
            return local

        def global_(frame, event, arg):
            return local if frame.f_code.co_filename == SANDBOX_FILENAME else None

        sys.settrace(global_)
        try:
            return self.sandbox.run(code)
        finally:
            sys.settrace(None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    calls = 300 if args.quick else args.calls
    reps = 3 if args.quick else 7
    rows: list[tuple[str, str, str]] = []

    # -- chosen: worker process ------------------------------------------------------------------
    cold = []
    for _ in range(reps):
        t0 = time.perf_counter()
        tool = PythonTool()
        result = tool.invoke({"code": TRIVIAL})
        cold.append(time.perf_counter() - t0)
        assert result.ok and result.content == "2", result
        tool.close()
    tool = PythonTool(timeout_s=5.0)
    tool.start()  # both workers up: nothing else competes for the CPU while measuring
    tool.invoke({"code": TRIVIAL})
    med, p90 = _summary(_timed(lambda: tool.invoke({"code": TRIVIAL}), calls))
    rows.append(("worker: trivial call (print(1+1)) from invoke", f"{_us(med):.0f} µs", f"p90 {_us(p90):.0f} µs"))
    counter = iter(range(10**9))
    med_c, _ = _summary(_timed(lambda: tool.invoke({"code": f"print(1+{next(counter)})"}), max(50, calls // 20)))
    rows.append(("worker: new source each call (compile, no cache)", f"{_us(med_c):.0f} µs", ""))
    med_loop, _ = _summary(_timed(lambda: tool.invoke({"code": LOOP}), reps))
    rows.append(("worker: loop-heavy program (300k iterations)", f"{med_loop * 1e3:.1f} ms", ""))
    rows.append(("worker: cold start (new tool -> first result)", f"{statistics.median(cold) * 1e3:.1f} ms", f"max {max(cold) * 1e3:.1f} ms"))

    info = tool._workers.active.info if tool._workers.active else {}
    rss = ""
    pid = info.get("pid")
    if pid and os.path.exists(f"/proc/{pid}/status"):
        with open(f"/proc/{pid}/status") as fh:
            rss = next((line.split()[1] for line in fh if line.startswith("VmRSS:")), "")
    rows.append(("worker: baseline VmSize / VmRSS", f"{info.get('baseline_kb', 0) / 1024:.1f} MB", f"RSS {int(rss or 0) / 1024:.1f} MB"))

    for keep_spare in (True, False):
        t = PythonTool(timeout_s=0.05)
        t.keep_spare = keep_spare
        after = []
        for _ in range(reps):
            t.start()  # as between agent turns: the replacement spare has had time to start
            killed = t.invoke({"code": "while True: pass"})
            assert not killed.ok and "TimeoutError" in killed.content, killed
            t0 = time.perf_counter()
            ok = t.invoke({"code": TRIVIAL})
            after.append(time.perf_counter() - t0)
            assert ok.ok, ok
        label = "with spare" if keep_spare else "no spare (cold respawn)"
        rows.append((f"worker: first call after a timeout kill, {label}", f"{statistics.median(after) * 1e3:.2f} ms", f"max {max(after) * 1e3:.2f} ms"))
        t.close()
    tool.close()

    # -- rejected: in-process with a trace budget -------------------------------------------------
    traced = TracedInProcess()
    traced.run(TRIVIAL)
    med_in, p90_in = _summary(_timed(lambda: traced.run(TRIVIAL), calls))
    rows.append(("in-process+settrace: trivial call", f"{_us(med_in):.0f} µs", f"p90 {_us(p90_in):.0f} µs"))
    plain = Sandbox()
    med_loop_plain, _ = _summary(_timed(lambda: plain.run(LOOP), reps))
    med_loop_traced, _ = _summary(_timed(lambda: traced.run(LOOP), reps))
    rows.append(("in-process, no trace: loop-heavy program", f"{med_loop_plain * 1e3:.1f} ms", ""))
    rows.append(("in-process+settrace: loop-heavy program", f"{med_loop_traced * 1e3:.1f} ms", f"x{med_loop_traced / med_loop_plain:.1f} vs untraced"))
    budget = 0.05
    t0 = time.perf_counter()
    ok, error, _ = traced.run(C_LEVEL, budget_s=budget)
    took = time.perf_counter() - t0
    rows.append(("in-process+settrace: one C-level op, 50 ms budget", f"stopped after {took * 1e3:.0f} ms", f"ok={ok} ({error or 'ran to completion'})"[:60]))
    t = PythonTool(timeout_s=budget)
    t.start()
    t0 = time.perf_counter()
    r = t.invoke({"code": C_LEVEL})
    took_w = time.perf_counter() - t0
    rows.append(("worker: same C-level op, 50 ms timeout", f"stopped after {took_w * 1e3:.0f} ms", r.content[:60]))
    t.close()

    width = max(len(r[0]) for r in rows)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print(f"{'measurement':<{width}}  {'value':>22}  note")
    print("-" * (width + 60))
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>22}  {note}")


if __name__ == "__main__":
    main()
