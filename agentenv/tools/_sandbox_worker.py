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
import time
import types
from typing import Any, Callable

if __name__ == "__main__" and len(sys.argv) > 2:  # started with -I -S: the parent names the paths
    for _path in json.loads(sys.argv[2]).get("path", ()):
        if _path not in sys.path:
            sys.path.append(_path)

try:
    from RestrictedPython import compile_restricted_exec
    from RestrictedPython.Guards import safe_builtins
    import RestrictedPython.transformer as _rp_transformer
    from RestrictedPython.transformer import IOPERATOR_TO_STR, RestrictingNodeTransformer
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

# Modules the sandboxed program may import, each a read-only facade holding exactly the names listed
# here: vetted functions, types and constants. Nothing listed walks arbitrary objects or evaluates
# strings (`copy` is the sandbox's own, for plain data; `operator.attrgetter`/`methodcaller`,
# `functools.wraps`/`singledispatch`, `string.Formatter` are absent), returns a module, frame or code
# object, or keeps a cache that can grow without bound (`re`'s flags are plain ints, not `RegexFlag`,
# whose pseudo-members are cached forever). Module-level state that remains (regex caches, `random`'s
# generator, the decimal context, ABC registries) lives in a worker that serves one episode only.
FACADES: dict[str, str] = {
    "math": """acos acosh asin asinh atan atan2 atanh cbrt ceil comb copysign cos cosh degrees dist e erf erfc
        exp exp2 expm1 fabs factorial floor fmod frexp fsum gamma gcd hypot inf isclose isfinite isinf isnan
        isqrt lcm ldexp lgamma log log10 log1p log2 modf nan nextafter perm pi pow prod radians remainder sin
        sinh sqrt tan tanh tau trunc ulp""",
    "cmath": """acos acosh asin asinh atan atanh cos cosh e exp inf infj isclose isfinite isinf isnan log log10 nan
        nanj phase pi polar rect sin sinh sqrt tan tanh tau""",
    "statistics": """NormalDist StatisticsError correlation covariance fmean geometric_mean harmonic_mean
        linear_regression mean median median_grouped median_high median_low mode multimode pstdev pvariance
        quantiles stdev variance""",
    "fractions": "Fraction",
    "decimal": """Clamped Context ConversionSyntax Decimal DecimalException DecimalTuple DivisionByZero
        DivisionImpossible DivisionUndefined FloatOperation Inexact InvalidContext InvalidOperation MAX_EMAX
        MAX_PREC MIN_EMIN MIN_ETINY Overflow ROUND_05UP ROUND_CEILING ROUND_DOWN ROUND_FLOOR ROUND_HALF_DOWN
        ROUND_HALF_EVEN ROUND_HALF_UP ROUND_UP Rounded Subnormal Underflow getcontext localcontext setcontext""",
    "random": """Random SystemRandom betavariate choice choices expovariate gammavariate gauss getrandbits getstate
        lognormvariate normalvariate paretovariate randbytes randint random randrange sample seed setstate
        shuffle triangular uniform vonmisesvariate weibullvariate""",
    "itertools": """accumulate chain combinations combinations_with_replacement compress count cycle dropwhile
        filterfalse groupby islice pairwise permutations product repeat starmap takewhile tee zip_longest""",
    "functools": "cache cached_property cmp_to_key lru_cache partial partialmethod reduce total_ordering",
    "collections": "ChainMap Counter OrderedDict UserDict UserList UserString defaultdict deque namedtuple",
    "operator": """abs add and_ call concat contains countOf delitem eq floordiv ge getitem gt iadd iand iconcat
        ifloordiv ilshift imatmul imod imul index indexOf inv invert ior ipow irshift is_ is_not isub
        itemgetter itruediv ixor le length_hint lshift lt matmul mod mul ne neg not_ or_ pos pow rshift
        setitem sub truediv truth xor""",
    "heapq": "heapify heappop heappush heappushpop heapreplace merge nlargest nsmallest",
    "bisect": "bisect bisect_left bisect_right insort insort_left insort_right",
    "copy": "Error copy deepcopy",
    "re": """A ASCII DOTALL I IGNORECASE L LOCALE M MULTILINE NOFLAG S U UNICODE VERBOSE X Match Pattern compile
        error escape findall finditer fullmatch match purge search split sub subn""",
    "string": """Template ascii_letters ascii_lowercase ascii_uppercase capwords digits hexdigits octdigits
        printable punctuation whitespace""",
    "json": "JSONDecodeError JSONDecoder JSONEncoder dump dumps load loads",
    "datetime": "MAXYEAR MINYEAR UTC date datetime time timedelta timezone tzinfo",
}
ALLOWED_MODULES = tuple(FACADES)

