"""The RestrictedPython sandbox and the worker process that hosts it (see `agentenv.tools.python_tool`).

This module must import only the standard library and RestrictedPython: the parent starts it as a
script (`python -I -S _sandbox_worker.py CONFIG`), so the worker never imports `agentenv` (nor torch,
nor anything the user's process has loaded). `Sandbox` is also usable in-process (the benchmark uses it
to measure the rejected in-process design), but only the worker applies the resource limits.

Protocol (pipes, one request in flight at a time). Every message is a 4-byte big-endian length followed by
that many bytes. Worker -> parent: first `b"R" + JSON` (ready, with the baseline memory) or `b"F" + text`
(start-up failed); then one reply per request: `b"O" + output` or `b"E" + error_line + b"\\0" + output`
(UTF-8). Parent -> worker: `struct(">dI")` (timeout in seconds, max output characters) + UTF-8 source.
"""

from __future__ import annotations

import ast
import builtins
import collections
import functools
import gc
import json
import operator
import os
import string
import struct
import sys
import types
from typing import Any, Callable

if __name__ == "__main__" and len(sys.argv) > 1:  # worker started with -I -S: the parent names the path
    for _path in json.loads(sys.argv[1]).get("path", ()):
        if _path not in sys.path:
            sys.path.append(_path)

try:
    from RestrictedPython import compile_restricted_exec
    from RestrictedPython.Guards import guarded_iter_unpack_sequence, guarded_unpack_sequence, safe_builtins
    from RestrictedPython.transformer import IOPERATOR_TO_STR, RestrictingNodeTransformer, copy_locations
except ImportError as _exc:  # pragma: no cover - reported to the parent by main()
    _IMPORT_ERROR: ImportError | None = _exc
    RestrictingNodeTransformer = object  # type: ignore[assignment,misc]
else:
    _IMPORT_ERROR = None
try:  # RestrictedPython >= 7 refuses these at compile time too; the run-time guard refuses them always
    from RestrictedPython.transformer import INSPECT_ATTRIBUTES
except ImportError:  # pragma: no cover
    INSPECT_ATTRIBUTES = frozenset()
_INTROSPECTION_ATTRS = frozenset(
    """tb_frame tb_next tb_lasti f_back f_builtins f_code f_generator f_globals f_locals f_trace f_lineno
    f_lasti co_code gi_frame gi_code gi_yieldfrom gi_running cr_await cr_frame cr_code cr_origin ag_await
    ag_frame ag_code func_globals func_code im_func im_self mro""".split()
)

SANDBOX_FILENAME = "<sandbox>"
REQUEST_HEADER = struct.Struct(">dI")
LENGTH = struct.Struct(">I")

# Modules the sandboxed program may import. Each is exposed as a read-only proxy holding its public
# (`__all__`, else non-underscore) attributes that are not modules, minus the exclusions below: anything
# that reads an attribute or evaluates a string it is given (operator.attrgetter/methodcaller,
# functools.update_wrapper/wraps/singledispatch -> typing.get_type_hints -> eval, string.Formatter) is
# left out on purpose, and functools is an explicit allow-list.
_FUNCTOOLS = ("cache", "cached_property", "cmp_to_key", "lru_cache", "partial", "partialmethod", "reduce")
_MODULE_EXCLUDES: dict[str, frozenset[str]] = {
    "operator": frozenset({"attrgetter", "methodcaller"}),
    "string": frozenset({"Formatter"}),
    "re": frozenset({"template"}),  # deprecated, warns
    # the template contexts are process-wide: a program could change them for every later call
    "decimal": frozenset({"DefaultContext", "BasicContext", "ExtendedContext"}),
}
ALLOWED_MODULES = (
    "math", "cmath", "statistics", "fractions", "decimal", "random", "itertools", "functools",
    "collections", "operator", "heapq", "bisect", "copy", "re", "string", "json", "datetime",
)  # fmt: skip

