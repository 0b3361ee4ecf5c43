"""Q_com, ZipRL's heuristic compression-quality score (arXiv 2605.28069, §1.1 of anchors-domains.md),
computed per turn from what the compressed context kept of it. No reward model: four terms in [0, 1].

* **ratio**: `1 − kept tokens / original tokens` of the turn.
* **consistency** (level–strategy): `1 − |pct(level) − pct(relevance)|`, with `pct` the percentile rank
  among the completed turns and relevance a turn's total line value, so more relevant turns should sit at
  finer levels whatever the budget.
* **retention**: value-weighted fraction of the turn's lines still in the context (values from
  `turns.TurnDigest.values`: relevant current facts weigh most), 1 when the turn held nothing of value.
* **completeness**: fraction of the turn's kept relevant lines whose references to task identifiers
  (`var-a = var-b + 3` refers to `var-b`) are defined somewhere in the context, so a kept multi-hop
  link is complete only with the links it depends on.

`Q_com = Σ w·term` with `QComWeights` (equal weights by default; ZipRL's weights are not public).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Any, Sequence

from agentenv.compression.turns import TurnDigest, terms

__all__ = ["QComWeights", "score_turns", "kept_by_presence", "completeness"]

RELEVANT = 0.3  # a line whose value is at least this counts for completeness


@dataclass(frozen=True)
class QComWeights:
    """Weights of the four Q_com terms (ours: equal; the paper's are not published)."""

    ratio: float = 0.25
    consistency: float = 0.25
    retention: float = 0.25
    completeness: float = 0.25


def _percentiles(x: Sequence[float]) -> list[float]:
    """Percentile rank of each value in [0, 1], ties averaged; 0.5 everywhere for fewer than two values."""
    n = len(x)
    if n < 2:
        return [0.5] * n
    ordered = sorted(x)
    span = 2 * (n - 1)
    return [(bisect_left(ordered, v) + bisect_right(ordered, v) - 1) / span for v in x]


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
    value of what the context kept of it, `complete` its completeness. Plain floats: a compressor scores
    a few dozen turns per rewrite, too few for numpy's per-call cost to pay."""
    ratio = [min(max(1.0 - float(k) / max(float(t), 1.0), 0.0), 1.0) for k, t in zip(kept_tokens, tokens)]
    retention = [min(float(v) / float(m), 1.0) if m > 0 else 1.0 for v, m in zip(kept_value, mass)]
    consistency = [1.0 - abs(a - b) for a, b in zip(_percentiles([float(x) for x in levels]), _percentiles([float(x) for x in mass]))]
    complete_ = [float(c) for c in complete]
    w = weights
    q = [w.ratio * a + w.consistency * b + w.retention * c + w.completeness * d for a, b, c, d in zip(ratio, consistency, retention, complete_)]
    return {"q_com": q, "ratio": ratio, "consistency": consistency, "retention": retention, "completeness": complete_}