# Attribute names refused at run time on top of RestrictedPython's compile-time checks (names starting
# with "_" are refused by both): frame/generator/traceback/code introspection and `mro`.
BLOCKED_ATTRS = frozenset(INSPECT_ATTRIBUTES) | _INTROSPECTION_ATTRS
_FORMAT_ATTRS = frozenset({"format", "format_map"})
# Names the guard treats specially on every type (never read natively).
_GUARDED_NAMES = _FORMAT_ATTRS | {"register"}
# Types whose public attributes are all bound methods or numbers: read without the guard.
PLAIN_TYPES = frozenset({
    list, dict, str, set, frozenset, tuple, int, float, complex, bool, bytes, bytearray, range,
    collections.Counter, collections.OrderedDict, collections.defaultdict, collections.deque,
})  # fmt: skip
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


def copy_locations(new_node: ast.AST, old_node: ast.AST) -> None:
    """RestrictedPython's `copy_locations` without its recursive `ast.fix_missing_locations`: that walk ran
    once per rewritten node (half of the compile time of a short program); `_SandboxPolicy.visit_Module`
    fixes the whole tree once instead. Installed in RestrictedPython by `use_shallow_copy_locations`."""
    new_node.lineno = old_node.lineno
    new_node.end_lineno = old_node.end_lineno
    new_node.col_offset = old_node.col_offset
    new_node.end_col_offset = old_node.end_col_offset


def use_shallow_copy_locations() -> None:
    """Make RestrictedPython's transformer use `copy_locations` above (only sandbox processes call this;
    every tree it builds goes through `_SandboxPolicy.visit_Module`, which fixes locations at the end)."""
    _rp_transformer.copy_locations = copy_locations


