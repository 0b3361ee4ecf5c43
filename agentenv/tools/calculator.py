"""A calculator tool: exact arithmetic on an expression, evaluated over a whitelisted AST.

Integers and fractions stay exact (`fractions.Fraction`), so `1/3 + 1/6` is `1/2`; a float appears only
when a float literal or a transcendental function does. The calculator runs in the host process, where
nothing can interrupt one long C-level big-integer operation (a signal waits for it; a thread cannot be
killed), so every operation is refused *before* it runs when its result could exceed `MAX_INT_BITS`:
each single operation then takes well under a millisecond, and an expression of at most
`MAX_EXPRESSION_CHARS` characters finishes in bounded time on any thread.
"""

from __future__ import annotations

import ast
import math
from fractions import Fraction
from typing import Any, Callable

from agentenv.tools.base import Tool

__all__ = ["calculator", "evaluate_expression"]

MAX_EXPONENT = 4096
MAX_FACTORIAL = 2000
MAX_EXPRESSION_CHARS = 2000
MAX_INT_BITS = 65_536


def _bits(x: Any) -> int:
    """Size of an exact value in bits (numerator plus denominator); floats count as one machine word."""
    if isinstance(x, Fraction):
        return x.numerator.bit_length() + x.denominator.bit_length()
    if isinstance(x, int):
        return x.bit_length()
    return 64


def _refuse_if_larger(bits: int) -> None:
    if bits > MAX_INT_BITS:
        raise ValueError(f"result would be too large (about {bits} bits > {MAX_INT_BITS})")


def _bounded_pow(base: Any, exponent: Any) -> Any:
    if isinstance(exponent, Fraction) and exponent.denominator == 1:
        exponent = exponent.numerator
    if isinstance(exponent, int):
        if abs(exponent) > MAX_EXPONENT:
            raise ValueError(f"exponent {exponent} is larger than {MAX_EXPONENT}")
        if isinstance(base, float):
            return base**exponent
        _refuse_if_larger(_bits(base) * abs(exponent))
        return Fraction(base) ** exponent
    return float(base) ** float(exponent)


def _comb_or_perm(fn: Callable[[int, int], int]) -> Callable[[Any, Any], int]:
    def bounded(n: Any, k: Any) -> int:
        n, k = int(n), int(k)
        if n > 10 * MAX_FACTORIAL:
            raise ValueError("argument too large")
        if 0 <= k <= n:  # perm(n, k) <= n^k; comb(n, k) <= min(2^n, n^min(k, n-k))
            width = max(n, 1).bit_length()
            bits = min(n, min(k, n - k) * width) if fn is math.comb else k * width
            _refuse_if_larger(bits)
        return fn(n, k)

    return bounded


def _round(x: Any, ndigits: Any = 0) -> Any:
    ndigits = int(ndigits)
    if abs(ndigits) > 100:
        raise ValueError("round() keeps at most 100 digits")
    return round(Fraction(x), ndigits) if ndigits else round(x)


def _factorial(n: Any) -> int:
    n = int(n)
    if not 0 <= n <= MAX_FACTORIAL:
        raise ValueError(f"factorial needs 0 <= n <= {MAX_FACTORIAL}")
    return math.factorial(n)


def _as_float(fn: Callable[[float], float]) -> Callable[[Any], float]:
    return lambda x: fn(float(x))


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": _as_float(math.sqrt),
    "exp": _as_float(math.exp),
    "log": lambda x, base=None: math.log(float(x)) if base is None else math.log(float(x), float(base)),
    "log10": _as_float(math.log10),
    "log2": _as_float(math.log2),
    "sin": _as_float(math.sin),
    "cos": _as_float(math.cos),
    "tan": _as_float(math.tan),
    "abs": abs,
    "round": _round,
    "floor": math.floor,
    "ceil": math.ceil,
    "min": min,
    "max": max,
    "factorial": _factorial,
    "comb": _comb_or_perm(math.comb),
    "perm": _comb_or_perm(math.perm),
    "gcd": lambda a, b: math.gcd(int(a), int(b)),
}
_CONSTANTS = {"pi": math.pi, "e": math.e}


def _multiply(a: Any, b: Any) -> Any:
    _refuse_if_larger(_bits(a) + _bits(b))
    return a * b


def _divide(a: Any, b: Any) -> Any:
    if isinstance(a, float) or isinstance(b, float):
        return a / b
    _refuse_if_larger(_bits(a) + _bits(b))
    return Fraction(a) / Fraction(b)


_BINARY = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: _multiply,
    ast.Div: _divide,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
    ast.Pow: _bounded_pow,
}


def _eval(node: ast.AST) -> Any:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return Fraction(node.value) if isinstance(node.value, int) else node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        value = _BINARY[type(node.op)](_eval(node.left), _eval(node.right))
        if isinstance(value, Fraction) and max(value.numerator.bit_length(), value.denominator.bit_length()) > MAX_INT_BITS:
            raise ValueError("intermediate result is too large")
        return value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        value = _eval(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS and not node.keywords:
        return _FUNCTIONS[node.func.id](*[_eval(arg) for arg in node.args])
    raise ValueError(f"unsupported element '{ast.dump(node)[:60]}'")


def _format(value: Any) -> str:
    if isinstance(value, Fraction):
        return str(value.numerator) if value.denominator == 1 else f"{value} (= {float(value):.12g})"
    if isinstance(value, float):
        return f"{value:.12g}"
    return str(value)


def evaluate_expression(expression: str) -> str:
    """Evaluate `expression` exactly and return it formatted; raises ValueError on anything unsupported."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.replace("^", "**").strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"cannot parse expression: {exc.msg}") from None
    try:
        return _format(_eval(tree))
    except ZeroDivisionError:
        raise ValueError("division by zero") from None
    except (OverflowError, TypeError) as exc:
        raise ValueError(str(exc)) from None


def _calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly (+ - * / // % ^, parentheses, sqrt, log, exp, sin, cos,
    factorial, comb, perm, gcd, min, max, abs, round, pi, e).

    Args:
        expression: the expression, e.g. "(17 + 5) * 3 / 4".
    """
    return evaluate_expression(expression)


calculator = Tool.from_function(_calculator, name="calculator", timeout_s=2.0)
