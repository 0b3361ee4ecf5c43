"""Scripted baseline agents for Recommend-v0: random, popularity, and constraint-aware.

Each reads only what an agent sees (the messages), calls the env's tools in the declared syntax, and
answers in the declared format with attributes copied from tool results, so all three are factually
consistent; they differ in which items they pick:

- `RandomRecommender`: k items drawn uniformly from the whole catalogue;
- `PopularityRecommender`: the k most popular items, whatever was asked;
- `ConstraintAwareRecommender`: parses the request (count, category, price limit, genres to avoid,
  minimum rating, the "like X" example, the vibe), reads the history, searches with those filters and
  the intended genre, and answers the most popular items that fit and that the user does not have.

Every policy has `act(messages) -> str` and `generate(contexts) -> list[Generation]` (the `Policy`
protocol). Tool turns end with `<execute/>`, so they run in "immediate" and "delayed" mode alike.
"""

from __future__ import annotations

import json
import re
import zlib
from typing import Any, Sequence

import numpy as np

from agentenv.envs.recommend.catalog import GENRES, VIBES
from agentenv.envs.recommend.requests import PLURALS
from agentenv.types import Generation, Messages

__all__ = ["RandomRecommender", "PopularityRecommender", "ConstraintAwareRecommender", "BASELINES"]

_SINGULAR = {plural: singular for singular, plural in PLURALS.items()}
_COUNT = re.compile(r"(\d+) (" + "|".join(sorted(map(re.escape, _SINGULAR), key=len, reverse=True)) + r")\b")
_VIBE_GENRE = {vibe: genre for genre, vibes in VIBES.items() for vibe in vibes}


def _call(name: str, **arguments: Any) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def _results(messages: Messages, name: str) -> list[dict[str, Any]]:
    """Parsed JSON contents of the successful results of tool `name`, oldest first."""
    out = []
    for m in messages:
        if m["role"] == "tool" and m.get("name") == name and not m["content"].startswith(("Error", "queued")):
            try:
                out.append(json.loads(m["content"]))
            except ValueError:
                continue
    return out


def _answer(items: Sequence[dict[str, Any]], reason: str) -> str:
    entries = [{"id": it["id"], "title": it["title"], "reason": reason, "price": it["price"], "category": it["category"],
                "genres": it["genres"]} for it in items]
    return f"<answer>{json.dumps(entries)}</answer>"


def _request(messages: Messages) -> str:
    return next((m["content"] for m in messages if m["role"] == "user"), "")


def _count(request: str) -> int:
    match = _COUNT.search(request)
    return int(match.group(1)) if match else 3


class _Baseline:
    def generate(self, contexts: Sequence[Messages]) -> list[Generation]:
        return [Generation(self.act(messages)) for messages in contexts]

    def act(self, messages: Messages) -> str:
        raise NotImplementedError


class RandomRecommender(_Baseline):
    """k catalogue items drawn uniformly (seeded by `seed` and the request text)."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def act(self, messages: Messages) -> str:
        request = _request(messages)
        searches = _results(messages, "search_items")
        k = _count(request)
        if not searches:
            return "Let me see how big the catalogue is. " + _call("search_items", query="", limit=1) + "<execute/>"
        if len(searches) == 1:
            rng = np.random.default_rng([self.seed, zlib.crc32(request.encode())])
            offsets = rng.choice(searches[0]["total"], size=min(k, searches[0]["total"]), replace=False)
            return "".join(_call("search_items", query="", limit=1, offset=int(o)) for o in offsets) + "<execute/>"
        return _answer([s["results"][0] for s in searches[1:] if s["results"]], "a random pick")


class PopularityRecommender(_Baseline):
    """The k most popular catalogue items, ignoring the request."""

    def act(self, messages: Messages) -> str:
        searches = _results(messages, "search_items")
        if not searches:
            return _call("search_items", query="", sort="popularity", limit=_count(_request(messages))) + "<execute/>"
        return _answer(searches[-1]["results"], "one of our most popular items")


class ConstraintAwareRecommender(_Baseline):
    """Parse the request, read the history, search with the stated filters and the intended genre."""

    def act(self, messages: Messages) -> str:
        request = _request(messages)
        histories = _results(messages, "user_history")
        if not histories:
            return "First, the customer's history. " + _call("user_history") + "<execute/>"
        history = histories[-1]["history"]
        wanted = self.parse(request, history)
        searches = _results(messages, "search_items")
        if not searches:
            filters = {k: wanted[k] for k in ("category", "max_price", "exclude_genres", "min_rating") if wanted.get(k) is not None}
            calls = [_call("search_items", query="", filters={**filters, "genres": [wanted["genre"]]}, sort="popularity", limit=50)
                     if wanted["genre"] else "",
                     _call("search_items", query="", filters=filters, sort="popularity", limit=50)]
            return "Searching with the customer's constraints. " + "".join(calls) + "<execute/>"
        owned = {h["id"] for h in history}  # the "like X" example is in the history too
        picks: dict[str, dict[str, Any]] = {}
        for result in searches:
            for item in result["results"]:
                if item["id"] not in owned and len(picks) < wanted["k"]:
                    picks.setdefault(item["id"], item)
        reason = f"a popular {wanted['genre'] or 'pick'} that fits your constraints"
        return _answer(list(picks.values()), reason)

    @staticmethod
    def parse(request: str, history: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The constraints stated in a request (None where not stated) and the intended genre."""
        count = _COUNT.search(request)
        like = re.search(r'"([^"]+)"', request)
        price = re.search(r"(?:Under|budget is|Nothing over) \$(\d+(?:\.\d+)?)", request)
        avoid = re.search(r"(?:No|can't stand|avoid) ([\w-]+)", request)
        rating = re.search(r"rated (\d(?:\.\d)?) or higher|At least (\d(?:\.\d)?) stars", request)
        named = re.search(r"Preferably ([\w-]+)", request)
        genre = named.group(1) if named else None
        if genre is None and like:
            genre = next((h["genres"][0] for h in history if h["title"] == like.group(1)), None)
        if genre is None:
            genre = next((_VIBE_GENRE[w] for w in re.findall(r"[\w'-]+", request) if w in _VIBE_GENRE), None)
        return {
            "k": int(count.group(1)) if count else 3,
            "category": _SINGULAR[count.group(2)] if count else None,
            "max_price": float(price.group(1)) if price else None,
            "exclude_genres": [avoid.group(1)] if avoid and avoid.group(1) in GENRES else None,
            "min_rating": float(rating.group(1) or rating.group(2)) if rating else None,
            "like": like.group(1) if like else None,
            "genre": genre if genre in GENRES else None,
        }


BASELINES = {"random": RandomRecommender, "popularity": PopularityRecommender, "constraint-aware": ConstraintAwareRecommender}