class _SandboxPolicy(RestrictingNodeTransformer):  # type: ignore[misc,valid-type]
    """RestrictedPython's policy plus: more dunder methods, `o.a += v` through the write guard, annotated
    assignments (annotation dropped), and the value of a final expression statement shown like a REPL.

    Subscripts, `x += v`, `x[k] += v`, loops and tuple unpacking stay native Python: their guards in
    RestrictedPython (`_getitem_`, `_write_` on items, `_inplacevar_`, the unpack guards) would only call
    `ob[key]`, `iter` and the operator here, since item access is allowed on every object, so they cost
    1.9-4x on loop-heavy programs and stop nothing."""

    def guard_iter(self, node):  # noqa: D102
        return self.node_contents_visit(node)

    def protect_unpack_sequence(self, target, value):  # noqa: D102
        return value

    def visit_Subscript(self, node):  # noqa: D102
        return self.node_contents_visit(node)

    # Fast paths: `x.name` and `x.name(a, k=b)` (x, a, b plain names or constants) run natively when
    # `type(x)` is a built-in data type (PLAIN_TYPES), whose public attributes are all bound methods or
    # numbers, so the guard could only return the same value; any other type takes the guarded branch.
    # The call form keeps CPython's method-call opcode (no bound method built per call).

    @staticmethod
    def _is_plain(node: ast.AST) -> bool:
        return isinstance(node, ast.Constant) or (isinstance(node, ast.Name) and node.id not in ("print", "printed"))

    @staticmethod
    def _plain_type_test(name: str) -> ast.expr:
        load = ast.Load()
        return ast.Compare(
            left=ast.Call(func=ast.Name("_type_", load), args=[ast.Name(name, load)], keywords=[]),
            ops=[ast.In()],
            comparators=[ast.Name("_plain_types_", load)],
        )

    def _fast_name(self, attribute: ast.AST) -> str | None:
        if not isinstance(attribute, ast.Attribute) or not isinstance(attribute.ctx, ast.Load):
            return None
        name = attribute.attr
        if name.startswith("_") or name in BLOCKED_ATTRS or name in _GUARDED_NAMES or not self._is_plain(attribute.value):
            return None
        return attribute.value.id if isinstance(attribute.value, ast.Name) else None

    def visit_Attribute(self, node):  # noqa: D102
        target = self._fast_name(node)
        guarded = super().visit_Attribute(node)
        if target is None:
            return guarded
        load = ast.Load()
        native = ast.Attribute(value=ast.Name(target, load), attr=node.attr, ctx=load)
        fast = ast.IfExp(test=self._plain_type_test(target), body=native, orelse=guarded)
        copy_locations(fast, node)
        return fast

    def visit_Call(self, node):  # noqa: D102
        target = self._fast_name(node.func)
        plain_args = all(self._is_plain(a) for a in node.args) and all(
            k.arg is not None and self._is_plain(k.value) for k in node.keywords
        )
        if target is None or not plain_args:
            return super().visit_Call(node)
        load = ast.Load()
        native = ast.Call(
            func=ast.Attribute(value=ast.Name(target, load), attr=node.func.attr, ctx=load),
            args=[ast.Constant(a.value) if isinstance(a, ast.Constant) else ast.Name(a.id, load) for a in node.args],
            keywords=[
                ast.keyword(arg=k.arg, value=ast.Constant(k.value.value) if isinstance(k.value, ast.Constant) else ast.Name(k.value.id, load))
                for k in node.keywords
            ],
        )
        guarded = super().visit_Call(node)  # checks every name, and guards the attribute read
        if isinstance(guarded, ast.Call) and isinstance(guarded.func, ast.IfExp):
            guarded.func = guarded.func.orelse  # the plain-type branch is `native` already
        fast = ast.IfExp(test=self._plain_type_test(target), body=native, orelse=guarded)
        copy_locations(fast, node)
        return fast

    def check_name(self, node, name, allow_magic_methods=False):  # noqa: D102
        if allow_magic_methods and name in EXTRA_MAGIC_METHODS and getattr(node, "col_offset", 0) != 0:
            return
        super().check_name(node, name, allow_magic_methods)

    def visit_AugAssign(self, node):  # noqa: D102
        target = node.target
        if not isinstance(target, ast.Attribute):
            return self.node_contents_visit(node)
        op = IOPERATOR_TO_STR[type(node.op)]
        if target.attr.startswith("_") or target.attr in BLOCKED_ATTRS:
            self.error(node, f'"{target.attr}" is an invalid attribute name.')
            return node
        helper, key = "_inplace_attr_", ast.Constant(target.attr)
        obj = self.visit(target.value)
        value = self.visit(node.value)
        call = ast.Call(func=ast.Name(helper, ast.Load()), args=[obj, key, ast.Constant(op), value], keywords=[])
        new_node = ast.Expr(value=call)
        copy_locations(new_node, node)
        return new_node

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
        return ast.fix_missing_locations(node)  # once for the whole tree (see copy_locations)


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


