"""Simulated users: latent tastes, a click/buy/ignore behaviour model, and the histories it produces.

Ground truth (RecRM-Lite, research notes §2.4): a user clicks item i with
`p = σ(2·a_u·g_i/√|g_i| + 1.2·c_u[cat_i] + 0.9·quality_i − s_u·max(0, ln(price_i / budget_u)) − 1.0)`,
where `a_u [G]` is the user's genre affinity, `c_u [C]` the category affinity, `s_u` the price
sensitivity. A click becomes a purchase with `σ(logit − 1.5)`. Agents and learned scorers never see
these latents: they see the history (the items a user clicked or bought) and the catalogue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from agentenv.envs.recommend.catalog import GENRES, Catalog

__all__ = ["Interaction", "User", "sample_user", "click_logits", "click_probabilities", "react", "simulate_impressions"]

HISTORY_IMPRESSIONS = 120  # items a new user is shown before the episode; their clicks become the history
MAX_HISTORY = 40


@dataclass(frozen=True)
class Interaction:
    item_id: str
    action: str  # "click" or "buy"


@dataclass
class User:
    """A simulated user. `genre_affinity [G]`, `category_affinity [C]`, `budget`, `price_sensitivity` are latent."""

    id: str
    age: int
    genre_affinity: np.ndarray
    category_affinity: np.ndarray
    budget: float
    price_sensitivity: float
    history: list[Interaction] = field(default_factory=list)

    def profile(self) -> dict[str, object]:
        """What an agent may know about the user besides the history."""
        return {"user_id": self.id, "age": self.age}

    @property
    def seen(self) -> set[str]:
        return {h.item_id for h in self.history}


def sample_user(rng: np.random.Generator, catalog: Catalog, user_id: str) -> User:
    """A new user with two loved and one or two disliked genres and a favourite category, plus a history."""
    g = len(GENRES)
    affinity = rng.normal(0.0, 0.3, size=g)
    order = rng.permutation(g)
    affinity[order[:2]] = rng.uniform(1.5, 2.5, size=2)
    affinity[order[2:2 + int(rng.integers(1, 3))]] = -rng.uniform(1.5, 2.5)
    c = len(catalog.categories)
    category = rng.normal(-0.5, 0.3, size=c)
    category[rng.permutation(c)[: min(2, c)]] = rng.uniform(0.5, 1.5, size=min(2, c))
    user = User(user_id, int(rng.integers(16, 75)), affinity, category,
                budget=float(np.exp(rng.normal(np.log(25.0), 0.4))), price_sensitivity=float(rng.uniform(0.5, 2.0)))
    user.history = [Interaction(catalog.items[i].id, a) for i, a in simulate_impressions(user, catalog, rng, HISTORY_IMPRESSIONS)
                    if a != "ignore"][-MAX_HISTORY:]
    return user


def click_logits(user: User, catalog: Catalog, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Ground-truth click logits `[n]` of `user` for catalogue rows `indices` (all rows when None)."""
    rows = np.arange(len(catalog)) if indices is None else np.asarray(indices, dtype=int)
    genres = catalog.genre_matrix[rows]
    taste = genres @ user.genre_affinity / np.sqrt(np.maximum(genres.sum(axis=1), 1.0))
    over_budget = np.maximum(0.0, np.log(catalog.prices[rows] / user.budget))
    return (2.0 * taste + 1.2 * user.category_affinity[catalog.category_index[rows]] + 0.9 * catalog.quality[rows]
            - user.price_sensitivity * over_budget - 1.0)


def click_probabilities(user: User, catalog: Catalog, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """`σ(click_logits)`: the probability `[n]` that `user` clicks each item."""
    return 1.0 / (1.0 + np.exp(-click_logits(user, catalog, indices)))


def react(user: User, catalog: Catalog, indices: Sequence[int] | np.ndarray, rng: np.random.Generator) -> list[str]:
    """Sample the user's reaction to each shown item: "buy", "click" or "ignore"."""
    logits = click_logits(user, catalog, indices)
    clicked = rng.random(len(logits)) < 1.0 / (1.0 + np.exp(-logits))
    bought = clicked & (rng.random(len(logits)) < 1.0 / (1.0 + np.exp(1.5 - logits)))
    return ["buy" if b else "click" if c else "ignore" for c, b in zip(clicked, bought)]


def simulate_impressions(user: User, catalog: Catalog, rng: np.random.Generator, n: int) -> list[tuple[int, str]]:
    """Show `n` uniformly drawn distinct items; returns `(catalogue row, reaction)` pairs in display order."""
    shown = rng.choice(len(catalog), size=min(n, len(catalog)), replace=False)
    return list(zip(shown.tolist(), react(user, catalog, shown, rng)))
