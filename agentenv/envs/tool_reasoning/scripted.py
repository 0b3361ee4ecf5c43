"""ScriptedPolicy: a deterministic agent that solves ToolReasoning tasks by calling tools.

It reads the question the way a careful agent would (each task family has a fixed phrasing), writes
one tool call that computes the answer (calculator or python), runs it (`<execute/>` when the system
prompt says calls are queued), and answers with what the tool printed. It never sees the label: a
wrong tool result gives a wrong answer. Used for tests, the CLI and stress runs.
"""

from __future__ import annotations

import json
import random
import re
import zlib
from typing import Callable, Sequence

from agentenv.envs.tool_reasoning.tasks import UNITS
from agentenv.types import Generation, Messages

__all__ = ["ScriptedPolicy", "solve_tool_reasoning"]

Call = tuple[str, dict[str, str]]

_UNIT_FACTOR = {unit: factor for table in UNITS.values() for unit, factor in table.items()}


def _factor(unit: str) -> str:
    factor = _UNIT_FACTOR.get(unit) or _UNIT_FACTOR.get(unit + "s")
    if factor is None:
        raise KeyError(unit)
    return f"({factor.numerator}/{factor.denominator})"


def _calc(expression: str) -> Call:
    return "calculator", {"expression": expression}


def _python(code: str) -> Call:
    return "python", {"code": code}


_OPS = {"add": "+", "subtract": "-", "multiply by": "*", "divide by": "/"}


def _chain(m: re.Match) -> Call:
    lines = ["from fractions import Fraction", f"x = Fraction('{m['start']}')"]
    for phrase in m["ops"].split("; "):
        verb, _, amount = phrase.rpartition(" ")
        lines.append(f"x = x {_OPS[verb]} {int(amount)}")
    lines.append("print(x)")
    return _python("\n".join(lines))


def _shopping(m: re.Match) -> Call:
    terms = [f"{q} * {p}" for q, p in re.findall(r"(\d+) \w+ at \$([\d.]+) each", m["purchases"])]
    total = " + ".join(terms)
    if m["pct"]:
        total = f"({total}) * (100 - {m['pct']}) / 100"
    return _calc(f"{m['bill']} - ({total})")


def _word(m: re.Match) -> Call:
    return _python(
        "from collections import Counter\nimport math\n"
        f"word = '{m['word']}'\nn = math.factorial(len(word))\n"
        "for c in Counter(word).values():\n    n //= math.factorial(c)\nprint(n)"
    )


_SOLVERS: list[tuple[re.Pattern, Callable[[re.Match], Call]]] = [
    (re.compile(r"^Start with (?P<start>[-\d./]+); (?P<ops>.+)\. What is the result\?$"), _chain),
    (
        re.compile(r"^Convert (?P<amount>[\d./]+) (?P<src>\w+) to (?P<dst>\w+)\.$"),
        lambda m: _calc(f"{m['amount']} * {_factor(m['src'])} / {_factor(m['dst'])}"),
    ),
    (
        re.compile(r"^A vehicle covers (?P<d>\d+) (?P<du>\w+) in (?P<t>\d+) (?P<tu>\w+)\. What is its average speed in (?P<dt>\w+) per (?P<tt>\w+)\?$"),
        lambda m: _calc(f"({m['d']} * {_factor(m['du'])} / {_factor(m['dt'])}) / ({m['t']} * {_factor(m['tu'])} / {_factor(m['tt'])})"),
    ),
    (re.compile(r"^In how many ways can (?P<k>\d+) people be chosen from a group of (?P<n>\d+)\?$"), lambda m: _calc(f"comb({m['n']}, {m['k']})")),
    (re.compile(r"^In how many ways can (?P<k>\d+) of (?P<n>\d+) different books be arranged in a row\?$"), lambda m: _calc(f"perm({m['n']}, {m['k']})")),
    (re.compile(r"^How many codes of length (?P<k>\d+) can be made from (?P<s>\d+) different symbols"), lambda m: _calc(f"{m['s']}^{m['k']}")),
    (re.compile(r"^How many distinct arrangements are there of the letters in (?P<word>[A-Z]+)\?$"), _word),
    (
        re.compile(r"^(?P<name>\w+) buys (?P<purchases>.+?)\.(?: A (?P<pct>\d+)% discount applies to the whole purchase\.)? (?P=name) pays with a \$(?P<bill>\d+) bill\."),
        _shopping,
    ),
    (
        re.compile(r"^What is the sum of all positive integers below (?P<n>\d+) that are multiples of (?P<a>\d+) or (?P<b>\d+)\?$"),
        lambda m: _python(f"print(sum(i for i in range(1, {m['n']}) if i % {m['a']} == 0 or i % {m['b']} == 0))"),
    ),
    (
        re.compile(r"^How many prime numbers are there below (?P<n>\d+)\?$"),
        lambda m: _python(
            f"n = {m['n']}\nsieve = [True] * n\nsieve[0:2] = [False, False]\n"
            "for i in range(2, int(n ** 0.5) + 1):\n    if sieve[i]:\n        for j in range(i * i, n, i):\n            sieve[j] = False\n"
            "print(sum(sieve))"
        ),
    ),
    (
        re.compile(r"^What is the remainder when (?P<a>\d+) to the power (?P<b>\d+) is divided by (?P<m>\d+)\?$"),
        lambda m: _python(f"print(pow({m['a']}, {m['b']}, {m['m']}))"),
    ),
    (re.compile(r"^What is the greatest common divisor of (?P<a>\d+) and (?P<b>\d+)\?$"), lambda m: _calc(f"gcd({m['a']}, {m['b']})")),
    (
        re.compile(r"^What is term number (?P<n>\d+) of the Fibonacci sequence"),
        lambda m: _python(f"a, b = 1, 1\nfor _ in range({m['n']} - 1):\n    a, b = b, a + b\nprint(a)"),
    ),
    (
        re.compile(r"^What is the sum of the first (?P<n>\d+) terms of the arithmetic sequence (?P<a>-?\d+), (?P<b>-?\d+),"),
        lambda m: _python(f"a, d, n = {m['a']}, {m['b']} - ({m['a']}), {m['n']}\nprint(sum(a + i * d for i in range(n)))"),
    ),
]