def _plain_copy(user_types: set[type], deep: bool) -> Callable[[Any], Any]:
    """`copy.copy` / `copy.deepcopy` for plain data only: built-in scalars and containers, the standard
    collections, and instances of classes defined in the sandbox. The standard `copy` walks any object
    through `__reduce_ex__` and keeps every original in its memo, which hands internals to the caller."""
    import datetime
    import decimal
    import fractions

    atomic = frozenset({
        type(None), bool, int, float, complex, str, bytes, range, type(Ellipsis), type(NotImplemented),
        fractions.Fraction, decimal.Decimal, datetime.date, datetime.datetime, datetime.time,
        datetime.timedelta, datetime.timezone,
    })  # fmt: skip
    plain_bases = (object, list, dict, set)

    def copy_of(x: Any, memo: dict[int, Any]) -> Any:
        t = type(x)
        if t in atomic:
            return x
        key = id(x)
        if key in memo:
            return memo[key]
        item = (lambda v: copy_of(v, memo)) if deep else (lambda v: v)
        if t is list:
            y = memo[key] = []
            y.extend(item(v) for v in x)
        elif t is tuple:
            y = memo[key] = tuple(item(v) for v in x) if deep else x
        elif t in (dict, collections.OrderedDict, collections.Counter):
            y = memo[key] = t()
            for k, v in x.items():
                y[item(k)] = item(v)
        elif t is collections.defaultdict:
            y = memo[key] = collections.defaultdict(x.default_factory)
            for k, v in x.items():
                y[item(k)] = item(v)
        elif t in (set, frozenset):
            y = memo[key] = t(item(v) for v in x)
        elif t is bytearray:
            y = memo[key] = bytearray(x)
        elif t is collections.deque:
            y = memo[key] = collections.deque((item(v) for v in x), x.maxlen)
        elif issubclass(t, tuple) and type(getattr(t, "_fields", None)) is tuple and hasattr(t, "_make"):
            y = memo[key] = t._make(item(v) for v in x) if deep else x  # a namedtuple
        elif t in user_types and all(b in user_types or b in plain_bases for b in t.__mro__):
            y = memo[key] = t.__new__(t)
            for k, v in x.__dict__.items():
                y.__dict__[k] = item(v)
            if isinstance(x, list):
                y.extend(item(v) for v in x)
            elif isinstance(x, set):
                y.update(item(v) for v in x)
            elif isinstance(x, dict):
                y.update((item(k), item(v)) for k, v in x.items())
        else:
            raise TypeError(
                f"copy in the sandbox copies built-in data and objects of classes defined in the sandbox, "
                f"not {t.__name__!r}"
            )
        return y

    def copier(x, memo=None):
        if memo is not None:
            raise TypeError("the memo argument is not supported in the sandbox")
        return copy_of(x, {})

    copier.__name__ = copier.__qualname__ = "deepcopy" if deep else "copy"
    return copier


