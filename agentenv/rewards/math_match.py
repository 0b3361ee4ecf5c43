"""Does a predicted final answer equal the reference? Exact numbers first, then symbolic equality.

Numbers are compared exactly as fractions when both sides are exact (`3/4`, `0.75`, `\\frac{3}{4}` are
equal), else to a relative tolerance of 1e-6. Expressions (`2x+1`, `\\sqrt{2}/2`) are compared with
sympy after a whitelist check: only known function names and single-letter symbols reach sympy's parser
(which `eval`s), exponents are bounded, and the comparison runs under a timeout, so an agent's answer
can neither run code nor hang the reward. sympy is imported and warmed (its parser and `simplify` run
once) before the first clock starts, so a correct answer never loses to the import time on a busy
machine; `match_answer` says when the timeout did decide (`timed_out`), and envs report it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

from agentenv.tools.base import ToolTimeout, call_with_timeout

__all__ = ["answers_match", "match_answer", "AnswerMatch", "parse_number", "normalize_answer"]

REL_TOL = 1e-6
MAX_SYMBOLIC_CHARS = 200
SYMBOLIC_TIMEOUT_S = 2.0

_LATEX_FRAC = re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")
_LATEX_SQRT = re.compile(r"\\sqrt\{([^{}]*)\}")
_LATEX_TEXT = re.compile(r"\\(?:text|mathrm|textbf|mbox)\{([^{}]*)\}")
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_NUMBER_WITH_UNIT = re.compile(
    r"^(?P<num>[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)(?:/(?P<den>\d+))?\s*(?P<unit>[A-Za-z%°][A-Za-z%°/ .^2-3]*)?$"
)
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?:\D|$))")
_IDENTIFIER = re.compile(r"[A-Za-z_]+")
_BIG_EXPONENT = re.compile(r"\*\*\s*\(?\s*[-+]?\d{4,}|\*\*[^*]*\*\*")
_ALLOWED_CHARS = re.compile(r"^[0-9A-Za-z_+\-*/().,\s]*$")
_ALLOWED_NAMES = frozenset(
    {"sqrt", "log", "ln", "exp", "sin", "cos", "tan", "pi", "E", "I", "oo", "Rational", "Integer", "Symbol", "Float"}
)


def normalize_answer(text: str) -> str:
    """Strip the wrapping an answer often carries: `$`, `\\boxed{}`, `\\text{}`, spacing macros, a final period."""
    s = text.strip()
    if s.startswith("\\boxed{") and s.endswith("}"):
        s = s[len("\\boxed{") : -1]
    s = s.replace("$", "").replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\left", "").replace("\\right", "")
    s = _LATEX_TEXT.sub(r"\1", s)
    s = _THOUSANDS.sub("", s)
    return s.strip().rstrip(".").strip()


def parse_number(text: str) -> Fraction | float | None:
    """The number `text` states (`42`, `-3.5`, `3/4`, `\\frac{3}{4}`, `1,234`, `12 meters`, `50%`), or None."""
    s = normalize_answer(text)
    frac = _LATEX_FRAC.fullmatch(s)
    if frac:
        num, den = parse_number(frac.group(1)), parse_number(frac.group(2))
        if num is None or den is None or den == 0:
            return None
        return Fraction(num) / Fraction(den) if not isinstance(num, float) and not isinstance(den, float) else float(num) / float(den)
    match = _NUMBER_WITH_UNIT.match(s)
    if not match:
        return None
    raw = match.group("num")
    try:
        value: Fraction | float = Fraction(raw)
    except (ValueError, ZeroDivisionError):
        return None
    if match.group("den"):
        den = int(match.group("den"))
        if den == 0:
            return None
        value = Fraction(value) / den
    if abs(value) > 10**300:
        return float("inf")
    return value


def _numbers_equal(a: Fraction | float, b: Fraction | float) -> bool:
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        if a == b:
            return True
    try:
        fa, fb = float(a), float(b)
    except OverflowError:
        return False
    return math.isclose(fa, fb, rel_tol=REL_TOL, abs_tol=1e-9)


def _to_sympy_text(s: str) -> str | None:
    s = _LATEX_SQRT.sub(r"sqrt(\1)", s)  # first: a \frac may hold a \sqrt{...}
    s = _LATEX_FRAC.sub(r"((\1)/(\2))", s)
    s = s.replace("\\cdot", "*").replace("\\times", "*").replace("\\pi", "pi").replace("^", "**")
    s = s.replace("{", "(").replace("}", ")").replace("\\", "")
    if len(s) > MAX_SYMBOLIC_CHARS or not _ALLOWED_CHARS.match(s) or _BIG_EXPONENT.search(s):
        return None
    for name in _IDENTIFIER.findall(s):
        if name not in _ALLOWED_NAMES and not (len(name) == 1 and name.isalpha()):
            return None
    return s.replace("ln", "log")


@lru_cache(maxsize=1)
def _sympy() -> tuple:
    """sympy's `simplify`, `parse_expr` and transformations, imported and run once (outside any timeout)."""
    from sympy import simplify
    from sympy.parsing.sympy_parser import (
        implicit_multiplication_application,
        parse_expr,
        standard_transformations,
    )

    transformations = standard_transformations + (implicit_multiplication_application,)
    simplify(parse_expr("(x-1)*(x+1)", transformations=transformations) - parse_expr("x**2 - 1", transformations=transformations))
    return simplify, parse_expr, transformations


def _symbolic_equal(a: str, b: str) -> bool:
    simplify, parse_expr, transformations = _sympy()
    left = parse_expr(a, transformations=transformations, evaluate=True)
    right = parse_expr(b, transformations=transformations, evaluate=True)
    return bool(simplify(left - right) == 0)


@dataclass(frozen=True)
class AnswerMatch:
    """Whether two answers match; `timed_out` when the symbolic check ran out of time (counted as no match)."""

    equal: bool
    timed_out: bool = False


def match_answer(predicted: str, reference: str) -> AnswerMatch:
    """Compare `predicted` with `reference` numerically, textually, then symbolically (see the module doc)."""
    if not isinstance(predicted, str) or not isinstance(reference, str):
        return AnswerMatch(False)
    p_num, r_num = parse_number(predicted), parse_number(reference)
    if r_num is not None:
        return AnswerMatch(p_num is not None and _numbers_equal(p_num, r_num))
    p_norm, r_norm = normalize_answer(predicted), normalize_answer(reference)
    if p_norm.casefold() == r_norm.casefold():
        return AnswerMatch(True)
    p_sym, r_sym = _to_sympy_text(p_norm), _to_sympy_text(r_norm)
    if p_sym is None or r_sym is None:
        return AnswerMatch(False)
    _sympy()  # the import and first use are not the answer's cost: outside the clock
    try:
        return AnswerMatch(bool(call_with_timeout(_symbolic_equal, {"a": p_sym, "b": r_sym}, SYMBOLIC_TIMEOUT_S)))
    except ToolTimeout:
        return AnswerMatch(False, timed_out=True)
    except Exception:  # sympy rejects many strings with assorted exception types; none is a match
        return AnswerMatch(False)


def answers_match(predicted: str, reference: str) -> bool:
    """True when `predicted` states the same answer as `reference` (numerically, symbolically or textually)."""
    return match_answer(predicted, reference).equal