# Attribute names refused at run time on top of RestrictedPython's compile-time checks (names starting
# with "_" are refused by both): frame/generator/traceback/code introspection and `mro`.
BLOCKED_ATTRS = frozenset(INSPECT_ATTRIBUTES) | _INTROSPECTION_ATTRS
_FORMAT_ATTRS = frozenset({"format", "format_map"})
# Values an attribute access may never return, whatever the name.
_BLOCKED_VALUE_TYPES = frozenset(
    {types.ModuleType, types.FrameType, types.CodeType, types.TracebackType, types.CellType}
)

# Extra dunder methods a sandboxed class may define (RestrictedPython allows only __init__, __contains__
# and comparisons). All of them run restricted code; left out: __del__ (would run at an arbitrary later
# time), __getattribute__/__setattr__/__delattr__, descriptors, pickling/copy hooks, __new__, __init_subclass__,
# __set_name__, __class_getitem__.
EXTRA_MAGIC_METHODS = frozenset(
    """__repr__ __str__ __format__ __hash__ __bool__ __len__ __iter__ __next__ __reversed__ __getitem__
    __setitem__ __delitem__ __missing__ __getattr__ __call__ __enter__ __exit__ __index__ __int__ __float__
    __complex__ __round__ __trunc__ __floor__ __ceil__ __neg__ __pos__ __abs__ __invert__ __add__ __sub__
    __mul__ __matmul__ __truediv__ __floordiv__ __mod__ __divmod__ __pow__ __lshift__ __rshift__ __and__
    __xor__ __or__ __radd__ __rsub__ __rmul__ __rmatmul__ __rtruediv__ __rfloordiv__ __rmod__ __rdivmod__
    __rpow__ __rlshift__ __rrshift__ __rand__ __rxor__ __ror__ __iadd__ __isub__ __imul__ __imatmul__
    __itruediv__ __ifloordiv__ __imod__ __ipow__ __ilshift__ __irshift__ __iand__ __ixor__ __ior__""".split()
)

_INPLACE_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "+=": operator.iadd, "-=": operator.isub, "*=": operator.imul, "/=": operator.itruediv,
    "//=": operator.ifloordiv, "%=": operator.imod, "**=": operator.ipow, "<<=": operator.ilshift,
    ">>=": operator.irshift, "&=": operator.iand, "^=": operator.ixor, "|=": operator.ior,
    "@=": operator.imatmul,
}  # fmt: skip


class _SandboxPolicy(RestrictingNodeTransformer):  # type: ignore[misc,valid-type]
    """RestrictedPython's policy plus: more dunder methods, `x[k] += v` / `o.a += v`, annotated assignments
    (annotation dropped), and the value of a final expression statement shown like a REPL."""

    def check_name(self, node, name, allow_magic_methods=False):  # noqa: D102
        if allow_magic_methods and name in EXTRA_MAGIC_METHODS and getattr(node, "col_offset", 0) != 0:
            return
        super().check_name(node, name, allow_magic_methods)

    def visit_AugAssign(self, node):  # noqa: D102
        target = node.target
        if not isinstance(target, (ast.Subscript, ast.Attribute)):
            return super().visit_AugAssign(node)
        op = IOPERATOR_TO_STR[type(node.op)]
        if isinstance(target, ast.Attribute):
            if target.attr.startswith("_") or target.attr in BLOCKED_ATTRS:
                self.error(node, f'"{target.attr}" is an invalid attribute name.')
                return node
            helper, key = "_inplace_attr_", ast.Constant(target.attr)
        else:
            helper, key = "_inplace_item_", self.visit(target.slice)
        obj = self.visit(target.value)
        value = self.visit(node.value)
        call = ast.Call(func=ast.Name(helper, ast.Load()), args=[obj, key, ast.Constant(op), value], keywords=[])
        new_node = ast.Expr(value=call)
        copy_locations(new_node, node)
        return ast.fix_missing_locations(new_node)

    def visit_AnnAssign(self, node):
        """`x: T = v` becomes `x = v` (the annotation is dropped, never evaluated); `x: T` becomes `pass`."""
        if node.value is None:
            new_node: ast.stmt = ast.Pass()
            copy_locations(new_node, node)
            return new_node
        target = node.target
        target.ctx = ast.Store()
        new_node = ast.Assign(targets=[target], value=node.value)
        copy_locations(new_node, node)
        return self.visit_Assign(new_node)

    def visit_Module(self, node):  # noqa: D102
        last = node.body[-1] if node.body and isinstance(node.body[-1], ast.Expr) else None
        node = super().visit_Module(node)
        if last is not None and node.body and node.body[-1] is last:
            call = ast.Call(func=ast.Name("_show_", ast.Load()), args=[last.value], keywords=[])
            copy_locations(call, last.value)
            last.value = call
            ast.fix_missing_locations(last)
        return node