class Sandbox:
    """RestrictedPython with guarded builtins, whitelisted module proxies and captured output.

    `run(code)` compiles (LRU-cached by source) and executes `code` in fresh globals and returns
    `(ok, error_line, output)`; it never raises for anything the code does (bar interpreter-fatal errors).
    Resource limits are *not* applied here: the worker process applies them around it.
    """

    def __init__(self, cache_size: int = 256, memory_mb: int | None = None, language_layer: bool = True):
        if _IMPORT_ERROR is not None:
            raise _IMPORT_ERROR
        self.cache_size = cache_size
        self.memory_mb = memory_mb
        # False only in tests of the process layer: the program then runs as plain Python with every builtin
        self.language_layer = language_layer
        self.freeze_before_run = False  # the worker collects the program's garbage after each call
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

        user_types = self._user_types
        proxies: dict[str, SandboxModule] = {}
        for name, listed in FACADES.items():
            module = importlib.import_module(name)
            attrs = {attr: getattr(module, attr) for attr in listed.split() if hasattr(module, attr)}
            assert not any(isinstance(v, types.ModuleType) for v in attrs.values()), name
            if name == "re":  # plain ints: RegexFlag caches every pseudo-member it is asked for
                attrs.update({k: int(v) for k, v in attrs.items() if isinstance(v, module.RegexFlag)})
            if name == "copy":
                attrs.update(copy=_plain_copy(user_types, deep=False), deepcopy=_plain_copy(user_types, deep=True))
            if name == "functools":

                def total_ordering(cls):
                    """functools.total_ordering, for classes defined in the sandbox only (it sets attributes)."""
                    if cls not in user_types:
                        raise TypeError("total_ordering() is only allowed on classes defined in the sandbox")
                    return functools.total_ordering(cls)

                attrs["total_ordering"] = total_ordering
            proxies[name] = SandboxModule(name, attrs)
        return proxies

    # -- guards ----------------------------------------------------------------------------------
    def _build_builtins(self) -> dict[str, Any]:
        user_types = self._user_types
        modules = self.modules
        allowed_list = ", ".join(sorted(modules))
        blocked_attrs = BLOCKED_ATTRS
        blocked_values = _BLOCKED_VALUE_TYPES
        special_attrs = _GUARDED_NAMES
        abc_meta = __import__("abc").ABCMeta
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
            if name in special_attrs:
                if name == "register" and isinstance(ob, abc_meta) and ob not in user_types:
                    raise AttributeError("register() of library classes is not allowed in the sandbox")
                if name != "register":
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

        def inplace_attr(ob, name, op, value):
            writer = guarded_write(ob)
            setattr(writer, name, _INPLACE_OPS[op](guarded_getattr(ob, name), value))

        def apply(func, *args, **kwargs):
            return func(*args, **kwargs)

        # Imports that C code of an allowed module makes through the current builtins' __import__
        # (datetime.strptime imports _strptime). A program cannot ask for them: `import _x` does not compile.
        implementation_modules = {name: __import__(name) for name in ("_strptime",)}

        def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):  # noqa: A002
            if type(name) is not str:
                raise ImportError("module name must be a string")
            if level:
                raise ImportError("relative imports are not allowed in the sandbox")
            module = modules.get(name)
            if module is None and name in implementation_modules and not fromlist:
                return implementation_modules[name]
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
                "_getiter_": iter,
                "_type_": type,
                "_plain_types_": PLAIN_TYPES,
                "_write_": guarded_write,
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

    def new_namespace(self) -> dict[str, Any]:
        """Fresh globals for a program: the guarded builtins (plain ones without the language layer)."""
        return {"__builtins__": self.builtins if self.language_layer else builtins, "__name__": "__main__"}

    def run(self, code: str, max_output_chars: int = 8192,
            namespace: dict[str, Any] | None = None) -> tuple[bool, str | None, str]:
        """Run `code` in fresh globals, or in a copy of `namespace` (a session's globals, from `new_namespace`)
        that replaces it only if the program succeeds: a failed program leaves the session's names bound as
        they were (objects it mutated in place stay mutated). The classes a session's programs define stay
        writable for its later programs, as they would within one program."""
        out = self._out = _Output(max_output_chars)
        self._collector = _PrintCollector(out, self._guarded_getattr)
        if self.language_layer:
            compiled = self.compile(code)
        else:
            try:
                compiled = compile(code, SANDBOX_FILENAME, "exec")
            except (SyntaxError, ValueError) as exc:
                compiled = f"SyntaxError: {exc}"
        if isinstance(compiled, str):
            return False, compiled, ""
        scope = self.new_namespace() if namespace is None else dict(namespace)
        if self.freeze_before_run:
            gc.freeze()  # what exists now is not the program's: the collection after it skips all of it
        error = None
        stdout = sys.stdout
        try:
            if not self.language_layer:
                sys.stdout = out  # type: ignore[assignment]
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
            sys.stdout = stdout
            if namespace is not None and error is None:
                namespace.clear()
                namespace.update(scope)
            scope.clear()
            if namespace is None:
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


# -- processes ------------------------------------------------------------------------------------------
# A zygote (`python -I -S _sandbox_worker.py zygote CONFIG FD`) imports and warms everything once, then
# forks one worker per episode on request, so a fresh interpreter state costs a fork, not a start-up.
#
# Host <-> zygote, a SOCK_SEQPACKET Unix socket (message boundaries and SCM_RIGHTS):
#   host -> zygote: b"S" with fds [request pipe read end, reply pipe write end]: fork a worker on them
#                   b"W" + pid (">I"): how did that worker end (answered within about a second)
#   zygote -> host: b"Z" + JSON once ready (layers it applied), or b"F" + text when it could not start;
#                   b"P" + pid with fds [pidfd] per "S"; b"D" + JSON {"status": int | None} per "W".
# Host <-> worker, two pipes; every message is a 4-byte big-endian length and that many bytes:
#   worker -> host: b"R" + JSON once ready (its layers), then one reply per program:
#                   b"O" + output, or b"E" + error line + b"\0" + output (UTF-8)
#   host -> worker: b"L" + JSON lease once (memory_mb, cpu_s, recursion_limit, language_layer; no reply),
#                   then b"C" + REQUEST_HEADER (timeout s, max output characters) + UTF-8 source (fresh
#                   globals), or b"S" + the same (the worker's one session namespace, made at its first "S";
#                   it lives as long as the worker, which serves one episode: the host kills it at reset).

