"""RecRM-style reward dimensions: one scorer per dimension, all with the same interface.

`scorer.score(context, recommendation) -> DimensionScore(value in [0, 1], details)`, where `context`
is the episode (catalogue, user, request) and `recommendation` the parsed answer. The dimensions
follow RecRM-Bench (arXiv 2605.11874):

| name     | dimension                  | how                                                              |
|----------|----------------------------|------------------------------------------------------------------|
| `format` | answer format (the gate)   | 1 if the answer parses in the declared format, else 0           |
| `if`     | instruction following      | rules: list size, no duplicates, every stated constraint per item |
| `fc`     | factual consistency        | rules: the id exists and every claimed attribute matches        |
| `qir`    | query–item relevance       | learned `BiEncoder`: mean P(relevant) of the list                |
| `ub`     | user behaviour prediction  | learned `ClickModel`: mean predicted P(click) of the list        |

For `qir` and `ub` a list is averaged over `max(k, len(list))` slots: unknown ids, repeated ids and
missing slots count 0, so neither a short list nor repeating the best item pays. Learned models load
(or train, see `train.py`) at the first `score`. New dimensions: any object with `name` and `score`,
or `register_scorer(name, factory)` to use it by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from agentenv.envs.recommend.answer import Recommendation
from agentenv.envs.recommend.catalog import Catalog
from agentenv.envs.recommend.requests import Request, check_item
from agentenv.envs.recommend.users import User

__all__ = ["EpisodeContext", "DimensionScore", "Scorer", "FormatScorer", "InstructionFollowingScorer",
           "FactualConsistencyScorer", "RelevanceScorer", "BehaviourScorer", "register_scorer", "make_scorer", "registered_scorers"]

PRICE_TOLERANCE = 0.005  # claimed prices must match to the cent
RATING_TOLERANCE = 0.05


@dataclass(frozen=True)
class EpisodeContext:
    """What a scorer may read about the episode: the catalogue, the user, the stated request."""

    catalog: Catalog
    user: User
    request: Request


@dataclass
class DimensionScore:
    """A dimension's score `value` in [0, 1] and what it found (`details`, JSON-friendly)."""

    value: float
    details: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Scorer(Protocol):
    name: str

    def score(self, context: EpisodeContext, recommendation: Recommendation) -> DimensionScore:
        """Score one recommendation list in [0, 1]."""
        ...


class FormatScorer:
    """The gate: 1.0 if the answer is a non-empty list of well-formed entries, else 0.0."""

    name = "format"

    def score(self, context: EpisodeContext, recommendation: Recommendation) -> DimensionScore:
        return DimensionScore(float(recommendation.well_formed), {"errors": recommendation.errors})


class InstructionFollowingScorer:
    """Fraction of passed checks: exactly k items, no repeated ids, and each stated constraint for each item.

    An id not in the catalogue fails every item-level check (nothing about it can be verified).
    """

    name = "if"

    def score(self, context: EpisodeContext, recommendation: Recommendation) -> DimensionScore:
        entries = recommendation.entries
        if not entries:
            return DimensionScore(0.0, {"failed": ["no items"]})
        request = context.request
        ids = [e.id for e in entries]
        failed = [] if len(entries) == request.k else [f"asked for {request.k} items, got {len(entries)}"]
        if len(set(ids)) < len(ids):
            failed.append("repeated items")
        passed, total = 2 - len(failed), 2
        seen = context.user.seen
        names = request.constraints()
        for item_id in ids:
            item = context.catalog.by_id.get(item_id)
            checks = check_item(request, item, seen) if item is not None else dict.fromkeys(names, False)
            total += len(checks)
            for name, ok in checks.items():
                passed += ok
                if not ok:
                    failed.append(f"{item_id[:40]}: {name}")
        return DimensionScore(passed / total, {"failed": failed, "checks": total})


class FactualConsistencyScorer:
    """Fraction of true claims: each entry claims its id exists, plus one claim per stated attribute.

    Attributes of an unknown id are all false (hallucinated). Prices match to the cent, ratings to
    ±0.05, titles and categories case-insensitively; claimed genres must be a subset of the item's.
    """

    name = "fc"

    def score(self, context: EpisodeContext, recommendation: Recommendation) -> DimensionScore:
        if not recommendation.entries:
            return DimensionScore(0.0, {"faults": ["no items"]})
        true, total, faults = 0, 0, []
        for entry in recommendation.entries:
            item = context.catalog.by_id.get(entry.id)
            total += 1 + len(entry.claims)
            if item is None:
                faults.append(f"{entry.id[:40]}: no such item")
                continue
            true += 1
            for name, claimed in entry.claims.items():
                if _claim_holds(item, name, claimed):
                    true += 1
                else:
                    faults.append(f"{entry.id}: {name} is {getattr(item, name)!r}, not {str(claimed)[:40]!r}")
        return DimensionScore(true / total, {"faults": faults, "claims": total})