class SandboxModule:
    """A read-only stand-in for a whitelisted module: only allowed names, no `__dict__` walk to `os`."""

    def __init__(self, name: str, attrs: dict[str, Any]):
        self.__dict__.update(attrs)
        object.__setattr__(self, "_sandbox_name_", name)  # not reachable: names starting with "_"

    def __getattr__(self, name):  # only called when the name is missing
        if name == "_sandbox_name_":
            raise AttributeError(name)
        raise AttributeError(f"module '{self._sandbox_name_}' has no attribute '{name}' (in the sandbox)")

    def __setattr__(self, name, value):
        raise AttributeError(f"module '{self._sandbox_name_}' is read-only in the sandbox")

    def __delattr__(self, name):
        raise AttributeError(f"module '{self._sandbox_name_}' is read-only in the sandbox")

    def __repr__(self) -> str:
        return f"<module '{self._sandbox_name_}' (sandbox)>"

    def __dir__(self):
        return sorted(k for k in self.__dict__ if not k.startswith("_"))


class _Output:
    """The program's stdout: keeps the first `limit` characters and counts the rest."""

    __slots__ = ("parts", "size", "limit")

    def __init__(self, limit: int):
        self.parts: list[str] = []
        self.size = 0
        self.limit = limit

    def write(self, text: str) -> int:
        if type(text) is not str:
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        n = len(text)
        room = self.limit - self.size
        if room > 0:
            self.parts.append(text if n <= room else text[:room])
        self.size += n
        return n

    def flush(self) -> None:
        pass

    def text(self) -> str:
        out = "".join(self.parts)
        if self.size > self.limit:
            out += f"\n... [output truncated: {self.size} characters written, showing the first {self.limit}]"
        return out


class _PrintCollector:
    """What RestrictedPython's `_print_(_getattr_)` returns; one per call, shared by every function so
    that `print` inside a function reaches the output (RestrictedPython's own collector is per function)."""

    __slots__ = ("out", "_getattr_")

    def __init__(self, out: _Output, getattr_: Callable[..., Any]):
        self.out = out
        self._getattr_ = getattr_

    def _call_print(self, *objects: Any, **kwargs: Any) -> None:
        file = kwargs.get("file")
        if file is None:
            kwargs["file"] = self.out
        else:
            self._getattr_(file, "write")
        print(*objects, **kwargs)

    def __call__(self) -> str:  # the `printed` name
        return "".join(self.out.parts)


def _sandbox_callable(value: Any) -> bool:
    """Whether `value` is a function (or a method of one) that was compiled inside the sandbox."""
    func = getattr(value, "__func__", value)
    code = getattr(func, "__code__", None) if isinstance(func, types.FunctionType) else None
    return code is not None and code.co_filename == SANDBOX_FILENAME


