"""Breadth-first search over everything a sandboxed program can obtain; run as a script, prints JSON.

Start: every builtin and every attribute of every module facade. Edges, each one something a program can
do: the guarded `getattr` of every public name in `dir(x)`; the items of built-in containers (and their
`gc.get_referents`, and those of instances of library classes: the objects they hold); calling every
reachable callable with probe arguments (a recording object like a program-defined class, whose every
method records what it is given; an empty dict, as a `copy` memo would be; plain values), which yields
the result, the first items of a returned iterator, the exception raised and whatever the probe or the
dict were handed. Found: any module, frame, code object or cell, the sandbox itself, its builtins dict,
compile cache or module table, the interpreter's own builtins and `sys.modules`, or one of the builtins a
program must never hold (open, exec, eval, compile, __import__, globals, locals, vars, type, the real
getattr/setattr/delattr, breakpoint, input).

    python tests/reachability.py [DEPTH]
"""

from __future__ import annotations

import builtins
import collections
import gc
import itertools
import json
import os
import signal
import sys
import types

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "agentenv", "tools"))

import _sandbox_worker as worker  # noqa: E402

# gc referents of C objects are skipped: some hold half-built internals (itertools.product reuses its
# result tuple, NULL slots and all) that crash the interpreter when touched, and no program can get them.
HEAP_TYPE = 1 << 9
MAX_NODES = 4_000_000


class Probe:
    """Stands in for an object of a program-defined class: records everything handed to it."""

    seen: list = []

    def __init__(self, *args, **kwargs):
        Probe.seen.extend(args)
        Probe.seen.extend(kwargs.values())

    def _record(self, *args):
        Probe.seen.extend(args)
        return self

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._record

    def __call__(self, *args, **kwargs):
        Probe.seen.extend(args)
        Probe.seen.extend(kwargs.values())
        return self

    def __eq__(self, other):
        Probe.seen.append(other)
        return False

    def __lt__(self, other):
        Probe.seen.append(other)
        return False

    def __hash__(self):
        return 1

    def __getitem__(self, key):
        Probe.seen.append(key)
        return self

    def __setitem__(self, key, value):
        Probe.seen.extend((key, value))

    def __iter__(self):
        return iter(())

    def __len__(self):
        return 0

    def __index__(self):
        return 1

    def __exit__(self, *args):
        Probe.seen.extend(args)


class _Alarm(Exception):
    pass


def _alarm(signum, frame):
    raise _Alarm


class _Round1Sandbox(worker.Sandbox):
    def _total_ordering(self, cls):  # a bound method of the sandbox, as round 1 exposed it
        return cls


