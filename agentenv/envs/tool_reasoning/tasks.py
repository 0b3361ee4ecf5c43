"""Seeded generators of multi-step math and logic word problems, and a loader for user JSONL files.

Every generator takes a numpy `Generator` and a difficulty (1 easy … 3 hard) and returns a `Task` whose
answer is computed exactly (`fractions.Fraction`), so labels are right by construction. Difficulty
raises the number of steps and the size of the numbers, which is where a tool starts to pay.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["Task", "GENERATORS", "generate_task", "load_jsonl_tasks", "format_exact"]


@dataclass(frozen=True)
class Task:
    question: str
    answer: str
    kind: str
    difficulty: int


def format_exact(value: Fraction | int) -> str:
    """An exact value as text: an integer, a terminating decimal (≤ 10 places) or `p/q`."""
    value = Fraction(value)
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    for p in (2, 5):
        while den % p == 0:
            den //= p
    if den == 1:
        for places in range(1, 11):
            scaled = value * 10**places
            if scaled.denominator == 1:
                sign = "-" if scaled < 0 else ""
                digits = str(abs(scaled.numerator)).rjust(places + 1, "0")
                return f"{sign}{digits[:-places]}.{digits[-places:]}"
    return f"{value.numerator}/{value.denominator}"


def _int(rng: np.random.Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high]."""
    return int(rng.integers(low, high + 1))


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def arithmetic_chain(rng: np.random.Generator, difficulty: int) -> Task:
    steps = {1: 2, 2: 4, 3: 6}[difficulty]
    scale = 10 ** (difficulty + 1)
    start = value = Fraction(_int(rng, 2, scale))
    phrases = []
    for _ in range(steps):
        op = _pick(rng, ("add", "subtract", "multiply", "divide"))
        if op == "divide":
            divisors = [d for d in range(2, 13) if value.denominator == 1 and value.numerator % d == 0]
            op = "divide" if divisors else "multiply"
        if op == "add":
            x = _int(rng, 1, scale)
            value += x
            phrases.append(f"add {x}")
        elif op == "subtract":
            x = _int(rng, 1, scale)
            value -= x
            phrases.append(f"subtract {x}")
        elif op == "multiply":
            x = _int(rng, 2, 9 + 3 * difficulty)
            value *= x
            phrases.append(f"multiply by {x}")
        else:
            x = _pick(rng, divisors)
            value /= x
            phrases.append(f"divide by {x}")
    return Task(
        f"Start with {format_exact(start)}; {'; '.join(phrases)}. What is the result?",
        format_exact(value),
        "arithmetic_chain",
        difficulty,
    )


UNITS: dict[str, dict[str, Fraction]] = {
    "length": {
        "millimeters": Fraction(1, 1000),
        "centimeters": Fraction(1, 100),
        "meters": Fraction(1),
        "kilometers": Fraction(1000),
        "inches": Fraction(127, 5000),
        "feet": Fraction(381, 1250),
        "yards": Fraction(1143, 1250),
        "miles": Fraction(201168, 125),
    },
    "mass": {
        "milligrams": Fraction(1, 1000),
        "grams": Fraction(1),
        "kilograms": Fraction(1000),
        "pounds": Fraction(45359237, 100000),
        "ounces": Fraction(45359237, 1600000),
    },
    "time": {
        "seconds": Fraction(1),
        "minutes": Fraction(60),
        "hours": Fraction(3600),
        "days": Fraction(86400),
        "weeks": Fraction(604800),
    },
}
METRIC = {"millimeters", "centimeters", "meters", "kilometers", "milligrams", "grams", "kilograms"} | set(UNITS["time"])