class Sandbox:
    """RestrictedPython with guarded builtins, whitelisted module proxies and captured output.

    `run(code)` compiles (LRU-cached by source) and executes `code` in fresh globals and returns
    `(ok, error_line, output)`; it never raises for anything the code does (bar interpreter-fatal errors).
    Resource limits are *not* applied here: the worker process applies them around it.
    """

    def __init__(self, cache_size: int = 256, memory_mb: int | None = None):
        if _IMPORT_ERROR is not None:
            raise _IMPORT_ERROR
        self.cache_size = cache_size
        self.memory_mb = memory_mb
        self._cache: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._user_types: set[type] = set()
        self._out = _Output(0)
        self._used_decimal = False
        self.modules = self._build_modules()
        self.builtins = self._build_builtins()
        import decimal

        self._decimal = decimal

    # -- modules ---------------------------------------------------------------------------------
    def _build_modules(self) -> dict[str, SandboxModule]:
        import importlib

        proxies: dict[str, SandboxModule] = {}
        for name in ALLOWED_MODULES:
            module = importlib.import_module(name)
            if name == "functools":
                names: Any = _FUNCTOOLS
            else:
                names = getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")]
            excluded = _MODULE_EXCLUDES.get(name, frozenset())
            attrs = {}
            for attr in names:
                if attr.startswith("_") or attr in excluded or not hasattr(module, attr):
                    continue
                value = getattr(module, attr)
                if isinstance(value, types.ModuleType):
                    continue
                attrs[attr] = value
            if name == "functools":
                attrs["total_ordering"] = self._total_ordering
            proxies[name] = SandboxModule(name, attrs)
        return proxies

    def _total_ordering(self, cls):
        """functools.total_ordering, for classes defined in the sandbox only (it sets attributes)."""
        if cls not in self._user_types:
            raise TypeError("total_ordering() is only allowed on classes defined in the sandbox")
        return functools.total_ordering(cls)

    # -- guards ----------------------------------------------------------------------------------
    def _build_builtins(self) -> dict[str, Any]:
        user_types = self._user_types
        modules = self.modules
        allowed_list = ", ".join(sorted(modules))
        blocked_attrs = BLOCKED_ATTRS
        blocked_values = _BLOCKED_VALUE_TYPES
        format_attrs = _FORMAT_ATTRS
        safe_write_types = frozenset({dict, list, bytearray})
        decimal_context = __import__("decimal").Context
        missing = object()

        formatter = _SafeFormatter()

        def guarded_getattr(ob, name, default=missing):
            if type(name) is not str:
                raise TypeError(f"attribute name must be a string, not {type(name).__name__}")
            if name[:1] == "_":
                raise AttributeError(f'"{name}" is an invalid attribute name because it starts with "_"')
            if name in blocked_attrs:
                raise AttributeError(f'"{name}" is a restricted attribute in the sandbox')
            if name in format_attrs:
                return format_attr(ob, name)
            if default is missing:
                value = getattr(ob, name)
            else:
                value = getattr(ob, name, default)
            if type(value) in blocked_values:
                raise AttributeError(f'access to "{name}" ({type(value).__name__}) is not allowed in the sandbox')
            return value

        formatter.getattr_ = guarded_getattr

        def format_attr(ob, name):
            if isinstance(ob, str):
                return functools.partial(formatter.format if name == "format" else formatter.format_map_, ob)
            if isinstance(ob, type) and issubclass(ob, str):
                return formatter.format if name == "format" else formatter.format_map_
            value = getattr(ob, name)
            if callable(value) and not _sandbox_callable(value):
                raise AttributeError(f"'{name}' methods other than str.{name} are disabled in the sandbox")
            return value

        def guarded_getitem(ob, key):
            return ob[key]

        def guarded_hasattr(ob, name):
            if type(name) is not str:
                raise TypeError("hasattr(): attribute name must be string")
            try:
                guarded_getattr(ob, name)
            except AttributeError:
                return False
            return True

        class ItemWriter:
            """Allows `ob[k] = v` / `del ob[k]` on any object but attribute writes on none."""

            __slots__ = ("ob",)

            def __init__(self, ob):
                object.__setattr__(self, "ob", ob)

            def __setitem__(self, key, value):
                self.ob[key] = value

            def __delitem__(self, key):
                del self.ob[key]

            def _refuse(self, name):
                ob = self.ob
                if isinstance(ob, SandboxModule):
                    what = f"module '{ob._sandbox_name_}' is read-only in the sandbox"
                else:
                    what = (
                        f"cannot set or delete attribute {name!r} of a {type(ob).__name__} object in the sandbox "
                        "(only objects of classes defined in the sandbox are writable)"
                    )
                raise AttributeError(what)

            def __setattr__(self, name, value):
                self._refuse(name)

            def __delattr__(self, name):
                self._refuse(name)

        def guarded_write(ob):
            t = type(ob)
            if t in safe_write_types or t in user_types or t is decimal_context:
                return ob
            if isinstance(ob, type) and ob in user_types:
                return ob
            return ItemWriter(ob)

        def guarded_setattr(ob, name, value):
            if type(name) is not str:
                raise TypeError("attribute name must be string")
            if name[:1] == "_" or name in blocked_attrs:
                raise AttributeError(f'"{name}" is an invalid attribute name in the sandbox')
            setattr(guarded_write(ob), name, value)

        def guarded_delattr(ob, name):
            if type(name) is not str:
                raise TypeError("attribute name must be string")
            if name[:1] == "_" or name in blocked_attrs:
                raise AttributeError(f'"{name}" is an invalid attribute name in the sandbox')
            delattr(guarded_write(ob), name)

        def inplacevar(op, x, y):
            return _INPLACE_OPS[op](x, y)

        def inplace_item(ob, key, op, value):
            writer = guarded_write(ob)
            writer[key] = _INPLACE_OPS[op](ob[key], value)

        def inplace_attr(ob, name, op, value):
            writer = guarded_write(ob)
            setattr(writer, name, _INPLACE_OPS[op](guarded_getattr(ob, name), value))

        def apply(func, *args, **kwargs):
            return func(*args, **kwargs)

        def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):  # noqa: A002
            if type(name) is not str:
                raise ImportError("module name must be a string")
            if level:
                raise ImportError("relative imports are not allowed in the sandbox")
            module = modules.get(name)
            if module is None:
                raise ImportError(
                    f"import of '{name}' is not allowed in the sandbox (importable modules: {allowed_list})"
                )
            if name == "decimal":
                self._used_decimal = True
            for item in fromlist or ():
                if type(item) is not str or item == "*" or item.startswith("_") or item not in module.__dict__:
                    raise ImportError(f"cannot import name '{item}' from '{name}' (not available in the sandbox)")
            return module

        def sandbox_metaclass(name, bases, namespace, **kwargs):
            cls = type(name, bases, namespace, **kwargs)
            user_types.add(cls)
            return cls

        def print_factory(_getattr_=None):
            return self._collector

        def show(value):
            if value is not None:
                self._out.write(repr(value) + "\n")

        def guarded_dir(*args):
            if len(args) != 1:
                raise TypeError("dir() takes exactly one argument in the sandbox")
            return sorted(n for n in dir(args[0]) if not n.startswith("_"))

        b: dict[str, Any] = dict(safe_builtins)
        for name in (
            "all any ascii bin bytearray bytes classmethod dict enumerate filter format frozenset iter list "
            "map max min next object property reversed set sorted staticmethod sum super tuple zip "
            "NotImplemented ArithmeticError LookupError RecursionError StopAsyncIteration TimeoutError "
            "ConnectionError FileNotFoundError PermissionError"
        ).split():
            b[name] = getattr(builtins, name)
        for name in ("setattr", "delattr"):
            b.pop(name, None)
        b.update(
            {
                "getattr": guarded_getattr,
                "hasattr": guarded_hasattr,
                "setattr": guarded_setattr,
                "delattr": guarded_delattr,
                "dir": guarded_dir,
                "__import__": guarded_import,
                "__metaclass__": sandbox_metaclass,
                "_getattr_": guarded_getattr,
                "_getitem_": guarded_getitem,
                "_getiter_": iter,
                "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
                "_unpack_sequence_": guarded_unpack_sequence,
                "_write_": guarded_write,
                "_inplacevar_": inplacevar,
                "_inplace_item_": inplace_item,
                "_inplace_attr_": inplace_attr,
                "_apply_": apply,
                "_print_": print_factory,
                "_show_": show,
            }
        )
        self._guarded_getattr = guarded_getattr
        return b

    # -- compile & run ---------------------------------------------------------------------------
    def compile(self, code: str) -> Any:
        """The code object for `code`, or the compile error text (both cached by source)."""
        cache = self._cache
        hit = cache.get(code)
        if hit is not None:
            cache.move_to_end(code)
            return hit
        try:
            result = compile_restricted_exec(code, filename=SANDBOX_FILENAME, policy=_SandboxPolicy)
            compiled: Any = result.code if not result.errors else _compile_errors(result.errors)
        except SyntaxError as exc:  # raised by compile() itself, e.g. 'return' outside function
            compiled = f"SyntaxError: Line {exc.lineno}: {exc.msg}"
        except (ValueError, TypeError, UnicodeError, MemoryError, RecursionError) as exc:
            compiled = f"SyntaxError: {type(exc).__name__}: {exc}"
        cache[code] = compiled
        if len(cache) > self.cache_size:
            cache.popitem(last=False)
        return compiled

    def run(self, code: str, max_output_chars: int = 8192) -> tuple[bool, str | None, str]:
        out = self._out = _Output(max_output_chars)
        self._collector = _PrintCollector(out, self._guarded_getattr)
        compiled = self.compile(code)
        if isinstance(compiled, str):
            return False, compiled, ""
        scope: dict[str, Any] = {"__builtins__": self.builtins, "__name__": "__main__"}
        error = None
        try:
            exec(compiled, scope)
        except MemoryError:
            scope.clear()
            limit = f" of {self.memory_mb} MB" if self.memory_mb else ""
            error = f"MemoryError: the program exceeded the sandbox memory limit{limit}"
        except RecursionError:
            error = "RecursionError: maximum recursion depth exceeded"
        except BaseException as exc:  # noqa: BLE001 - SystemExit/KeyboardInterrupt raised by the program too
            error = _describe(exc)
        finally:
            scope.clear()
            self._user_types.clear()
            if self._used_decimal:
                self._used_decimal = False
                self._decimal.setcontext(self._decimal.Context())
        try:
            text = out.text()
        except MemoryError:
            text = ""
        self._collector = None
        return error is None, error, text


