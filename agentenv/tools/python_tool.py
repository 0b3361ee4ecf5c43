"""The `python` tool: RestrictedPython in a forked, OS-confined worker process, one per episode.

Threat model: every program is hostile (an RL policy searches for exploits), and it reaches the tool only
through `env.step`. Two independent layers stand between it and the host, each enough on its own for
what it covers (`docs/security.md` lists what each layer stops, and the tests that show it):

* **Language layer** (`_sandbox_worker.Sandbox`): RestrictedPython's compile-time checks plus run-time
  guards, built by reachability: the program starts from guarded builtins and read-only module facades
  whose every name is vetted (`FACADES`), and no exposed callable walks arbitrary objects (`copy` is the
  sandbox's own, for plain data) or hands back modules, frames, code, tracebacks' frames or cells. Names
  starting with "_" and introspection attributes are refused; attribute writes only on the program's own
  classes; `register` of library ABCs refused.
* **Process layer** (`_sandbox_os`): the worker is forked from a pre-warmed zygote in its own session, with
  its inherited fds closed, its own uid when the host is root (`UID_BASE + pid`; no capabilities), no
  network (network namespace, seccomp on sockets, Landlock on TCP), no writes outside a private temporary
  directory (Landlock), no fork/exec/kill/ptrace (seccomp, RLIMIT_NPROC), non-dumpable,
  `PR_SET_NO_NEW_PRIVS`, and rlimits on address space, CPU, file size and open files. A layer the kernel
  lacks degrades with one warning per process (`PythonTool.security_layers()` says what is active).

Isolation: a worker serves one episode of one env. `ChatEnv.reset` calls `tool.reset()`, which hands the
worker back (it is killed) and the next call leases a fresh one; envs get their own tool instance
(`Tool.fresh`), so nothing one episode plants (module caches, ABC registries, `random` state, memory) is
seen by another. `PythonTool(keep_worker=True)` opts in to reuse across episodes. Within an episode each
call still starts from fresh globals, unless the tool runs a session (`session=True`, IH-GRPO's turn
semantics, `ChatEnv(python_semantics="session")`): then the episode's programs share one namespace, kept in
its worker and nowhere else (never pickled to the host), and gone when `reset()` kills that worker. A session
excludes `keep_worker`. If the worker dies mid-episode (a timeout, the memory limit), the next program starts
from an empty namespace and the result says so.

One pool per host process, shared by every tool and env: the zygote (started once, ~0.1-0.3 s) and a few
pre-forked, already confined workers, so leasing one costs a pipe write. A timeout kills the worker
(SIGKILL through a pidfd, immune to pid reuse) and the next call leases another. Linux only (fork,
pidfd, SCM_RIGHTS); `benchmarks/bench_sandbox.py` measures it side by side with peers.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import math
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import warnings
import weakref
from typing import Any

from ._sandbox_worker import ALLOWED_MODULES, REQUEST_HEADER
from .base import Tool, ToolResult

__all__ = ["PythonTool", "ALLOWED_MODULES"]

_TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
_WORKER_PATH = os.path.join(_TOOLS_DIR, "_sandbox_worker.py")
MAX_CODE_CHARS = 1_000_000
STARTUP_TIMEOUT_S = 60.0
POOL_READY_WORKERS = 2  # spares kept at least; at most one per worker in use, up to POOL_MAX_SPARES
POOL_MAX_SPARES = 32
_LENGTH = 4


class _Timeout(Exception):
    pass


class _WorkerGone(Exception):
    """The worker closed its pipe (it died) or spoke out of protocol."""


class _StartError(Exception):
    """No worker could be started."""


def _restricted_python_dir() -> str | None:
    import importlib.util

    try:
        spec = importlib.util.find_spec("RestrictedPython")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.dirname(list(spec.submodule_search_locations)[0])


class _Worker:
    """The host's handle on one forked worker: its pid, a pidfd and the two pipes."""

    __slots__ = ("pid", "pidfd", "rfd", "wfd", "poller", "ready", "info")

    def __init__(self, pid: int, pidfd: int, rfd: int, wfd: int):
        self.pid, self.pidfd, self.rfd, self.wfd = pid, pidfd, rfd, wfd
        self.poller = select.poll()
        self.poller.register(rfd, select.POLLIN | select.POLLHUP | select.POLLERR)
        self.ready = False
        self.info: dict[str, Any] = {}

    def send(self, payload: bytes) -> None:
        data = memoryview(len(payload).to_bytes(_LENGTH, "big") + payload)
        try:
            while data:
                data = data[os.write(self.wfd, data) :]
        except OSError as exc:  # BrokenPipeError: the worker is gone
            raise _WorkerGone(str(exc)) from None

    def recv(self, deadline: float, max_bytes: int) -> bytes:
        buf = b""
        need = _LENGTH
        while True:
            if len(buf) >= need:
                if need == _LENGTH:
                    size = int.from_bytes(buf[:_LENGTH], "big")
                    if size > max_bytes:
                        raise _WorkerGone("reply too large")
                    need = _LENGTH + size
                    continue
                if len(buf) > need:
                    raise _WorkerGone("unexpected data from the worker")
                return buf[_LENGTH:]
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or not self.poller.poll(math.ceil(remaining * 1000)):
                if time.perf_counter() >= deadline:
                    raise _Timeout
                continue
            try:
                chunk = os.read(self.rfd, max(need - len(buf), 65536))
            except OSError as exc:
                raise _WorkerGone(str(exc)) from None
            if not chunk:
                raise _WorkerGone("the worker closed its pipe")
            buf += chunk

    def wait_ready(self, timeout_s: float) -> None:
        if self.ready:
            return
        try:
            message = self.recv(time.perf_counter() + timeout_s, 1 << 20)
        except _Timeout:
            raise _WorkerGone(f"the sandbox worker did not start within {timeout_s:g} s") from None
        if message[:1] != b"R":
            raise _WorkerGone("unexpected start-up message")
        try:
            self.info = json.loads(message[1:].decode())
        except ValueError:
            raise _WorkerGone("unexpected start-up message") from None
        self.ready = True

    def exited(self) -> bool:
        return bool(select.select([self.pidfd], [], [], 0)[0]) if self.pidfd >= 0 else True

    def kill(self) -> None:
        """SIGKILL through the pidfd (never another process that reused the pid) and close our ends."""
        if self.pidfd >= 0:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except OSError:
                pass
        self.forget()

    def forget(self) -> None:
        for fd in (self.rfd, self.wfd, self.pidfd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.rfd = self.wfd = self.pidfd = -1


class _Pool:
    """One per host process: the zygote and a few pre-forked workers, shared by every PythonTool."""

    def __init__(self, ready_workers: int = POOL_READY_WORKERS):
        self.ready_workers = ready_workers
        self.lock = threading.Lock()
        self.pid = os.getpid()
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.ready: list[_Worker] = []
        self.pending: list[tuple[int, int]] = []  # (request write end, reply read end) awaiting "P", in order
        self.leased = 0  # workers tools hold now
        self.demand = 0  # env-owned python tools alive: the pool keeps a spare for each (capped), so the
        # next episode of every env finds its worker forked, confined and warm
        self.announced = False
        self.layers: dict[str, str | None] = {}
        self.warned: set[str] = set()

    # -- zygote -------------------------------------------------------------------------------------
    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        rp_dir = _restricted_python_dir()
        config = json.dumps({"path": [_TOOLS_DIR] + ([rp_dir] if rp_dir else [])})
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", _WORKER_PATH, "zygote", config, str(theirs.fileno())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),), close_fds=True, start_new_session=True,
            )  # fmt: skip
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            ours.close()
            raise _StartError(f"{type(exc).__name__}: {exc}") from None
        finally:
            theirs.close()
        self.sock = ours
        self.announced = False  # its "Z" comes first on the socket; spawn requests may be queued meanwhile

    def _await_zygote(self) -> None:
        """Read the zygote's start-up message (it imports and warms for ~0.1 s after `_start`)."""
        if self.announced:
            return
        self.sock.settimeout(STARTUP_TIMEOUT_S)
        try:
            message = self.sock.recv(1 << 16)
        except OSError as exc:
            self._stop_zygote()
            raise _StartError(f"the sandbox did not start: {exc}") from None
        if message[:1] != b"Z":
            self._stop_zygote()
            reason = message[1:].decode("utf-8", "replace") if message[:1] == b"F" else "it exited"
            raise _StartError(f"the sandbox did not start: {reason}")
        self.sock.settimeout(10.0)
        self.announced = True
        self._note_layers(json.loads(message[1:]).get("layers", {}))

    def _drop_spares(self, kill: bool) -> None:
        for worker in self.ready:
            worker.kill() if kill else worker.forget()
        self.ready = []
        for fds in self.pending:
            for fd in fds:
                os.close(fd)
        self.pending = []

    def _stop_zygote(self) -> None:
        self._drop_spares(kill=True)
        if self.sock is not None:
            self.sock.close()  # the zygote sees EOF, kills its workers and exits
            self.sock = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def _request_spawn(self) -> None:
        """Ask the zygote to fork one worker on two new pipes; its "P" reply is read later, in order."""
        if self.sock is None or (self.proc is not None and self.proc.poll() is not None):
            self._stop_zygote()
            self._start()
        request_r, request_w = os.pipe()
        reply_r, reply_w = os.pipe()
        try:
            socket.send_fds(self.sock, [b"S"], [request_r, reply_w])
        except OSError as exc:
            for fd in (request_w, reply_r):
                os.close(fd)
            self._stop_zygote()
            raise _StartError(f"the sandbox zygote failed: {exc}") from None
        finally:
            os.close(request_r)
            os.close(reply_w)
        self.pending.append((request_w, reply_r))

    def _complete_spawn(self) -> _Worker:
        """The worker of the oldest spawn request (its pid and pidfd from the zygote's reply)."""
        self._await_zygote()
        request_w, reply_r = self.pending.pop(0)
        try:
            message, fds, _flags, _addr = socket.recv_fds(self.sock, 64, 1)
        except (OSError, AttributeError) as exc:
            os.close(request_w)
            os.close(reply_r)
            self._stop_zygote()
            raise _StartError(f"the sandbox zygote failed: {exc}") from None
        if message[:1] != b"P" or len(fds) != 1:
            for fd in (request_w, reply_r, *fds):
                os.close(fd)
            self._stop_zygote()
            raise _StartError("the sandbox zygote answered out of protocol")
        (pid,) = struct.unpack(">I", message[1:5])
        return _Worker(pid, fds[0], reply_r, request_w)

    def _collect_replies(self, block: bool) -> None:
        while self.pending and (block or select.select([self.sock], [], [], 0)[0]):
            if not self.announced and not block:
                self._await_zygote()
                continue
            self.ready.append(self._complete_spawn())

    def _top_up(self) -> None:
        target = min(POOL_MAX_SPARES, max(self.ready_workers, self.leased, self.demand))
        while len(self.ready) + len(self.pending) < target:
            self._request_spawn()

    def _note_layers(self, layers: dict[str, str | None]) -> None:
        self.layers.update(layers)
        for name, reason in layers.items():
            if reason is not None and name not in self.warned:
                self.warned.add(name)
                warnings.warn(f"agentenv python sandbox: layer '{name}' is not active: {reason}", RuntimeWarning, stacklevel=4)

    # -- leases -------------------------------------------------------------------------------------
    def lease(self, startup_timeout_s: float) -> _Worker:
        """A fresh, confined worker nobody has used (pre-forked when possible); refill the spares."""
        with self.lock:
            if self.pid != os.getpid():
                raise _StartError("the sandbox pool belongs to another process")
            if self.sock is not None:
                self._collect_replies(block=False)
            if not self.ready:
                if not self.pending:
                    self._request_spawn()
                self.ready.append(self._complete_spawn())
            worker = self.ready.pop(0)
            self.leased += 1
            self._top_up()
        worker.wait_ready(startup_timeout_s)
        with self.lock:
            self._note_layers(worker.info.get("layers", {}))
        return worker

    def returned(self) -> None:
        """A tool handed its worker back (killed it)."""
        self.leased = max(0, self.leased - 1)

    def expect(self, change: int) -> None:
        """An env took (+1) or dropped (-1) a python tool: start forking its next worker in the background.

        Dropping takes no lock: it runs from a garbage-collection finalizer, which may fire while this very
        thread holds the pool's lock."""
        if self.pid != os.getpid():
            return
        self.demand = max(0, self.demand + change)
        if change > 0:
            with self.lock:
                try:
                    self._top_up()
                except _StartError:
                    pass  # reported by the first call

    def warm(self, startup_timeout_s: float) -> None:
        with self.lock:
            self._top_up()
            self._collect_replies(block=True)
            ready = list(self.ready)
        for worker in ready:
            try:
                worker.wait_ready(startup_timeout_s)
            except _WorkerGone:
                pass

    def exit_status(self, pid: int) -> int | None:
        """How worker `pid` ended (a wait status), as the zygote reaped it; None if unknown."""
        with self.lock:
            if self.sock is None:
                return None
            try:
                self._await_zygote()
                self._collect_replies(block=True)  # spawn replies come first on the socket
            except _StartError:
                return None
            try:
                self.sock.send(b"W" + struct.pack(">I", pid))
                message = self.sock.recv(1024)
            except OSError:
                return None
        if message[:1] != b"D":
            return None
        return json.loads(message[1:]).get("status")

    def shutdown(self) -> None:
        if self.pid != os.getpid():
            return
        with self.lock:
            self._stop_zygote()

    def forget_after_fork(self) -> None:
        """In a forked child: drop the parent's zygote and workers without touching them."""
        self._drop_spares(kill=False)
        if self.sock is not None:
            self.sock.detach()
            self.sock = None
        self.proc = None