_WARM_UP = (
    "import math, cmath, statistics, fractions, decimal, random, itertools, functools, collections\n"
    "import operator, heapq, bisect, copy, re, string, json, datetime\n"
    "print(statistics.mean([1, 2]), fractions.Fraction(1, 3), decimal.Decimal('1.1') + 1, random.random() < 2)\n"
    "print(re.sub(r'(a+)', lambda m: m.group(1).upper(), 'aab'), json.loads(json.dumps({'a': [1.5]})))\n"
    "print(datetime.datetime.strptime('2024-01-02', '%Y-%m-%d').isoformat(), string.Template('$x').substitute(x=1))\n"
    "print(copy.deepcopy([{1: (2,)}]), '{0:>4}|{x}'.format(1, x=2), collections.Counter('aab').most_common(1))\n"
    "class A:\n    def __init__(self):\n        self.v = [i * i for i in range(3)]\nprint(sorted(A().v)[-1])\n"
)


# Codecs a program may name in str.encode/bytes.decode: looked up (imported) in the zygote, because a
# worker may not be able to read the standard library any more (its uid cannot enter /root, say).
_CODECS = """ascii latin_1 utf_8 utf_8_sig utf_16 utf_16_le utf_16_be utf_32 utf_32_le utf_32_be utf_7 cp1252
    cp437 cp850 iso8859_15 idna punycode unicode_escape raw_unicode_escape hex_codec base64_codec rot_13
    quopri_codec uu_codec zlib_codec bz2_codec mac_roman koi8_r cp1251 gb2312 gbk big5 shift_jis euc_jp
    euc_kr""".split()


_FIRST_TOUCH = "import math\nd = {}\nfor i in range(200):\n    d[i % 7] = d.get(i % 7, 0) + math.sqrt(i)\nprint(len(d))"


def _send(fd: int, payload: bytes) -> None:
    data = memoryview(LENGTH.pack(len(payload)) + payload)
    while data:
        written = os.write(fd, data)
        data = data[written:]


def _read_exactly(fd: int, n: int) -> bytes:
    chunks, have = [], 0
    while have < n:
        more = os.read(fd, min(n - have, 1 << 20))
        if not more:
            raise EOFError
        chunks.append(more)
        have += len(more)
    return b"".join(chunks)


def _recv(fd: int) -> bytes:
    """One message; never reads past it (the host may send the lease and a program back to back)."""
    (n,) = LENGTH.unpack(_read_exactly(fd, 4))
    return _read_exactly(fd, n)


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


class _Plan:
    """What the zygote prepared once for every worker it forks."""

    def __init__(self, sandbox: Sandbox, read_paths: list[str], temp_root: str, seccomp: bytes | None,
                 uid_base: int | None):
        self.sandbox = sandbox
        self.uid_base = uid_base
        self.read_paths = read_paths
        self.temp_root = temp_root
        self.seccomp = seccomp
        self.zygote_pid = os.getpid()