class _SafeFormatter(string.Formatter):
    """`str.format` whose field lookups (`{0.attr}`, `{0[key]}`) go through the sandbox's guarded getattr."""

    getattr_: Callable[..., Any] = getattr

    def get_field(self, field_name, args, kwargs):
        import _string

        first, rest = _string.formatter_field_name_split(field_name)
        obj = self.get_value(first, args, kwargs)
        for is_attr, key in rest:
            obj = self.getattr_(obj, key) if is_attr else obj[key]
        return obj, first

    def format_map_(self, format_string, mapping):
        return self.vformat(format_string, (), mapping)


def _compile_errors(errors) -> str:
    parts = []
    for err in list(errors)[:3]:
        err = str(err)
        if ": SyntaxError: " in err:
            err = err.replace(": SyntaxError: ", ": ", 1)
        parts.append(err)
    return "SyntaxError: " + "; ".join(parts)


_HOST_PATHS = sorted(
    {p for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.abspath(__file__))) if len(p) > 1},
    key=len,
    reverse=True,
)


def _describe(exc: BaseException) -> str:
    """`Type: message` of an exception: the last line of a traceback, without host paths."""
    name = type(exc).__name__
    try:
        message = str(exc)
    except BaseException:  # noqa: BLE001 - a program-defined __str__ may raise anything
        message = "<exception message unavailable>"
    for path in _HOST_PATHS:
        if path in message:
            message = message.replace(path, "...")
    message = message.replace("\0", "\\0")
    if len(message) > 2000:
        message = message[:2000] + "..."
    return f"{name}: {message}" if message else name


