"""Q_com, ZipRL's heuristic compression-quality score (arXiv 2605.28069, §1.1 of docs/anchors-domains.md),
computed per turn from what the compressed context kept of it. No reward model: four terms in [0, 1].

* **ratio**: `1 − kept tokens / original tokens` of the turn.
* **consistency** (level–strategy): `1 − |pct(level) − pct(relevance)|`, with `pct` the percentile rank
  among the completed turns and relevance a turn's total line value, so more relevant turns should sit at
  finer levels whatever the budget.
* **retention**: value-weighted fraction of the turn's lines still in the context (values from
  `turns.TurnDigest.values`: relevant current facts weigh most), 1 when the turn held nothing of value.
  In hindsight, when the env knows which lines later turns need (Ledger: the facts later probes ask about;
  `hindsight_retention`): the fraction of the turn's needed lines still in the context, and those counts
  also rank the turns for consistency. That is what the context is worth to the rest of the episode, so
  dropping a needed fact costs retention and keeping what nothing needs costs ratio.
* **completeness**: fraction of the turn's kept relevant lines whose references to task identifiers
  (`var-a = var-b + 3` refers to `var-b`) are defined somewhere in the context, so a kept multi-hop
  link is complete only with the links it depends on.

`Q_com = Σ w·term` with `QComWeights` (equal weights by default; ZipRL's weights are not public).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Collection, Sequence

import numpy as np

from agentenv.compression.turns import TurnDigest, terms

__all__ = ["QComWeights", "score_turns", "kept_by_presence", "hindsight_retention", "completeness"]

RELEVANT = 0.3  # a line whose value is at least this counts for completeness


@dataclass(frozen=True)
class QComWeights:
    """Weights of the four Q_com terms (ours: equal; the paper's are not published)."""

    ratio: float = 0.25
    consistency: float = 0.25
    retention: float = 0.25
    completeness: float = 0.25


def _percentiles(x: np.ndarray) -> np.ndarray:
    """Percentile rank of each value in [0, 1], ties averaged; 0.5 everywhere for fewer than two values."""
    n = len(x)
    if n < 2:
        return np.full(n, 0.5)
    ordered = np.sort(x)
    low = np.searchsorted(ordered, x, "left")
    high = np.searchsorted(ordered, x, "right") - 1
    return (low + high) / (2 * (n - 1))


def kept_by_presence(
    turns: Sequence[TurnDigest], values: Sequence[Sequence[float]], view: Sequence[dict[str, Any]]
) -> tuple[list[float], list[float]]:
    """(kept value, completeness) of each turn, judged by which of its lines appear verbatim in `view`."""
    present = {line.strip() for m in view for line in m["content"].split("\n")}
    kept: list[list[int]] = []
    defined: set[str] = set()
    for digest, vals in zip(turns, values):
        lines = [i for i, v in enumerate(vals) if v > 0 and digest.lines[i].strip() in present]
        kept.append(lines)
        for i in lines:
            if digest.keys[i] is not None:
                defined.update(terms(digest.keys[i]))
    kept_value = [sum(vals[i] for i in lines) for vals, lines in zip(values, kept)]
    complete = [completeness(digest, vals, lines, defined) for digest, vals, lines in zip(turns, values, kept)]
    return kept_value, complete


def hindsight_retention(turns: Sequence[TurnDigest], needed: Collection[str], view: Sequence[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """(kept, mass) of each turn judged in hindsight: mass = how many of its lines are in `needed` (the exact
    lines later turns need), kept = how many of those appear verbatim in `view`."""
    needed = needed if isinstance(needed, (set, frozenset)) else set(needed)
    present = {line.strip() for m in view for line in m["content"].split("\n")}
    kept, mass = [], []
    for digest in turns:
        lines = [line.strip() for line in digest.lines if line.strip() in needed]
        mass.append(float(len(lines)))
        kept.append(float(sum(line in present for line in lines)))
    return kept, mass


def completeness(digest: TurnDigest, values: Sequence[float], kept: Sequence[int], defined: set[str]) -> float:
    """Fraction of the kept relevant lines whose referenced task identifiers are all in `defined`."""
    relevant = [i for i in kept if values[i] >= RELEVANT]
    if not relevant:
        return 1.0
    return sum(all(r in defined for r in digest.refs[i]) for i in relevant) / len(relevant)


def score_turns(
    levels: Sequence[int],
    kept_tokens: Sequence[int],
    tokens: Sequence[int],
    kept_value: Sequence[float],
    mass: Sequence[float],
    complete: Sequence[float],
    weights: QComWeights = QComWeights(),
) -> dict[str, list[float]]:
    """Q_com and its four terms per turn (aligned lists): `mass` is a turn's total value, `kept_value` the
    value of what the context kept of it, `complete` its completeness."""
    level = np.asarray(levels, dtype=float)
    mass_ = np.asarray(mass, dtype=float)
    ratio = np.clip(1.0 - np.asarray(kept_tokens, dtype=float) / np.maximum(np.asarray(tokens, dtype=float), 1.0), 0.0, 1.0)
    safe = np.where(mass_ > 0, mass_, 1.0)
    retention = np.where(mass_ > 0, np.minimum(np.asarray(kept_value, dtype=float) / safe, 1.0), 1.0)
    consistency = 1.0 - np.abs(_percentiles(level) - _percentiles(mass_))
    complete_ = np.asarray(complete, dtype=float)
    q = weights.ratio * ratio + weights.consistency * consistency + weights.retention * retention + weights.completeness * complete_
    return {"q_com": q.tolist(), "ratio": ratio.tolist(), "consistency": consistency.tolist(),
            "retention": retention.tolist(), "completeness": complete_.tolist()}