def _claim_holds(item: Any, name: str, claimed: Any) -> bool:
    actual = getattr(item, name)
    if name in ("price", "rating"):
        tolerance = PRICE_TOLERANCE if name == "price" else RATING_TOLERANCE
        try:
            return abs(float(claimed) - actual) <= tolerance
        except OverflowError:  # a JSON integer too large for a float
            return False
    if name == "genres":
        return bool(claimed) and {g.lower() for g in claimed} <= set(actual)
    return str(claimed).strip().lower() == str(actual).lower()


def _slots(context: EpisodeContext, recommendation: Recommendation) -> tuple[list[int], int]:
    """Catalogue rows of the first occurrence of each known id, and the number of slots to average over."""
    rows, seen = [], set()
    for entry in recommendation.entries:
        row = context.catalog.index.get(entry.id)
        if row is not None and row not in seen:
            seen.add(row)
            rows.append(row)
    return rows, max(context.request.k, len(recommendation.entries))


class RelevanceScorer:
    """Learned query–item relevance: mean over slots of the bi-encoder's P(relevant | request text, item text).

    Item vectors are computed once per catalogue, query vectors once per request text.
    """

    name = "qir"

    def __init__(self, model: Any = None):
        self._model = model
        self._item_vectors: dict[str, np.ndarray] = {}
        self._query_vectors: dict[str, np.ndarray] = {}

    @property
    def model(self) -> Any:
        if self._model is None:
            from agentenv.envs.recommend.train import default_relevance_model

            self._model = default_relevance_model()
        return self._model

    def probabilities(self, context: EpisodeContext, rows: list[int]) -> np.ndarray:
        """P(relevant) `[len(rows)]` of catalogue rows for this episode's request."""
        catalog, text = context.catalog, context.request.text
        items = self._item_vectors.get(catalog.name)
        if items is None:
            items = self._item_vectors[catalog.name] = self.model.encode([it.text for it in catalog.items], "item")
        query = self._query_vectors.get(text)
        if query is None:
            if len(self._query_vectors) >= 4096:
                self._query_vectors.clear()
            query = self._query_vectors[text] = self.model.encode([text], "query")[0]
        return self.model.probability(query, items[rows])

    def score(self, context: EpisodeContext, recommendation: Recommendation) -> DimensionScore:
        rows, slots = _slots(context, recommendation)
        probs = self.probabilities(context, rows) if rows else np.zeros(0)
        return DimensionScore(float(probs.sum()) / slots, {"p_relevant": [round(float(p), 4) for p in probs]})


class BehaviourScorer:
    """Learned user-behaviour prediction: mean over slots of the predicted P(click) of this user."""

    name = "ub"

    def __init__(self, model: Any = None):
        self._model = model

    @property
    def model(self) -> Any:
        if self._model is None:
            from agentenv.envs.recommend.train import default_click_model

            self._model = default_click_model()
        return self._model

    def score(self, context: EpisodeContext, recommendation: Recommendation) -> DimensionScore:
        from agentenv.envs.recommend.models import click_features

        rows, slots = _slots(context, recommendation)
        if not rows:
            return DimensionScore(0.0, {"p_click": [], "p_order": []})
        catalog = context.catalog
        history = [catalog.index[h.item_id] for h in context.user.history]
        probs = self.model.probabilities(click_features(catalog, history, rows))
        return DimensionScore(float(probs[:, 0].sum()) / slots, {"p_click": [round(float(p), 4) for p in probs[:, 0]],
                                                                  "p_order": [round(float(p), 4) for p in probs[:, 1]]})


_FACTORIES: dict[str, Callable[[], Scorer]] = {
    "format": FormatScorer, "if": InstructionFollowingScorer, "fc": FactualConsistencyScorer,
    "qir": RelevanceScorer, "ub": BehaviourScorer,
}


def register_scorer(name: str, factory: Callable[[], Scorer]) -> None:
    """Make `name` usable in `Recommend-v0(scorers=[...])`; `factory()` builds a fresh scorer."""
    _FACTORIES[name] = factory


def registered_scorers() -> list[str]:
    return sorted(_FACTORIES)


def make_scorer(spec: str | Scorer) -> Scorer:
    """A scorer from a registered name or a scorer object (returned as is)."""
    if isinstance(spec, str):
        if spec not in _FACTORIES:
            raise ValueError(f"unknown scorer {spec!r}; registered: {registered_scorers()} (or pass an object with .name and .score)")
        return _FACTORIES[spec]()
    if not isinstance(spec, Scorer):
        raise TypeError(f"a scorer needs a .name and a .score(context, recommendation) method, got {type(spec).__name__}")
    return spec