def solve_tool_reasoning(question: str) -> Call | None:
    """The tool call that computes the answer to a generated ToolReasoning question, or None."""
    for pattern, build in _SOLVERS:
        match = pattern.search(question.strip())
        if match:
            try:
                return build(match)
            except (KeyError, ValueError):
                return None
    return None


_FORMULAS = {"comb": "comb({}, {})", "perm": "perm({}, {})", "power": "{}^{}"}
_COUNTING_CALL = re.compile(r"^(?:(?P<name>comb|perm)\((?P<a>\d+), (?P<b>\d+)\)|(?P<base>\d+)\^(?P<exp>\d+))$")


def _other_formula(call: Call, draw: random.Random | None = None, shift: int = 0) -> Call:
    """A counting call with another formula on the same numbers: one of the two others drawn by `draw`, or the
    one `shift` places on in (comb, perm, power); any other call unchanged."""
    match = _COUNTING_CALL.match(call[1].get("expression", "")) if call[0] == "calculator" else None
    if match is None:
        return call
    name = match["name"] or "power"
    numbers = (match["a"], match["b"]) if match["name"] else (match["base"], match["exp"])
    names = sorted(_FORMULAS)
    other = draw.choice([n for n in names if n != name]) if draw is not None else names[(names.index(name) + shift) % 3]
    return _calc(_FORMULAS[other].format(*numbers))


def _result_value(content: str) -> str:
    """The answer in a tool's output: its last line, without the calculator's `(= decimal)` gloss."""
    lines = [line for line in content.strip().splitlines() if line.strip()]
    return lines[-1].split(" (= ")[0].strip() if lines else ""


class ScriptedPolicy:
    """Deterministic tool-using agent for ToolReasoning-v0 (and a fallback that answers 'unknown').

    `wrong_formula` > 0 makes an imperfect demonstrator: for that fraction of counting questions (chosen by a
    hash of the question and `seed`, so an episode's choice never depends on call order) it calls one of the
    two other formulas (comb / perm / power) on the right numbers. At 2/3 it knows the three formulas and
    the call format but not which question needs which: a warm start on its demonstrations leaves that
    decision to RL.
    """

    # what `agentenv train` demonstrates with unless `sft_teacher` says otherwise (benchmarks/default_train.md)
    WARM_START_OPTIONS = {"every_formula": True}

    def __init__(self, wrong_formula: float = 0.0, seed: int = 0, every_formula: bool = False, formula_shift: int = 0):
        if not 0.0 <= wrong_formula <= 1.0:
            raise ValueError(f"wrong_formula must be in [0, 1], got {wrong_formula}")
        self.wrong_formula, self.seed = wrong_formula, seed
        self.every_formula, self.formula_shift = every_formula, formula_shift % 3

    def variants(self) -> list["ScriptedPolicy"]:
        """The demonstrators a warm start records each task with: itself, or with `every_formula` three, one per
        counting formula (the right one and the two others), so that every question is shown with every formula
        and the best fit leaves the choice uniform — the decision RL is left to make."""
        if not self.every_formula:
            return [self]
        return [ScriptedPolicy(seed=self.seed, formula_shift=shift) for shift in range(3)]

    def generate(self, contexts: Sequence[Messages]) -> list[Generation]:
        return [Generation(self.act(messages)) for messages in contexts]

    def act(self, messages: Messages) -> str:
        question = next((m["content"] for m in messages if m["role"] == "user"), "")
        delayed = any(m["role"] == "system" and "<execute/>" in m["content"] for m in messages)
        last = messages[-1]
        if last["role"] == "tool":
            if last["content"].startswith("queued #"):
                return "Running the queued call. <execute/>"
            if not last["content"].startswith("Error:"):
                return f"<answer>{_result_value(last['content'])}</answer>"
        if sum(m["role"] == "assistant" for m in messages) >= 2:
            return "<answer>unknown</answer>"  # a tool failed twice: give up rather than loop
        call = solve_tool_reasoning(question)
        if call is None:
            return "<answer>unknown</answer>"
        if self.formula_shift:
            call = _other_formula(call, shift=self.formula_shift)
        elif self.wrong_formula:
            draw = random.Random(zlib.crc32(question.encode()) ^ self.seed)
            if draw.random() < self.wrong_formula:
                call = _other_formula(call, draw)
        name, arguments = call
        text = f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"
        return text if not delayed else f"I will queue the computation.\n{text}"