def unit_conversion(rng: np.random.Generator, difficulty: int) -> Task:
    if difficulty == 3:
        length = list(UNITS["length"])
        times = ["seconds", "minutes", "hours"]
        dist_unit, dist_target = _pick(rng, length), _pick(rng, length)
        time_unit, time_target = _pick(rng, times), _pick(rng, times)
        distance, duration = _int(rng, 2, 500), _int(rng, 2, 120)
        speed = Fraction(distance) * UNITS["length"][dist_unit] / UNITS["length"][dist_target]
        speed /= Fraction(duration) * UNITS["time"][time_unit] / UNITS["time"][time_target]
        question = (
            f"A vehicle covers {distance} {dist_unit} in {duration} {time_unit}. "
            f"What is its average speed in {dist_target} per {time_target.rstrip('s')}?"
        )
        return Task(question, format_exact(speed), "unit_conversion", difficulty)
    category = _pick(rng, sorted(UNITS))
    names = [u for u in UNITS[category] if difficulty == 2 or u in METRIC]
    source = _pick(rng, names)
    target = _pick(rng, [u for u in names if u != source])
    amount = Fraction(_int(rng, 1, 10 ** (difficulty + 1)), _pick(rng, (1, 2, 4, 10)))
    converted = amount * UNITS[category][source] / UNITS[category][target]
    return Task(f"Convert {format_exact(amount)} {source} to {target}.", format_exact(converted), "unit_conversion", difficulty)


WORDS = ("BANANA", "LETTER", "MISSISSIPPI", "STATISTICS", "COMMITTEE", "BOOKKEEPER", "APPLE", "PEPPER", "ALGEBRA",
         "CALCULUS", "TOMORROW", "BALLOON", "ASSESSMENT", "PARALLEL", "CHEESE", "REFERENCE")


def _combinatorial(rng: np.random.Generator, difficulty: int, forms: tuple[str, ...], kind: str) -> Task:
    n = _int(rng, 4 + 3 * difficulty, 8 + 8 * difficulty)
    k = _int(rng, 2, min(n - 1, 2 + 2 * difficulty))
    form = _pick(rng, forms)
    if form == "choose":
        return Task(f"In how many ways can {k} people be chosen from a group of {n}?", str(math.comb(n, k)), kind, difficulty)
    if form == "arrange":
        return Task(f"In how many ways can {k} of {n} different books be arranged in a row?", str(math.perm(n, k)), kind, difficulty)
    if form == "codes":
        symbols = _int(rng, 2, 4 + 4 * difficulty)
        return Task(
            f"How many codes of length {k} can be made from {symbols} different symbols if symbols may repeat?",
            str(symbols**k),
            kind,
            difficulty,
        )
    word = _pick(rng, WORDS)
    count = math.factorial(len(word))
    for repeats in Counter(word).values():
        count //= math.factorial(repeats)
    return Task(f"How many distinct arrangements are there of the letters in {word}?", str(count), kind, difficulty)


def combinatorics(rng: np.random.Generator, difficulty: int) -> Task:
    return _combinatorial(rng, difficulty, ("choose", "arrange", "codes", "word"), "combinatorics")


def counting(rng: np.random.Generator, difficulty: int) -> Task:
    """The one-formula subset of combinatorics (choose, arrange, codes): the embedded training default."""
    return _combinatorial(rng, difficulty, ("choose", "arrange", "codes"), "counting")


NAMES = ("Ana", "Ben", "Chloe", "Dev", "Emil", "Fatima", "Goran", "Hana", "Ivo", "Jun", "Kemal", "Lena")
ITEMS = ("pencils", "notebooks", "apples", "tickets", "candles", "stamps", "mugs", "batteries")


def shopping(rng: np.random.Generator, difficulty: int) -> Task:
    name = _pick(rng, NAMES)
    kinds = 1 if difficulty == 1 else 2
    items = [ITEMS[i] for i in rng.choice(len(ITEMS), size=kinds, replace=False)]
    cents = difficulty >= 2
    purchases = []
    total = Fraction(0)
    for item in items:
        quantity = _int(rng, 2, 6 * difficulty + 3)
        price = Fraction(_int(rng, 50, 2000), 100) if cents else Fraction(_int(rng, 1, 20))
        total += quantity * price
        purchases.append(f"{quantity} {item} at ${format_exact(price)} each")
    discount = ""
    if difficulty == 3:
        pct = _pick(rng, (5, 10, 15, 20, 25))
        total *= Fraction(100 - pct, 100)
        discount = f" A {pct}% discount applies to the whole purchase."
    bill = next(b for b in (5, 10, 20, 50, 100, 200, 500, 1000) if b >= total)
    question = (
        f"{name} buys {' and '.join(purchases)}.{discount} {name} pays with a ${bill} bill. "
        f"How much change, in dollars, does {name} receive?"
    )
    return Task(question, format_exact(bill - total), "shopping", difficulty)


