"""Q_com, ZipRL's heuristic compression-quality score (arXiv 2605.28069, §1.1 of anchors-domains.md),
computed per turn from what the compressed context kept of it. No reward model: four terms in [0, 1].

* **ratio**: `1 − kept tokens / original tokens` of the turn.
* **consistency** (level–strategy): `1 − |pct(level) − pct(relevance)|`, with `pct` the percentile rank
  among the compressed turns, so more relevant turns should sit at finer levels whatever the budget.
* **retention**: value-weighted fraction of the turn's lines still in the context (values from
  `turns.TurnDigest.values`: relevant current facts weigh most), 1 when the turn held nothing of value.
* **completeness**: fraction of the turn's kept relevant lines whose references to task identifiers
  (`var-a = var-b + 3` refers to `var-b`) are defined somewhere in the context, so a kept multi-hop
  link is complete only with the links it depends on.

`Q_com = Σ w·term` with `QComWeights` (equal weights by default; ZipRL's weights are not public).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from agentenv.compression.turns import TurnDigest, terms

__all__ = ["QComWeights", "score_turns"]

RELEVANT = 0.3  # a line whose value is at least this counts for completeness


@dataclass(frozen=True)
class QComWeights:
    """Weights of the four Q_com terms (ours: equal; the paper's are not published)."""

    ratio: float = 0.25
    consistency: float = 0.25
    retention: float = 0.25
    completeness: float = 0.25


def _percentiles(xs: Sequence[float]) -> list[float]:
    """Percentile rank of each value in [0, 1], ties averaged; 0.5 for a single value."""
    n = len(xs)
    if n < 2:
        return [0.5] * n
    order = sorted(range(n), key=xs.__getitem__)
    out = [0.0] * n
    i = 0
    while i < n:
        j = i
        while j + 1 < n and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        rank = (i + j) / 2 / (n - 1)
        for k in range(i, j + 1):
            out[order[k]] = rank
        i = j + 1
    return out


def score_turns(
    turns: Sequence[TurnDigest],
    values: Sequence[Sequence[float]],
    levels: Sequence[int],
    kept_tokens: Sequence[int],
    view: Sequence[dict[str, Any]],
    weights: QComWeights = QComWeights(),
) -> dict[str, list[float]]:
    """Q_com and its four terms for each turn in `turns` (aligned lists), judged against `view`.

    values: per turn, per line values; levels: 1–5 per turn; kept_tokens: what each turn costs in `view`.
    """
    present = {line.strip() for m in view for line in m["content"].split("\n")}
    kept: list[list[int]] = []
    defined: set[str] = set()
    for digest, vals in zip(turns, values):
        lines = [i for i, v in enumerate(vals) if v > 0 and digest.lines[i].strip() in present]
        kept.append(lines)
        for i in lines:
            key = digest.keys[i]
            if key is not None:
                defined.update(terms(key))
    mass = [sum(vals) for vals in values]
    consistency = [1.0 - abs(a - b) for a, b in zip(_percentiles(levels), _percentiles(mass))]
    out: dict[str, list[float]] = {"ratio": [], "consistency": consistency, "retention": [], "completeness": [], "q_com": []}
    for k, (digest, vals) in enumerate(zip(turns, values)):
        ratio = min(1.0, max(0.0, 1.0 - kept_tokens[k] / max(digest.tokens, 1)))
        retention = sum(vals[i] for i in kept[k]) / mass[k] if mass[k] > 0 else 1.0
        relevant = [i for i in kept[k] if vals[i] >= RELEVANT]
        complete = sum(all(r in defined for r in digest.refs[i]) for i in relevant) / len(relevant) if relevant else 1.0
        out["ratio"].append(ratio)
        out["retention"].append(retention)
        out["completeness"].append(complete)
        out["q_com"].append(
            weights.ratio * ratio + weights.consistency * consistency[k] + weights.retention * retention + weights.completeness * complete
        )
    return out