def _harden_worker(plan: _Plan) -> dict[str, str | None]:
    """Apply the per-worker layers (after fork, before any program runs). Values: None = applied, else why not."""
    import resource
    import signal

    import _sandbox_os as osl

    layers: dict[str, str | None] = {}
    pid = os.getpid()
    temp_dir = os.path.join(plan.temp_root, str(pid))
    os.mkdir(temp_dir, 0o700)
    uid = osl.uid_for(pid, plan.uid_base)
    if uid is not None:
        os.chown(temp_dir, uid, uid)
    os.chdir(temp_dir)
    for limit, value in (
        (resource.RLIMIT_CORE, 0), (resource.RLIMIT_FSIZE, 1 << 20), (resource.RLIMIT_NOFILE, 32),
        (resource.RLIMIT_MSGQUEUE, 0), (resource.RLIMIT_MEMLOCK, 0),
    ):  # fmt: skip
        try:
            resource.setrlimit(limit, (value, value))
        except (ValueError, OSError):
            pass
    layers["uid"] = osl.drop_to_uid(uid) if uid is not None else "the host does not run as root: workers keep its uid"
    if osl.set_parent_death_signal(signal.SIGKILL) is None and os.getppid() != plan.zygote_pid:
        os._exit(0)  # the zygote died while this worker started
    try:
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
        layers["nproc"] = None if uid is not None else "RLIMIT_NPROC does not bind the host's own uid reliably"
    except (ValueError, OSError) as exc:
        layers["nproc"] = str(exc)
    layers["dumpable"] = osl.set_non_dumpable()
    layers["no_new_privs"] = osl.set_no_new_privs()
    reason, abi = osl.landlock(plan.read_paths, [temp_dir])
    layers["landlock"] = reason
    if reason is None and abi < 6:
        layers["landlock_scope"] = f"Landlock ABI {abi} < 6: no signal/abstract-socket scoping"
    layers["seccomp"] = osl.load_seccomp(plan.seccomp) if plan.seccomp else "no seccomp program for this machine"
    return layers


def _worker_main(plan: _Plan, request_fd: int, reply_fd: int) -> None:
    """A forked worker: harden, say ready, take the lease, then serve programs until EOF."""
    import random
    import resource

    os.setsid()
    os.dup2(request_fd, 0)
    os.dup2(reply_fd, 1)
    os.closerange(3, 1 << 16)  # the zygote's socket, pipe originals: nothing else is inherited
    baseline_kb = _vm_size_kb()
    layers = _harden_worker(plan)
    random.seed()  # the zygote's generator state is shared by every fork: draw a fresh one
    # Touch the pages a first program needs while the worker waits in the pool (copy-on-write faults
    # here, not in the episode's first call); trusted code, and the cache it fills is emptied.
    plan.sandbox.run(_FIRST_TOUCH)
    plan.sandbox._cache.clear()
    _send(1, b"R" + json.dumps({"pid": os.getpid(), "baseline_kb": baseline_kb, "layers": layers}).encode())
    try:
        lease = _recv(0)
    except (EOFError, OSError):
        return
    config = json.loads(lease[1:]) if lease[:1] == b"L" else {}
    sandbox = plan.sandbox
    sandbox.freeze_before_run = True
    memory_mb = int(config.get("memory_mb", 256))
    sandbox.memory_mb = memory_mb or None
    sandbox.language_layer = bool(config.get("language_layer", True))
    sys.setrecursionlimit(int(config.get("recursion_limit", 1000)))
    if memory_mb > 0 and baseline_kb:
        limit_bytes = baseline_kb * 1024 + memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    cpu_hard = max(1, int(config.get("cpu_s", 600)))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_hard, cpu_hard))
    _serve(sandbox, cpu_hard)


def _serve(sandbox: Sandbox, cpu_hard: int) -> None:
    import resource

    getrusage, RUSAGE_SELF = resource.getrusage, resource.RUSAGE_SELF
    setrlimit, RLIMIT_CPU = resource.setrlimit, resource.RLIMIT_CPU
    session: dict[str, Any] | None = None  # the episode's namespace, for "S" requests
    while True:
        try:
            request = _recv(0)
        except (EOFError, OSError):
            return
        try:
            kind = request[:1]
            if kind not in (b"C", b"S"):
                raise ValueError("unexpected request")
            if kind == b"S" and session is None:
                session = sandbox.new_namespace()
            timeout, max_out = REQUEST_HEADER.unpack_from(request, 1)
            code = request[1 + REQUEST_HEADER.size :].decode("utf-8", "surrogatepass")
            # Backstop if the host dies mid-call: the kernel stops us after timeout + 3 s of CPU.
            usage = getrusage(RUSAGE_SELF)
            soft = min(int(usage.ru_utime + usage.ru_stime + timeout) + 3, cpu_hard)
            setrlimit(RLIMIT_CPU, (soft, cpu_hard))
            gc.enable()
            try:
                ok, error, output = sandbox.run(code, max_out, session if kind == b"S" else None)
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
        _send(1, reply)