def number_theory(rng: np.random.Generator, difficulty: int) -> Task:
    form = _pick(rng, ("multiples", "primes", "powmod", "gcd"))
    if form == "multiples":
        a, b = _int(rng, 2, 7), _int(rng, 3, 11)
        while b == a:
            b = _int(rng, 3, 11)
        n = _int(rng, 20, 10 ** (difficulty + 1))
        total = sum(i for i in range(1, n) if i % a == 0 or i % b == 0)
        return Task(f"What is the sum of all positive integers below {n} that are multiples of {a} or {b}?", str(total), "number_theory", difficulty)
    if form == "primes":
        n = _int(rng, 10, 10 ** (difficulty + 1))
        sieve = bytearray([1]) * n
        sieve[:2] = b"\x00\x00"[: min(2, n)]
        for i in range(2, int(n**0.5) + 1):
            if sieve[i]:
                sieve[i * i :: i] = bytearray(len(range(i * i, n, i)))
        return Task(f"How many prime numbers are there below {n}?", str(sum(sieve)), "number_theory", difficulty)
    if form == "powmod":
        a, b, m = _int(rng, 2, 50), _int(rng, 5, 10 * 10**difficulty), _int(rng, 3, 97)
        return Task(f"What is the remainder when {a} to the power {b} is divided by {m}?", str(pow(a, b, m)), "number_theory", difficulty)
    g = _int(rng, 2, 10 * difficulty)
    a, b = g * _int(rng, 2, 10 ** (difficulty + 1)), g * _int(rng, 2, 10 ** (difficulty + 1))
    return Task(f"What is the greatest common divisor of {a} and {b}?", str(math.gcd(a, b)), "number_theory", difficulty)


def sequences(rng: np.random.Generator, difficulty: int) -> Task:
    if _pick(rng, (True, False)):
        n = _int(rng, 5, 15 * difficulty + 10)
        a, b = 1, 1
        for _ in range(n - 1):
            a, b = b, a + b
        return Task(f"What is term number {n} of the Fibonacci sequence that starts 1, 1, 2, 3, 5, ...?", str(a), "sequences", difficulty)
    first, step, n = _int(rng, -20, 50), _int(rng, -9, 15), _int(rng, 5, 20 * difficulty + 10)
    total = n * (2 * first + (n - 1) * step) // 2
    return Task(
        f"What is the sum of the first {n} terms of the arithmetic sequence {first}, {first + step}, {first + 2 * step}, ...?",
        str(total),
        "sequences",
        difficulty,
    )


GENERATORS: dict[str, Callable[[np.random.Generator, int], Task]] = {
    "arithmetic_chain": arithmetic_chain,
    "unit_conversion": unit_conversion,
    "combinatorics": combinatorics,
    "counting": counting,
    "shopping": shopping,
    "number_theory": number_theory,
    "sequences": sequences,
}


def generate_task(rng: np.random.Generator, kinds: tuple[str, ...] | None = None, difficulty: int | None = None) -> Task:
    """Draw one task: a kind (uniform over `kinds`), a difficulty (given, or uniform over 1..3), then its numbers."""
    kinds = kinds or tuple(GENERATORS)
    kind = _pick(rng, kinds)
    level = difficulty if difficulty is not None else _int(rng, 1, 3)
    return GENERATORS[kind](rng, level)


def load_jsonl_tasks(path: str | Path) -> list[Task]:
    """Tasks from a JSONL file of `{"question": ..., "answer": ...}` (GSM8K's `#### 42` answers are cut)."""
    tasks = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                question, answer = str(row["question"]), str(row["answer"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{line_no}: expected a JSON object with 'question' and 'answer' ({exc})") from None
            if "####" in answer:
                answer = answer.rsplit("####", 1)[1].strip()
            tasks.append(Task(question, answer, str(row.get("kind", "jsonl")), int(row.get("difficulty", 0))))
    if not tasks:
        raise ValueError(f"{path} holds no tasks")
    return tasks