def search(depth: int, round1: bool = False) -> dict:
    """`round1`: the facades as round 1 shipped them (the standard `copy`, `functools.total_ordering` a
    bound method of the sandbox), to show the search finds that escape."""
    sandbox = _Round1Sandbox() if round1 else worker.Sandbox()
    if round1:
        import copy

        modules = sandbox.modules
        modules["copy"] = worker.SandboxModule("copy", {"copy": copy.copy, "deepcopy": copy.deepcopy})
        functools_attrs = {k: v for k, v in vars(modules["functools"]).items() if not k.startswith("_")}
        modules["functools"] = worker.SandboxModule("functools", {**functools_attrs, "total_ordering": sandbox._total_ordering})
    # what `print` evaluates to in a program: the bound method of the call's print collector
    sandbox._collector = worker._PrintCollector(worker._Output(1000), sandbox.builtins["getattr"])
    guarded_getattr = sandbox.builtins["getattr"]
    forbidden_types = (types.ModuleType, types.FrameType, types.CodeType, types.CellType)
    forbidden = {
        id(o): name
        for name, o in {
            "the Sandbox": sandbox, "its builtins dict": sandbox.builtins, "its compile cache": sandbox._cache,
            "its module table": sandbox.modules, "builtins.__dict__": builtins.__dict__, "sys.modules": sys.modules,
            **{f"builtins.{n}": getattr(builtins, n) for n in (
                "open", "exec", "eval", "compile", "__import__", "globals", "locals", "vars", "type",
                "getattr", "setattr", "delattr", "breakpoint", "input")},
        }.items()
    }  # fmt: skip
    # gc referents are followed for data, not for code-carrying objects (their referents are globals and
    # closures a program reaches only through "_" names) nor for exceptions and tracebacks, which a program
    # holds (`except`, `__exit__`) but reads only through the guarded attributes followed above.
    opaque = (type, types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.MethodWrapperType,
              types.WrapperDescriptorType, BaseException, types.TracebackType)
    keep: list = []
    seen: set[int] = set()
    found: list[str] = []
    frontier: list[tuple[object, str]] = []

    def add(obj: object, path: str) -> None:
        key = id(obj)
        if key in seen or len(seen) > MAX_NODES:
            return
        seen.add(key)
        keep.append(obj)
        if isinstance(obj, forbidden_types) or key in forbidden:
            found.append(f"{path} -> {forbidden.get(key) or type(obj).__name__}")
            return
        frontier.append((obj, path))

    for name, value in sandbox.builtins.items():
        if not name.startswith("_") or name == "__build_class__":
            add(value, name)
    for mod_name, facade in sandbox.modules.items():
        add(facade, mod_name)
    add(sandbox._collector._call_print, "print")
    # The sandbox's own objects are also arguments a program can pass (walkers such as copy.deepcopy are
    # found only when handed the objects to walk): its guards, facades and `print`.
    own = [obj for obj, _path in frontier if isinstance(obj, worker.SandboxModule)
           or getattr(getattr(obj, "__func__", obj), "__module__", None) in (worker.__name__, _Round1Sandbox.__module__)]
    signal.signal(signal.SIGALRM, _alarm)
    calls = 0
    for level in range(depth):
        current, frontier[:] = list(frontier), []
        for obj, path in current:
            try:
                names = [n for n in dir(obj) if not n.startswith("_")]
            except Exception:  # noqa: BLE001
                names = []
            for name in names:
                try:
                    add(guarded_getattr(obj, name), f"{path}.{name}")
                except Exception:  # noqa: BLE001 - refused or raised: nothing handed over
                    pass
            t = type(obj)
            if t in (list, tuple, set, frozenset, collections.deque):
                for i, item in enumerate(itertools.islice(obj, 50)):
                    add(item, f"{path}[{i}]")
            elif isinstance(obj, dict):
                for i, (k, v) in enumerate(itertools.islice(obj.items(), 50)):
                    add(k, f"{path}.key{i}")
                    add(v, f"{path}[{k!r:.30}]")
            if not isinstance(obj, opaque) and (t.__flags__ & HEAP_TYPE or t in (list, tuple, dict, set, frozenset)):
                for i, ref in enumerate(gc.get_referents(obj)[:50]):
                    if not isinstance(ref, type):
                        add(ref, f"{path}<ref{i}>")
            if callable(obj) and level < depth - 1:
                variants = [(), (Probe(),), (Probe(), Probe()), (Probe(), {}), ("ab",), (1,), ([Probe()],)]
                if level <= 1:
                    variants += [v for o in own for v in ((o,), (o, {}))]
                for args in variants:
                    Probe.seen = []
                    calls += 1
                    try:  # the timer is armed inside the try: on a loaded machine it may fire at once
                        signal.setitimer(signal.ITIMER_REAL, 0.05)
                        try:
                            result = obj(*args)
                            items = list(itertools.islice(result, 3)) if isinstance(result, collections.abc.Iterator) else []
                        finally:
                            signal.setitimer(signal.ITIMER_REAL, 0)
                    except _Alarm:
                        continue
                    except BaseException as exc:  # noqa: BLE001 - what a program catches
                        add(exc, f"{path}(...)!{type(exc).__name__}")
                        add(exc.__traceback__, f"{path}(...)!tb")  # what __exit__ is handed
                        result, items = None, []
                    add(result, f"{path}(...)")
                    for i, item in enumerate(items):
                        add(item, f"{path}(...)<next{i}>")
                    for i, handed in enumerate(Probe.seen[:20]):
                        add(handed, f"{path}(...)<handed{i}>")
                    for arg in args:
                        if isinstance(arg, dict):
                            for k, v in list(arg.items())[:50]:
                                add(k, f"{path}(...)<memo key>")
                                add(v, f"{path}(...)<memo value>")
    return {"depth": depth, "objects": len(seen), "calls": calls, "complete": len(seen) <= MAX_NODES, "found": found[:50]}


if __name__ == "__main__":
    print(json.dumps(search(int(sys.argv[1]) if len(sys.argv) > 1 else 4, "--round1" in sys.argv)))
