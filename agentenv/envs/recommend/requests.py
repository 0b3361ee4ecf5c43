"""What a simulated user asks for: hard constraints, a soft intent, and the sentence that states them.

A `Request` is drawn from the user's latent tastes (their favourite category, a loved genre, a disliked
genre, their budget) and rendered as a natural-language message with seeded paraphrases. The hard
constraints are checked by rule (`check_item`, the instruction-following scorer); the soft intent (the
loved genre, stated by vibe words, by name or through "something like <a title from the history>")
defines query–item relevance (`is_relevant`, the label the learned relevance model is trained on).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agentenv.envs.recommend.catalog import GENRES, VIBES, Catalog, Item, pick
from agentenv.envs.recommend.users import User

__all__ = ["Request", "draw_request", "check_item", "is_relevant", "PLURALS"]

PLURALS = {"movie": "movies", "book": "books", "video game": "video games", "board game": "board games",
           "comic": "comics", "tv series": "tv series"}
_PRICE_STEPS = (5, 8, 10, 12, 15, 20, 25, 30, 35, 40, 50, 60, 80, 100)


@dataclass(frozen=True)
class Request:
    """One stated request. Optional constraints are None/False when the user did not state them."""

    k: int
    category: str
    intent_genre: str
    max_price: float | None
    exclude_genre: str | None
    min_rating: float | None
    like_item: str | None
    new_only: bool
    text: str

    def constraints(self) -> list[str]:
        """Names of the item-level constraints the user stated (the keys `check_item` returns)."""
        names = ["category"]
        names += ["max_price"] * (self.max_price is not None) + ["exclude_genre"] * (self.exclude_genre is not None)
        names += ["min_rating"] * (self.min_rating is not None) + ["not_reference"] * (self.like_item is not None)
        return names + ["new_only"] * self.new_only


def check_item(request: Request, item: Item, seen: set[str]) -> dict[str, bool]:
    """Each stated item-level constraint → whether `item` meets it (`seen`: ids in the user's history)."""
    checks = {"category": item.category == request.category}
    if request.max_price is not None:
        checks["max_price"] = item.price <= request.max_price
    if request.exclude_genre is not None:
        checks["exclude_genre"] = request.exclude_genre not in item.genres
    if request.min_rating is not None:
        checks["min_rating"] = item.rating >= request.min_rating
    if request.like_item is not None:
        checks["not_reference"] = item.id != request.like_item
    if request.new_only:
        checks["new_only"] = item.id not in seen
    return checks


def is_relevant(request: Request, item: Item) -> bool:
    """Query–item relevance label: right category, has the intended genre, not the excluded one."""
    return (item.category == request.category and request.intent_genre in item.genres
            and request.exclude_genre not in item.genres)


def _perfect_items(request: Request, catalog: Catalog, seen: set[str]) -> int:
    """How many items meet every hard constraint and are relevant (a perfect answer needs k of them).

    The vectorised twin of `check_item` + `is_relevant` (requests are drawn at every reset).
    """
    genre = catalog.genre_matrix
    ok = (catalog.category_index == catalog.categories.index(request.category)) & (genre[:, GENRES.index(request.intent_genre)] > 0)
    if request.max_price is not None:
        ok &= catalog.prices <= request.max_price
    if request.exclude_genre is not None:
        ok &= genre[:, GENRES.index(request.exclude_genre)] == 0
    if request.min_rating is not None:
        ok &= catalog.ratings >= request.min_rating
    excluded = (seen if request.new_only else set()) | ({request.like_item} if request.like_item else set())
    return int(ok.sum()) - sum(bool(ok[catalog.index[i]]) for i in excluded)


def draw_request(rng: np.random.Generator, user: User, catalog: Catalog) -> Request:
    """Draw a feasible request from `user`'s tastes; constraints that leave fewer than k answers are dropped."""
    k = int(rng.integers(3, 6))
    category = catalog.categories[int(np.argmax(user.category_affinity + rng.normal(0, 0.2, len(catalog.categories))))]
    loved = [GENRES[j] for j in np.argsort(-user.genre_affinity)[:2]]
    intent = pick(rng, loved)
    hated = GENRES[int(np.argmin(user.genre_affinity))]
    # "like X" names X by title, and titles are written from an item's first genre: X must lead with the intent
    candidates = [h.item_id for h in user.history if catalog.by_id[h.item_id].genres[0] == intent]
    same_category = [i for i in candidates if catalog.by_id[i].category == category]
    like = pick(rng, same_category or candidates) if candidates and rng.random() < 0.6 else None
    median = float(np.median(catalog.prices[catalog.category_index == catalog.categories.index(category)]))
    max_price = float(min(_PRICE_STEPS, key=lambda s: abs(s - median * rng.uniform(0.8, 1.6)))) if rng.random() < 0.8 else None
    fields = dict(k=k, category=category, intent_genre=intent, max_price=max_price,
                  exclude_genre=hated if rng.random() < 0.6 and hated != intent else None,
                  min_rating=3.5 if rng.random() < 0.3 else None, like_item=like, new_only=bool(rng.random() < 0.5))
    seen = user.seen
    for relax in ("min_rating", "max_price", "exclude_genre", "new_only", None):
        perfect = _perfect_items(Request(**fields, text=""), catalog, seen)
        if perfect >= k or relax is None:
            break
        fields[relax] = False if relax == "new_only" else None
    fields["k"] = max(1, min(k, perfect))  # a rare intent: ask for no more than exist
    return Request(**fields, text=_render(rng, fields, catalog))


def _render(rng: np.random.Generator, f: dict, catalog: Catalog) -> str:
    plural = PLURALS.get(f["category"], f["category"] + "s")
    parts = [pick(rng, ("Hi! I'm looking for {k} {p}.", "Can you recommend {k} {p}?", "I'd like {k} {p} to try."))
             .format(k=f["k"], p=plural)]
    vibe = pick(rng, VIBES[f["intent_genre"]])
    if f["like_item"] is not None:
        title = catalog.by_id[f["like_item"]].title
        parts.append(pick(rng, ('Something like "{t}".', 'I loved "{t}", so more like that.')).format(t=title))
        if rng.random() < 0.5:
            parts.append(f"Ideally {vibe}.")
    elif rng.random() < 0.3:
        parts.append(f"Preferably {f['intent_genre']}.")
    else:
        parts.append(pick(rng, ("Something {v}.", "I'm in the mood for something {v}.")).format(v=vibe))
    if f["max_price"] is not None:
        parts.append(pick(rng, ("Under ${p:g} each, please.", "My budget is ${p:g} per item.", "Nothing over ${p:g}."))
                     .format(p=f["max_price"]))
    if f["exclude_genre"] is not None:
        parts.append(pick(rng, ("No {g}, please.", "I can't stand {g}.", "Please avoid {g}.")).format(g=f["exclude_genre"]))
    if f["min_rating"] is not None:
        parts.append(pick(rng, ("Only things rated {r:g} or higher.", "At least {r:g} stars.")).format(r=f["min_rating"]))
    if f["new_only"]:
        parts.append(pick(rng, ("Nothing I already have.", "Please skip anything I've already seen.")))
    return " ".join(parts)