_pool: _Pool | None = None
_pool_lock = threading.Lock()


def _shared_pool() -> _Pool:
    global _pool
    pool = _pool
    if pool is None or pool.pid != os.getpid():
        with _pool_lock:
            if _pool is None or _pool.pid != os.getpid():
                _pool = _Pool()
            pool = _pool
    return pool


def _shutdown_pool() -> None:
    if _pool is not None:
        _pool.shutdown()


atexit.register(_shutdown_pool)


class _Lease:
    """The worker a tool holds; shared with its finalizer (which must not reference the tool)."""

    __slots__ = ("worker", "final")

    def __init__(self) -> None:
        self.worker: _Worker | None = None
        self.final = False

    def release(self) -> None:
        if self.worker is not None:
            self.worker.kill()
            self.worker = None
            pool = _pool
            if pool is not None and pool.pid == os.getpid():
                pool.returned()

    def finalize(self) -> None:
        self.final = True
        self.release()


_live_tools: weakref.WeakSet[PythonTool] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    if _pool is not None and _pool.pid != os.getpid():
        _pool.forget_after_fork()
    for tool in list(_live_tools):
        tool._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _describe_status(status: int | None) -> str:
    if status is not None and os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == getattr(signal, "SIGXCPU", -1):
            return "TimeoutError: CPU time limit exceeded"
        if sig == signal.SIGKILL:
            return "MemoryError: the sandbox process was killed (probably out of memory)"
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"SystemError: the sandbox process crashed ({name}); the next call gets a fresh one"
    code = os.WEXITSTATUS(status) if status is not None and os.WIFEXITED(status) else "unknown"
    return f"SystemError: the sandbox process exited unexpectedly (status {code}); the next call gets a fresh one"


