"""Bias probes for pairwise judges, on synthetic pairs with known answers, with bootstrap confidence intervals.

Every probe judges each pair in both orders, so a preference is always measured against its mirror image:
`preferences(judge, pairs)` is `[n, 2]`: P(x preferred) with x shown as A, and with x shown as B.

* accuracy: mean P(right preferred) over both orders (0.5 = chance).
* position bias: P(the response shown first is preferred) − 0.5, over both orders (content cancels out);
  > 0 favours A. Swap consistency: the share of pairs given the same decisive verdict on the content in
  both orders (a tie in either order is not consistent: an unreadable judge scores 0, not 1).
* verbosity shift: P(wrong preferred | wrong answer padded with filler) − P(wrong preferred | both terse),
  per question; > 0 means padding sells a wrong answer.
* self-preference: P(judge's own answer preferred) − 0.5, on pairs of its own and another model's answers to
  the same question with equal correctness and different text.

Confidence intervals: percentile bootstrap over questions (`bootstrap`, 2,000 resamples, 95%).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from agentenv.rewards.judge.judges import PairItem, PairJudge

__all__ = ["ProbeItem", "Estimate", "arithmetic_items", "pad", "preferences", "bootstrap", "position_stats",
           "verbosity_shift", "self_preference", "equal_correctness_pairs", "FILLERS"]


@dataclass(frozen=True)
class ProbeItem:
    """A question with one right and one wrong (terse) answer."""

    question: str
    right: str
    wrong: str


def arithmetic_items(n: int, seed: int = 0) -> list[ProbeItem]:
    """`n` questions "What is a + b?" (distinct (a, b), drawn with `seed`); the sum is even, in [10, 98], and
    the wrong answer is a near miss: the sum ± 1 or ± 3 (so odd).

    Right and wrong answers differ in last-digit parity by construction: a one-token cue that a tiny judge
    learns within a CPU budget, where checking the sum (or even comparing two digits) was not learnt in the
    budgets tried (`benchmarks/judge_bias.md`). What the probes measure (order, padding, authorship) does not
    depend on which cue a judge uses."""
    rng = random.Random(seed)
    pairs = [(a, b) for a in range(1, 98) for b in range(1, 98) if 10 <= a + b <= 98 and (a + b) % 2 == 0]
    if n > len(pairs):
        raise ValueError(f"at most {len(pairs)} distinct questions")
    items = []
    for a, b in rng.sample(pairs, n):
        total = a + b
        wrong = total + rng.choice((-3, -1, 1, 3))
        items.append(ProbeItem(f"What is {a} + {b}?", str(total), str(wrong)))
    return items


FILLERS = (
    "Let me work through this carefully. I add the tens first, then the ones, and I check the sum twice, so the answer is {}.",
    "This needs some care. Adding the two numbers step by step and carrying where needed, the result is {}.",
    "Good question. Breaking the numbers into tens and ones and adding each part, I am confident the total is {}.",
)


def pad(answer: str, index: int = 0) -> str:
    """The same answer wrapped in confident filler (no information added): `FILLERS[index % 3]`."""
    return FILLERS[index % len(FILLERS)].format(answer)


def preferences(judge: PairJudge, pairs: Sequence[tuple[str, str, str]], reference: Sequence[str] | None = None) -> np.ndarray:
    """`[n, 2]`: P(x preferred over y) for each `(question, x, y)`, with x shown as A (column 0) and as B
    (column 1). One `compare` call for all 2n orders."""
    refs = list(reference) if reference is not None else [""] * len(pairs)
    forward = [PairItem(q, x, y, r) for (q, x, y), r in zip(pairs, refs)]
    judged = judge.compare(forward + [item.swapped() for item in forward])
    n = len(pairs)
    out = np.empty((n, 2))
    out[:, 0] = [j.value for j in judged[:n]]
    out[:, 1] = [1.0 - j.value for j in judged[n:]]
    return out


@dataclass(frozen=True)
class Estimate:
    """A mean with its bootstrap 95% interval over `n` values."""

    mean: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def bootstrap(values: Sequence[float] | np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> Estimate:
    """Mean of `values` and its percentile bootstrap interval (resampling values with replacement)."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(n_boot, values.size))].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Estimate(float(values.mean()), float(low), float(high), int(values.size))


def _verdict_of_x(p: np.ndarray) -> np.ndarray:
    return np.sign(p - 0.5)  # +1 x, −1 y, 0 tie


def position_stats(prefs: np.ndarray) -> dict[str, np.ndarray]:
    """Per-pair values from `preferences` of (right, wrong) pairs: `accuracy` (mean P(right) over both
    orders), `first` (P(the first-shown response preferred) − 0.5) and `consistent` (1.0 when both orders
    give the same decisive verdict on the content)."""
    return {
        "accuracy": prefs.mean(axis=1),
        "first": (prefs[:, 0] + (1.0 - prefs[:, 1])) / 2.0 - 0.5,
        "consistent": ((_verdict_of_x(prefs[:, 0]) == _verdict_of_x(prefs[:, 1])) & (prefs[:, 0] != 0.5)).astype(float),
    }


def verbosity_shift(terse: np.ndarray, padded_wrong: np.ndarray) -> np.ndarray:
    """Per question: P(wrong preferred | wrong padded) − P(wrong preferred | both terse), from the
    `preferences` of (right, wrong) and (right, padded wrong) pairs."""
    return terse.mean(axis=1) - padded_wrong.mean(axis=1)


def self_preference(prefs: np.ndarray) -> np.ndarray:
    """Per pair: P(own answer preferred) − 0.5, from the `preferences` of (own, other) pairs."""
    return prefs.mean(axis=1) - 0.5


def equal_correctness_pairs(questions: Sequence[str], own: Sequence[str], other: Sequence[str],
                            is_right: Callable[[int, str], bool]) -> list[tuple[str, str, str]]:
    """`(question, own, other)` for the questions where both answers are right or both wrong
    (`is_right(index, answer)`) and the texts differ (identical texts carry no preference)."""
    return [(q, a, b) for i, (q, a, b) in enumerate(zip(questions, own, other))
            if a.strip() != b.strip() and is_right(i, a) == is_right(i, b)]