# -- worker process --------------------------------------------------------------------------------


def _send(fd: int, payload: bytes) -> None:
    data = memoryview(LENGTH.pack(len(payload)) + payload)
    while data:
        written = os.write(fd, data)
        data = data[written:]


def _recv(fd: int) -> bytes:
    buf = os.read(fd, 1 << 16)
    if not buf:
        raise EOFError
    while len(buf) < 4:
        more = os.read(fd, 4 - len(buf))
        if not more:
            raise EOFError
        buf += more
    (n,) = LENGTH.unpack_from(buf)
    need = 4 + n
    if len(buf) < need:
        chunks = [buf]
        have = len(buf)
        while have < need:
            more = os.read(fd, min(need - have, 1 << 20))
            if not more:
                raise EOFError
            chunks.append(more)
            have += len(more)
        buf = b"".join(chunks)
    return buf[4:need]


def _vm_size_kb() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "replace")


def main(argv: list[str]) -> int:
    """Serve requests on stdin/stdout until EOF."""
    rfd, wfd = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    try:
        import resource
        import signal
        import warnings

        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
        warnings.simplefilter("ignore")
        sys.dont_write_bytecode = True  # RLIMIT_FSIZE=0 below: never try to write a .pyc
        config = json.loads(argv[1]) if len(argv) > 1 else {}
        if _IMPORT_ERROR is not None:
            raise _IMPORT_ERROR
        memory_mb = int(config.get("memory_mb", 256))
        sandbox = Sandbox(cache_size=int(config.get("cache_size", 256)), memory_mb=memory_mb or None)
        sandbox.run("print(1)")  # warm every code path once before measuring the baseline
        sys.setrecursionlimit(int(config.get("recursion_limit", 1000)))
        gc.collect()
        baseline_kb = _vm_size_kb()
        for limit, value in ((resource.RLIMIT_CORE, 0), (resource.RLIMIT_FSIZE, 0), (resource.RLIMIT_NPROC, 0)):
            try:
                resource.setrlimit(limit, (value, value))
            except (ValueError, OSError):
                pass
        if memory_mb > 0 and baseline_kb:
            limit_bytes = baseline_kb * 1024 + memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
        cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    except BaseException as exc:  # noqa: BLE001 - tell the parent why we could not start
        try:
            _send(wfd, b"F" + _encode(_describe(exc)))
        finally:
            return 2
    gc.freeze()
    gc.disable()
    _send(wfd, b"R" + json.dumps({"pid": os.getpid(), "baseline_kb": baseline_kb}).encode())
    getrusage, RUSAGE_SELF = resource.getrusage, resource.RUSAGE_SELF
    setrlimit, RLIMIT_CPU, INF = resource.setrlimit, resource.RLIMIT_CPU, resource.RLIM_INFINITY
    while True:
        try:
            request = _recv(rfd)
        except (EOFError, OSError):
            return 0
        try:
            timeout, max_out = REQUEST_HEADER.unpack_from(request)
            code = request[REQUEST_HEADER.size :].decode("utf-8", "surrogatepass")
            # Backstop if the parent dies mid-call: the kernel kills us after timeout + 2 s of CPU.
            usage = getrusage(RUSAGE_SELF)
            soft = int(usage.ru_utime + usage.ru_stime + timeout) + 3
            if cpu_hard == INF or soft <= cpu_hard:
                setrlimit(RLIMIT_CPU, (soft, cpu_hard))
            gc.enable()
            try:
                ok, error, output = sandbox.run(code, max_out)
            finally:
                gc.collect()  # run finalizers of the program's garbage now, inside the timed call
                gc.disable()
            if ok:
                reply = b"O" + _encode(output)
            else:
                reply = b"E" + _encode((error or "Error").replace("\0", "\\0")) + b"\0" + _encode(output)
        except MemoryError:
            reply = b"E" + b"MemoryError: the program exceeded the sandbox memory limit\0"
        except BaseException as exc:  # noqa: BLE001 - never die on a program's doing
            reply = b"E" + _encode(_describe(exc)) + b"\0"
        _send(wfd, reply)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