class PythonTool(Tool):
    """Run Python in a RestrictedPython sandbox; the agent sees what `print` wrote.

    Args:
        timeout_s: wall-clock limit of one call (the worker is killed past it; the next call gets another).
        memory_mb: address-space budget of the program, on top of the worker's own baseline (0: none).
        max_output_chars: output beyond this is cut, with a note saying how much was written.
        keep_worker: keep one worker across episodes (`reset()` then keeps it). Default: a fresh worker
            per episode, so nothing one episode leaves behind is visible to the next.
        session: the episode's programs share one namespace (variables persist from call to call; a program
            that fails leaves the names bound as they were). Needs keep_worker=False.

    `invoke({"code": ...})` and `run(code)` return a `ToolResult` and never raise for anything in `code`.
    Calls on one tool are serialised by a lock. `close()` hands the worker back (a later call leases a
    new one); it is also handed back when the tool is garbage-collected and at interpreter exit.
    """

    startup_timeout_s: float = STARTUP_TIMEOUT_S

    def __init__(
        self,
        timeout_s: float = 5.0,
        memory_mb: int = 256,
        max_output_chars: int = 8192,
        keep_worker: bool = False,
        session: bool = False,
        *,
        _language_layer: bool = True,  # tests of the process layer only: run programs as plain Python
    ):
        if not timeout_s or timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if session and keep_worker:
            raise ValueError("a python session lives and dies with its episode's worker: session=True needs keep_worker=False")
        if memory_mb < 0:
            raise ValueError("memory_mb must be >= 0 (0 disables the memory limit)")
        if max_output_chars < 1:
            raise ValueError("max_output_chars must be >= 1")
        self.memory_mb = int(memory_mb)
        self.max_output_chars = int(max_output_chars)
        self.keep_worker = bool(keep_worker)
        self.session = bool(session)
        self._language_layer = bool(_language_layer)
        self._session_worker: _Worker | None = None  # the worker whose namespace this episode's programs built
        super().__init__(
            name="python",
            description=(
                "Run Python 3 code in a sandbox and return what it printed with print(); if the last "
                "statement is an expression, its value is shown too. "
                + ("Variables persist from call to call within the episode (a call that fails changes none). "
                   if session else "Each call starts fresh (no variables persist). ")
                + "Importable modules: " + ", ".join(ALLOWED_MODULES) + ". No files, network or "
                "OS access; names starting with '_' are not allowed. Limits: "
                f"{timeout_s:g} s, {memory_mb} MB, output cut at {max_output_chars} characters."
            ),
            parameters={
                "type": "object",
                "properties": {"code": {"type": "string", "description": "The Python source code to run."}},
                "required": ["code"],
            },
            fn=self.run,
            timeout_s=float(timeout_s),
        )
        self._lock = threading.Lock()
        self._lease = _Lease()
        self._finalizer = weakref.finalize(self, _Lease.finalize, self._lease)
        _live_tools.add(self)

    # Tool is a dataclass (eq=True makes it unhashable); a tool owning a process compares by identity.
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return (
            f"PythonTool(timeout_s={self.timeout_s:g}, memory_mb={self.memory_mb}, "
            f"max_output_chars={self.max_output_chars}, keep_worker={self.keep_worker}, session={self.session})"
        )

    def __reduce__(self):
        return (PythonTool, (self.timeout_s, self.memory_mb, self.max_output_chars, self.keep_worker, self.session))

    def __enter__(self) -> PythonTool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- public API ------------------------------------------------------------------------------
    def fresh(self, session: bool | None = None) -> PythonTool:
        """The same tool with a worker of its own (an env never shares its sandbox with another env); `session`
        overrides whether it runs one.

        The pool starts forking a worker for it now, in the background, and keeps one spare per such tool."""
        tool = PythonTool(
            self.timeout_s, self.memory_mb, self.max_output_chars, self.keep_worker,
            self.session if session is None else session, _language_layer=self._language_layer,
        )
        pool = _shared_pool()
        pool.expect(+1)
        weakref.finalize(tool, pool.expect, -1)
        return tool

    def reset(self) -> None:
        """A new episode: hand the worker back, so the next call runs in a fresh one (unless keep_worker).
        A session's namespace dies with it: it exists in that worker only."""
        if not self.keep_worker:
            with self._lock:
                self._lease.release()
                self._session_worker = None

    def invoke(self, arguments: Any, timeout_s: float | None = None) -> ToolResult:
        """Validate `{"code": str}` and run it; every failure is a `ToolResult(ok=False)`."""
        try:
            problem = self.check_arguments(arguments)
            if problem is not None:
                return ToolResult(self.name, False, f"Error: {problem}", problem)
            return self.run(arguments["code"], timeout_s=timeout_s)
        except Exception as exc:  # noqa: BLE001 - invoke never raises
            error = f"SystemError: the python tool failed: {type(exc).__name__}: {exc}"
            return ToolResult(self.name, False, f"Error: {error}", error)

    def run(self, code: str, timeout_s: float | None = None) -> ToolResult:
        """Run `code` in the sandbox and return what it printed (and its final expression's value).

        `timeout_s` lowers this call's limit below the tool's (an env's step budget uses it)."""
        start = time.perf_counter()
        if not isinstance(code, str):
            return self._error(f"TypeError: code must be a string, not {type(code).__name__}", "", start)
        if len(code) > MAX_CODE_CHARS:
            return self._error(f"ValueError: code is too long ({len(code)} > {MAX_CODE_CHARS} characters)", "", start)
        limit = float(self.timeout_s) if timeout_s is None else min(float(self.timeout_s), float(timeout_s))
        kind = b"S" if self.session else b"C"
        payload = kind + REQUEST_HEADER.pack(limit, self.max_output_chars) + code.encode("utf-8", "surrogatepass")
        with self._lock:
            try:
                result = self._run_locked(payload, limit, start)
            except Exception as exc:  # noqa: BLE001 - a bug mid-protocol: the worker's state is unknown
                self._lease.release()
                result = self._error(f"SystemError: the python tool failed: {type(exc).__name__}: {exc}", "", start)
            except BaseException:  # KeyboardInterrupt & co. propagate, but never leave a half-read worker
                self._lease.release()
                raise
            return self._session_note(result) if self.session else result

    def _session_note(self, result: ToolResult) -> ToolResult:
        """Say so when the worker holding the session's namespace was lost (killed after a timeout or the
        memory limit, or dead): the agent's variables are gone, and its next program starts from none."""
        worker = self._lease.worker
        lost = self._session_worker is not None and worker is not self._session_worker
        self._session_worker = worker
        if not lost:
            return result
        note = "Note: the python session was restarted; variables from earlier calls are gone."
        return dataclasses.replace(result, content=f"{result.content}\n{note}")

    def start(self, wait: bool = True) -> None:
        """Start the shared pool and lease this tool's worker now (instead of at the first call).

        Start-up problems are not raised here; the next call reports them as an error result."""
        with self._lock:
            try:
                pool = _shared_pool()
                if wait:
                    pool.warm(self.startup_timeout_s)
                self._ensure_worker()
            except (_StartError, _WorkerGone):
                self._lease.release()

    def close(self) -> None:
        """Hand the worker back (killed). The tool stays usable: a later call leases a new one."""
        with self._lock:
            self._lease.release()

    @property
    def worker_pids(self) -> tuple[int, ...]:
        """Process id of this tool's worker, if it holds a live one."""
        worker = self._lease.worker
        return (worker.pid,) if worker is not None and not worker.exited() else ()

    @staticmethod
    def security_layers() -> dict[str, str | None]:
        """The layers the shared pool applied so far: name -> None when active, else why it is not."""
        return dict(_shared_pool().layers)

    # -- internals -------------------------------------------------------------------------------
    def _ensure_worker(self) -> _Worker:
        if self._lease.final:  # e.g. a daemon thread still calling while the interpreter exits
            raise _StartError("the tool has been finalized (interpreter exit)")
        worker = self._lease.worker
        if worker is None:
            worker = _shared_pool().lease(self.startup_timeout_s)
            try:
                worker.send(b"L" + json.dumps({
                    "memory_mb": self.memory_mb,
                    "cpu_s": int(max(600.0, 60 * float(self.timeout_s))),
                    "recursion_limit": 1000,
                    "language_layer": self._language_layer,
                }).encode())  # fmt: skip
            except _WorkerGone:
                worker.kill()
                raise
            self._lease.worker = worker
        return worker

    def _run_locked(self, payload: bytes, limit: float, start: float) -> ToolResult:
        try:
            worker = self._ensure_worker()
            try:
                worker.send(payload)
            except _WorkerGone:  # died while idle: one retry on a fresh worker
                self._lease.release()
                worker = self._ensure_worker()
                worker.send(payload)
        except (_StartError, _WorkerGone) as exc:
            self._lease.release()
            return self._error(f"SystemError: the python sandbox could not start: {exc}", "", start)
        max_reply = 64 + 4 * self.max_output_chars + 65536
        try:
            reply = worker.recv(time.perf_counter() + limit, max_reply)
        except _Timeout:
            self._lease.release()
            return self._error(f"TimeoutError: execution exceeded {limit:g} s", "", start)
        except _WorkerGone:
            pid = worker.pid
            self._lease.release()
            reason = _describe_status(_shared_pool().exit_status(pid))
            return self._error(reason, "", start)
        kind, body = reply[:1], reply[1:]
        if kind == b"O":
            return ToolResult(self.name, True, body.decode("utf-8", "replace").rstrip("\n"), None, time.perf_counter() - start)
        if kind == b"E":
            error, _, output = body.partition(b"\0")
            return self._error(error.decode("utf-8", "replace"), output.decode("utf-8", "replace"), start)
        self._lease.release()
        return self._error("SystemError: the sandbox process misbehaved; the next call gets a fresh one", "", start)

    def _error(self, error: str, output: str, start: float) -> ToolResult:
        content = f"Error: {error}"
        output = output.rstrip("\n")
        if output.strip():
            content += f"\nOutput before the error:\n{output}"
        return ToolResult(self.name, False, content, error, time.perf_counter() - start)

    def _after_fork(self) -> None:
        """In a forked child: forget the parent's worker (without killing it) and reset the lock."""
        self._lock = threading.Lock()
        self._finalizer.detach()
        if self._lease.worker is not None:
            self._lease.worker.forget()
        self._lease = _Lease()
        self._finalizer = weakref.finalize(self, _Lease.finalize, self._lease)
