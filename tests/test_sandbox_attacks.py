"""Attacks on the python tool, one group per class of the round-1 escapes, tried through `env.step`.

1. reaching internals without attribute syntax (walkers, callbacks, exceptions);
2. state that outlives a call or an episode;
3. limits outside the sandbox (the in-process calculator, a step's total time);
plus the process layer on its own (language layer switched off) and the reachability search.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import gymnasium as gym
import pytest

import agentenv  # noqa: F401 - registers the envs
from agentenv.tools.python_tool import ALLOWED_MODULES, PythonTool, _shared_pool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _call(code: str) -> str:
    return '<tool_call>' + json.dumps({"name": "python", "arguments": {"code": code}}) + '</tool_call>'


@pytest.fixture(scope="module")
def env():
    e = gym.make("agentenv/ToolReasoning-v0", tools=["python"]).unwrapped
    e.reset(seed=0)
    yield e
    e.close()


def _step(env, code: str) -> dict:
    env.reset(seed=1)
    _obs, _r, _term, _trunc, info = env.step(_call(code))
    return info["tool_results"][0]


# -- 1. reaching internals without attribute syntax ---------------------------------------------------

INTERNALS = {
    # the round-1 chain: copy's memo kept the originals it walked
    "deepcopy-memo": ("import copy, functools\nm = {}\ncopy.deepcopy(functools.total_ordering, m)\nprint(m)", "TypeError"),
    "deepcopy-function": ("import copy\ncopy.deepcopy(getattr)", "TypeError"),
    "deepcopy-print": ("import copy\ncopy.deepcopy(print)", "TypeError"),
    "copy-bound-method": ("import copy\ncopy.copy('{}'.format)", "TypeError"),
    "deepcopy-nested-guard": ("import copy\nclass A:\n    pass\na = A()\na.f = getattr\ncopy.deepcopy([a])", "TypeError"),
    "deepcopy-module-facade": ("import copy, math\ncopy.deepcopy(math)", "TypeError"),
    "deepcopy-partial": ("import copy, functools\ncopy.deepcopy(functools.partial(getattr, 1))", "TypeError"),
    "deepcopy-library-instance": ("import copy, random\ncopy.deepcopy(random.Random(1))", "TypeError"),
    # what the objects a program holds lead to
    "format-partial-self": ("f = '{}'.format\ngetattr(f.func, '__self__')", "AttributeError"),
    "print-self": ("getattr(print, '__self__')", "AttributeError"),
    "guard-closure": ("getattr(getattr, '__closure__')", "AttributeError"),
    "exception-obj-walk": ("import math\ntry:\n    math.nope\nexcept AttributeError as e:\n    print(sorted(dir(e.obj))[:3])\n    e.obj.os", "AttributeError"),
    "exit-traceback-frame": (
        "class C:\n    def __enter__(self):\n        return self\n    def __exit__(self, t, e, tb):\n"
        "        print(tb.tb_lineno)\n        getattr(tb, 'tb_frame')\nwith C():\n    1/0", "AttributeError"),
    "generator-frame": ("def g():\n    yield 1\nx = g()\nnext(x)\ngetattr(x, 'gi_frame')", "AttributeError"),
    "re-callback-match": ("import re\nhits = []\nre.sub('a', lambda m: hits.append(m) or '', 'a')\ngetattr(hits[0], 're').__class__", "SyntaxError"),
    "json-default-leak": ("import json\njson.dumps(object(), default=lambda o: getattr(o, '__class__'))", "AttributeError"),
    "abc-register": ("import fractions\nfractions.Fraction.register(float)", "AttributeError"),
    "abc-register-userdict": ("import collections\ncollections.UserDict.register(dict)", "AttributeError"),
    "regexflag-cache": ("import re\nre.RegexFlag", "AttributeError"),
    "implementation-import": ("import _strptime", "SyntaxError"),
    "string-template-pattern-attr": ("import string\ngetattr(string.Template.pattern, '__class__')", "AttributeError"),

    # the native branch runs only for built-in data types; every other object takes the guard
    "subclass-format": ("class S(str):\n    pass\ns = S('{0.__class__}')\ns.format(1)", "AttributeError"),
    "str-format-stays-guarded": ("s = '{0.__class__}'\ns.format(1)", "AttributeError"),
    "dict-format-map-call": ("s = '{x.__class__}'\nd = {'x': 1}\ns.format_map(d)", "AttributeError"),
    "user-getattr-name": ("class A:\n    def __getattr__(self, n):\n        return n\na = A()\na.gi_frame", "SyntaxError"),
    "module-through-name": ("import random\nr = random\nr.seed(1)\ngetattr(r, '_os')", "AttributeError"),
    "register-through-name": ("import fractions\nF = fractions.Fraction\nF.register(float)", "AttributeError"),
}


@pytest.mark.parametrize("code,expected", list(INTERNALS.values()), ids=list(INTERNALS))
def test_internals_stay_out_of_reach(env, code, expected):
    result = _step(env, code)
    assert not result["ok"] and result["error"].startswith(expected), result
    assert _step(env, "print(6 * 7)")["content"] == "42"  # the env stays usable


def test_copy_still_copies_plain_data_and_sandbox_classes(env):
    code = (
        "import copy, collections\n"
        "class P:\n    def __init__(self):\n        self.xs = [[1], {'a': (2, [3])}]\n"
        "p = P()\nq = copy.deepcopy(p)\nq.xs[0].append(9)\n"
        "d = collections.defaultdict(list, {1: [2]})\nN = collections.namedtuple('N', 'a b')\n"
        "print(p.xs[0], q.xs[0], copy.deepcopy(d)[1], copy.copy([1, [2]]), copy.deepcopy(N(1, [2])))"
    )
    result = _step(env, code)
    assert result["ok"], result
    assert result["content"] == "[1] [1, 9] [2] [1, [2]] N(a=1, b=[2])"


def test_reachability_search_finds_no_host_object():
    """BFS to depth 4 over attributes, container items, gc referents of data, calls with probe
    arguments and with the sandbox's own objects, copy memos and exceptions (tests/reachability.py)."""
    out = subprocess.run([sys.executable, "-W", "ignore", os.path.join(ROOT, "tests", "reachability.py"), "4"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["complete"] and report["objects"] > 500_000 and report["calls"] > 100_000, report
    assert report["found"] == [], report["found"]


def test_reachability_search_finds_the_round1_escape():
    """The same search over round 1's facades (stdlib copy, total_ordering bound to the sandbox) finds it."""
    out = subprocess.run([sys.executable, "-W", "ignore", os.path.join(ROOT, "tests", "reachability.py"), "3", "--round1"],
                         capture_output=True, text=True, timeout=600)
    found = json.loads(out.stdout)["found"]
    assert any("compile cache" in f for f in found) and any("builtins dict" in f for f in found), found


# -- 2. state that outlives a call or an episode ------------------------------------------------------

# Per module: a program that plants what it can in episode 1, and one that shows episode 2 saw none of it.
PLANTS = {
    "random": ("import random\nrandom.seed(7)\nprint(random.random())", "import random\nrandom.seed(7)\na = random.random()\nprint(random.random() != a)"),
    "decimal": ("import decimal\ndecimal.getcontext().prec = 3\ndecimal.getcontext().traps[decimal.Inexact] = True",
                "import decimal\nprint(decimal.getcontext().prec == 28 and not decimal.getcontext().traps[decimal.Inexact])"),
    "re": ("import re\nclass S(str):\n    def __eq__(self, o):\n        return True\n    def __hash__(self):\n        return hash('a')\nre.compile(S('a'))\nre.compile('b')",
           "import re\nprint(re.compile('a').pattern != 'zzz')"),  # a planted S would equal anything
    "fractions": ("import fractions\ntry:\n    fractions.Fraction.register(float)\nexcept AttributeError:\n    pass",
                  "import fractions\nprint(not isinstance(1.0, fractions.Fraction))"),
    "collections": ("import collections\ncollections.Counter.most_common = None", "import collections\nprint(collections.Counter('aab').most_common(1) == [('a', 2)])"),
    "functools": ("import functools\nf = functools.lru_cache(None)(lambda x: x)\nf(1)", "import functools\nprint(callable(functools.lru_cache))"),
}


@pytest.mark.parametrize("module", ALLOWED_MODULES)
def test_state_planted_in_one_episode_is_invisible_to_the_next(module):
    plant, probe = PLANTS.get(module, (
        f"import {module}\nfor n in dir({module}):\n    try:\n        setattr({module}, n, None)\n    except AttributeError:\n        pass",
        f"import {module}\nprint(all(getattr({module}, n) is not None for n in dir({module})))",
    ))
    env = gym.make("agentenv/ToolReasoning-v0", tools=["python"]).unwrapped
    try:
        env.reset(seed=0)
        first = env.step(_call(plant))[4]["tool_results"][0]
        worker_1 = env.tools["python"].worker_pids
        env.reset(seed=0)
        second = env.step(_call(probe))[4]["tool_results"][0]
        worker_2 = env.tools["python"].worker_pids
    finally:
        env.close()
    assert "Error: SystemError" not in first["content"], first
    assert second["ok"] and second["content"].splitlines()[-1] == "True", (first, second)
    assert worker_1 and worker_2 and worker_1 != worker_2  # a fresh process per episode


def test_envs_never_share_a_worker_even_when_given_one_tool():
    shared = PythonTool()
    envs = [gym.make("agentenv/ToolReasoning-v0", tools=[shared]).unwrapped for _ in range(2)]
    try:
        for e in envs:
            e.reset(seed=0)
            assert e.step(_call("print(1)"))[4]["tool_results"][0]["content"] == "1"
        pids = [e.tools["python"].worker_pids for e in envs]
        assert envs[0].tools["python"] is not envs[1].tools["python"]
        assert pids[0] and pids[1] and pids[0] != pids[1]
    finally:
        for e in envs:
            e.close()


def test_keep_worker_opts_in_to_reuse_across_episodes():
    env = gym.make("agentenv/ToolReasoning-v0", tools=[PythonTool(keep_worker=True)]).unwrapped
    try:
        env.reset(seed=0)
        env.step(_call("print(1)"))
        before = env.tools["python"].worker_pids
        env.reset(seed=1)
        env.step(_call("print(1)"))
        assert env.tools["python"].worker_pids == before
    finally:
        env.close()


def test_memory_growth_in_one_episode_does_not_reach_the_next():
    env = gym.make("agentenv/ToolReasoning-v0", tools=[PythonTool(memory_mb=64)]).unwrapped
    try:
        env.reset(seed=0)
        bomb = "import re\nfor i in range(10**7):\n    re.compile('x' + str(i))"
        env.step(_call(bomb))
        env.reset(seed=0)
        result = env.step(_call("print(sum(range(10)))"))[4]["tool_results"][0]
    finally:
        env.close()
    assert result["ok"] and result["content"] == "45", result


# -- 3. limits outside the sandbox --------------------------------------------------------------------

def test_a_step_with_16_infinite_loops_returns_within_its_budget():
    env = gym.make("agentenv/ToolReasoning-v0", tools=["python"], step_timeout_s=2.0).unwrapped
    try:
        env.reset(seed=0)
        env.tools["python"].start()
        action = "".join(_call("while True:\n    pass") for _ in range(16))
        start = time.monotonic()
        _obs, _r, _term, _trunc, info = env.step(action)
        elapsed = time.monotonic() - start
        results = info["tool_results"]
        assert len(results) == 16 and not any(r["ok"] for r in results)
        assert "TimeoutError" in results[0]["error"]
        assert all("budget" in r["error"] for r in results[1:]), results[1]
        assert elapsed < 2.0 + 8.0, elapsed  # the 2 s budget (without it: 16 x 5 s); the margin is for load
        assert env.step(_call("print(2 + 2)"))[4]["tool_results"][0]["content"] == "4"
    finally:
        env.close()


def test_delayed_calls_queued_over_turns_share_one_step_budget():
    env = gym.make("agentenv/ToolReasoning-v0", tools=["python"], execution="delayed", step_timeout_s=1.5, max_turns=10).unwrapped
    try:
        env.reset(seed=0)
        for _ in range(6):
            env.step(_call("while True:\n    pass"))
        start = time.monotonic()
        info = env.step("<execute/>")[4]
        assert time.monotonic() - start < 1.5 + 8.0  # without the budget: 6 x 5 s
        assert len(info["tool_results"]) == 6 and not any(r["ok"] for r in info["tool_results"])
    finally:
        env.close()


@pytest.mark.parametrize("expression", [
    "comb(20000,10000)^2048", "comb(20000,10000)*comb(20000,10000)*comb(20000,10000)*comb(20000,10000)",
    "factorial(2000)^4096", "(2^4096)^4096", "perm(20000, 15000)", "round(1/3, 10^9)", "9^9^9^9",
])
def test_the_calculator_cannot_freeze_the_host_off_the_main_thread(expression):
    env = gym.make("agentenv/ToolReasoning-v0", tools=["calculator"]).unwrapped
    env.reset(seed=0)
    action = '<tool_call>' + json.dumps({"name": "calculator", "arguments": {"expression": expression}}) + '</tool_call>'
    out: dict = {}
    ticks = []
    stop = threading.Event()

    def ticker():  # would stall if the step held the GIL in one long C call
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.005)

    thread = threading.Thread(target=lambda: out.update(info=env.step(action)[4]))
    watcher = threading.Thread(target=ticker)
    watcher.start()
    start = time.monotonic()
    thread.start()
    thread.join(10)
    stop.set()
    watcher.join()
    assert not thread.is_alive() and time.monotonic() - start < 8.0  # unbounded, the first took 25 s
    result = out["info"]["tool_results"][0]
    assert not result["ok"] and "too large" in result["error"] or "exponent" in result["error"] or "digits" in result["error"], result
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert max(gaps, default=0) < 3.0, max(gaps)  # a GIL-holding big-int operation froze it for 25 s


# -- the process layer alone (language layer off) -----------------------------------------------------

@pytest.fixture(scope="module")
def raw_tool():
    t = PythonTool(timeout_s=5.0, _language_layer=False)
    assert t.run("print(1)").content == "1"
    layers = PythonTool.security_layers()
    if os.geteuid() != 0 or layers.get("landlock") or layers.get("seccomp"):
        pytest.skip(f"process layers not all available here: {layers}")
    yield t
    t.close()


def _raw(tool: PythonTool, code: str) -> str:
    result = tool.run(code)
    return result.content


def test_raw_programs_really_are_unrestricted_python(raw_tool):
    out = _raw(raw_tool, "import os, sys\nprint(os.getuid() > 1_000_000_000, type(sys.modules).__name__)")
    assert out == "True dict"


def test_process_layer_stops_writes_outside_its_temp_dir(raw_tool):
    with tempfile.TemporaryDirectory() as d:
        target = os.path.join(d, "host.txt")
        with open(target, "w") as fh:
            fh.write("host data")
        os.chmod(d, 0o777)
        os.chmod(target, 0o666)  # even a world-writable host file
        code = (
            "import os\nres = []\n"
            f"for f in (lambda: open({target!r}, 'w').write('x'), lambda: open({target!r} + '.new', 'w'),\n"
            f"          lambda: os.rename({target!r}, {target!r} + '.moved'), lambda: os.unlink({target!r}),\n"
            f"          lambda: open({os.path.join(ROOT, 'pwned.txt')!r}, 'w'), lambda: open('/tmp/pwned', 'w')):\n"
            "    try:\n        f()\n        res.append('WROTE')\n    except OSError as e:\n        res.append(type(e).__name__)\n"
            "open('mine.txt', 'w').write('ok')\nres.append(open('mine.txt').read())\nprint(res)"
        )
        out = _raw(raw_tool, code)
        assert "WROTE" not in out and out.endswith("'ok']"), out
        with open(target) as fh:
            assert fh.read() == "host data"
        assert sorted(os.listdir(d)) == ["host.txt"]
    assert not os.path.exists(os.path.join(ROOT, "pwned.txt")) and not os.path.exists("/tmp/pwned")


def test_process_layer_stops_connecting_to_localhost(raw_tool):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        code = (
            "import socket\ntry:\n"  # bytes host: no lazy import of the idna codec (the stdlib may be unreadable)
            f"    s = socket.socket()\n    s.settimeout(1)\n    s.connect((b'127.0.0.1', {port}))\n    print('CONNECTED')\n"
            "except OSError as e:\n    print(type(e).__name__)"
        )
        out = _raw(raw_tool, code)
        assert out in ("PermissionError", "OSError"), out
        with pytest.raises(OSError):
            server.accept()
    finally:
        server.close()


@pytest.fixture
def sibling():
    """Another env's worker, alive, with its pid."""
    tool = PythonTool()
    tool.start()
    (pid,) = tool.worker_pids
    yield tool, pid
    tool.close()


def test_process_layer_stops_signalling_the_host_and_a_sibling(raw_tool, sibling):
    tool, sibling_pid = sibling
    zygote_pid = _shared_pool().proc.pid
    code = (
        "import os, signal\nres = []\n"
        f"for pid in ({os.getpid()}, {sibling_pid}, {zygote_pid}, {os.getppid()}):\n"
        "    for sig in (signal.SIGKILL, signal.SIGSTOP, 0):\n"
        "        try:\n            os.kill(pid, sig)\n            res.append('SENT')\n"
        "        except OSError as e:\n            res.append(type(e).__name__)\nprint(res)"
    )
    out = _raw(raw_tool, code)
    assert "SENT" not in out and out.count("Error") == 12, out
    assert tool.run("print(5)").content == "5"  # the sibling is alive and unstopped


def test_process_layer_stops_reading_other_processes_fds(raw_tool, sibling):
    _tool, sibling_pid = sibling
    code = (
        "import os\nres = []\n"
        f"for pid in ({os.getpid()}, {sibling_pid}):\n"
        "    for f in (lambda: os.listdir(f'/proc/{pid}/fd'), lambda: open(f'/proc/{pid}/fd/1', 'wb'),\n"
        "              lambda: open(f'/proc/{pid}/mem', 'rb'), lambda: open(f'/proc/{pid}/environ').read()):\n"
        "        try:\n            f()\n            res.append('OPENED')\n"
        "        except OSError as e:\n            res.append(type(e).__name__)\nprint(res)"
    )
    out = _raw(raw_tool, code)
    assert "OPENED" not in out and out.count("Error") == 8, out


def test_process_layer_stops_forking_and_exec(raw_tool):
    code = (
        "import os\nres = []\n"
        "for f in (os.fork, lambda: os.posix_spawn('/bin/true', ['true'], {}), lambda: os.execv('/bin/true', ['true'])):\n"
        "    try:\n        f()\n        res.append('FORKED')\n    except OSError as e:\n        res.append(type(e).__name__)\nprint(res)"
    )
    out = _raw(raw_tool, code)
    assert "FORKED" not in out and out.count("Error") == 3, out


def test_common_codecs_work_in_a_fresh_worker(env):
    code = "print('é'.encode('latin-1'), 'x'.encode('utf-16-le'), 'bü.de'.encode('idna'), b'\\xe9'.decode('cp1252'))"
    result = _step(env, code)
    assert result["ok"] and result["content"] == "b'\\xe9' b'x\\x00' b'xn--b-eha.de' é", result


def test_native_attribute_fast_path_gives_the_same_values(env):
    code = (
        "d = {'a': 1}\nl = [3, 1]\ns = 'a,b'\nn = 5\nc = 1 + 2j\n"
        "class D(dict):\n    pass\nu = D(a=2)\nl.sort()\n"
        "print(d.get('a'), d.get('z', 0), l, s.split(','), n.bit_length(), c.imag, u.get('a'), s.upper())"
    )
    result = _step(env, code)
    assert result["ok"] and result["content"] == "1 0 [1, 3] ['a', 'b'] 3 2.0 2 A,B", result


def test_process_layer_stops_reading_outside_the_python_installation(raw_tool):
    code = (
        "import os\nres = []\n"
        f"for f in (lambda: os.listdir('/'), lambda: open('/etc/passwd').read(), lambda: os.listdir({ROOT!r}),\n"
        f"          lambda: open({os.path.join(ROOT, 'README.md')!r}).read(), lambda: os.listdir('/proc/self/fd')):\n"
        "    try:\n        f()\n        res.append('READ')\n    except OSError as e:\n        res.append(type(e).__name__)\nprint(res)"
    )
    out = _raw(raw_tool, code)
    assert "READ" not in out and out.count("PermissionError") == 5, out