def _zygote_main(config: dict[str, Any], sock_fd: int) -> int:
    import shutil
    import signal
    import socket
    import tempfile
    import warnings

    import _sandbox_os as osl

    sock = socket.socket(fileno=sock_fd)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the host's business
    warnings.simplefilter("ignore")
    sys.dont_write_bytecode = True
    try:
        if _IMPORT_ERROR is not None:
            raise _IMPORT_ERROR
        use_shallow_copy_locations()
        sandbox = Sandbox(cache_size=int(config.get("cache_size", 256)))
        ok, error, _ = sandbox.run(_WARM_UP)
        if not ok:
            raise RuntimeError(f"warm-up failed: {error}")
        sandbox._cache.clear()
        import codecs

        for name in _CODECS:
            try:
                codecs.lookup(name)
            except LookupError:
                pass
        read_paths = sorted({p for p in (sys.base_prefix, sys.prefix, sys.exec_prefix, *config.get("path", ())) if p})
        layers = {"netns": osl.unshare_network()}
        seccomp, layers["seccomp_program"] = osl.seccomp_filter()
        temp_root = tempfile.mkdtemp(prefix="agentenv-sandbox-")
        os.chmod(temp_root, 0o711)  # workers (other uids) reach only their own 0700 directory inside
    except BaseException as exc:  # noqa: BLE001 - tell the host why we could not start
        sock.send(b"F" + _encode(_describe(exc)))
        return 2
    plan = _Plan(sandbox, read_paths, temp_root, seccomp, osl.worker_uid_base())
    gc.collect()
    gc.freeze()  # keep the warmed heap shared between forks (no refcount-free GC writes to it)
    sock.send(b"Z" + json.dumps({"pid": os.getpid(), "layers": layers}).encode())
    children: dict[int, int] = {}  # pid -> wait status, for the last 1024 workers reaped
    live: set[int] = set()

    def reap() -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            live.discard(pid)
            children[pid] = status
            shutil.rmtree(os.path.join(temp_root, str(pid)), ignore_errors=True)
            if len(children) > 1024:
                children.pop(next(iter(children)))

    try:
        while True:
            try:
                message, fds, _flags, _addr = socket.recv_fds(sock, 1024, 2)
            except OSError:
                break
            if not message:
                break  # the host is gone
            kind = message[:1]
            if kind == b"S" and len(fds) == 2:
                pid = os.fork()
                if pid == 0:
                    try:
                        sock.close()
                        _worker_main(plan, fds[0], fds[1])
                    finally:
                        os._exit(0)
                for fd in fds:
                    os.close(fd)
                live.add(pid)
                pidfd = os.pidfd_open(pid)
                try:
                    socket.send_fds(sock, [b"P" + struct.pack(">I", pid)], [pidfd])
                finally:
                    os.close(pidfd)
                reap()  # after the reply: the host is not kept waiting for clean-up
            elif kind == b"W" and len(message) == 5:
                (pid,) = struct.unpack(">I", message[1:])
                for _ in range(100):
                    reap()
                    if pid not in live:
                        break
                    time.sleep(0.01)
                sock.send(b"D" + json.dumps({"status": children.get(pid)}).encode())
            else:
                for fd in fds:
                    os.close(fd)
    finally:
        for pid in list(live):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for pid in list(live):
            try:
                os.waitpid(pid, 0)
            except OSError:
                pass
        shutil.rmtree(temp_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "zygote":
        sys.exit(_zygote_main(json.loads(sys.argv[2]), int(sys.argv[3])))
    sys.exit("usage: _sandbox_worker.py zygote CONFIG_JSON SOCKET_FD (started by agentenv's PythonTool)")
