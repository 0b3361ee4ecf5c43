"""The hybrid reward: `gate · Σ_k w_k·score_k / Σ_k w_k` over pluggable RecRM-style scorers.

RecRM-Bench proposes a hybrid of its per-dimension reward models but its weights could not be
recovered (research notes §2.1); `DEFAULT_WEIGHTS` are ours. Weights are normalised, so the reward
lies in [0, 1]; the gate scorer (default `format`) multiplies and carries no weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from agentenv.envs.recommend.answer import Recommendation
from agentenv.envs.recommend.scorers import EpisodeContext, Scorer, make_scorer

__all__ = ["HybridReward", "HybridScore", "DEFAULT_SCORERS", "DEFAULT_WEIGHTS"]

DEFAULT_SCORERS = ("format", "if", "fc", "qir", "ub")
DEFAULT_WEIGHTS = {"if": 0.3, "fc": 0.2, "qir": 0.25, "ub": 0.25}  # ours, not RecRM-Bench's (unpublished here)


@dataclass
class HybridScore:
    """`reward` in [0, 1], each scorer's value by name in `components` (plus "hybrid"), their `details`."""

    reward: float
    components: dict[str, float]
    details: dict[str, dict[str, Any]] = field(default_factory=dict)


class HybridReward:
    """Combine scorers into one reward.

    Args:
        scorers: registered names ("format", "if", "fc", "qir", "ub", or your own) or scorer objects.
        weights: name → weight for every scorer except the gate; defaults to `DEFAULT_WEIGHTS` for the
            built-in names. Weights are normalised to sum to 1.
        gate: name of the scorer whose value multiplies the weighted sum (None: no gate).
    """

    def __init__(self, scorers: Sequence[str | Scorer] = DEFAULT_SCORERS, weights: Mapping[str, float] | None = None,
                 gate: str | None = "format"):
        self.scorers = [make_scorer(s) for s in scorers]
        names = [s.name for s in self.scorers]
        if len(set(names)) < len(names):
            raise ValueError(f"two scorers share a name in {names}")
        if gate is not None and gate not in names:
            raise ValueError(f"the gate {gate!r} is not one of the scorers {names}")
        weighted = [n for n in names if n != gate]
        given = dict(weights) if weights is not None else {n: DEFAULT_WEIGHTS[n] for n in weighted if n in DEFAULT_WEIGHTS}
        missing, unknown = [n for n in weighted if n not in given], [n for n in given if n not in weighted]
        if missing or unknown:
            raise ValueError(f"weights must name exactly the non-gate scorers {weighted}: missing {missing}, unknown {unknown}")
        total = sum(given.values())
        if any(w < 0 for w in given.values()) or total <= 0:
            raise ValueError("weights must be non-negative with a positive sum")
        self.gate = gate
        self.weights = {n: given[n] / total for n in weighted}

    def score(self, context: EpisodeContext, recommendation: Recommendation) -> HybridScore:
        """Run every scorer (the gate too, even when it fails: all components are logged) and combine."""
        results = {s.name: s.score(context, recommendation) for s in self.scorers}
        components = {name: float(r.value) for name, r in results.items()}
        gate = components[self.gate] if self.gate is not None else 1.0
        reward = gate * sum(w * components[n] for n, w in self.weights.items())
        components["hybrid"] = reward
        return HybridScore(reward, components, {name: r.details for name, r in results.items()})
