"""The item catalogue of Recommend-v0: seeded media items, their text, and filtered keyword search.

A synthetic catalogue mixes six media categories; every item has one to three genres from a fixed list.
Titles and blurbs are written from genre-specific motif words, while users ask for a genre with *vibe*
words ("something spooky") or name it outright: text relevance is learnable but not a bag-of-words
match, which is what the learned relevance scorer is for. Items carry a hidden `quality` that drives
their rating, popularity and the simulated users' clicks.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = ["GENRES", "VIBES", "MOTIFS", "CATEGORIES", "SORTS", "Item", "Catalog", "generate_catalog", "tokenize", "pick",
           "describe", "sample_price"]

GENRES = ("action", "comedy", "drama", "horror", "romance", "sci-fi", "fantasy", "mystery", "documentary", "family")
CATEGORIES = ("movie", "book", "video game", "board game", "comic", "tv series")

# How users ask for a genre without naming it.
VIBES: dict[str, tuple[str, ...]] = {
    "action": ("explosive", "adrenaline-fuelled", "fast-paced", "hard-hitting"),
    "comedy": ("funny", "hilarious", "light-hearted", "witty"),
    "drama": ("moving", "emotional", "serious", "heartfelt"),
    "horror": ("scary", "spooky", "creepy", "terrifying"),
    "romance": ("romantic", "swoon-worthy", "sweet", "passionate"),
    "sci-fi": ("futuristic", "spacey", "mind-bending", "high-tech"),
    "fantasy": ("magical", "epic", "enchanting", "mythical"),
    "mystery": ("puzzling", "suspenseful", "twisty", "whodunit"),
    "documentary": ("educational", "factual", "informative", "true-story"),
    "family": ("kid-friendly", "wholesome", "all-ages", "cosy"),
}
# The words a genre's titles and blurbs are made of.
MOTIFS: dict[str, tuple[str, ...]] = {
    "action": ("heist", "mercenary", "chase", "showdown", "commando", "bullet", "rogue", "strike"),
    "comedy": ("mishap", "prank", "blunder", "roommate", "sitcom", "goof", "banter", "caper"),
    "drama": ("family secret", "grief", "courtroom", "reunion", "letters", "inheritance", "promise", "exile"),
    "horror": ("haunting", "ghost", "crypt", "nightmare", "curse", "asylum", "possession", "graveyard"),
    "romance": ("love letter", "first kiss", "wedding", "sweetheart", "affair", "courtship", "valentine", "honeymoon"),
    "sci-fi": ("starship", "android", "galaxy", "time machine", "colony", "cyborg", "wormhole", "orbit"),
    "fantasy": ("dragon", "wizard", "kingdom", "sorcery", "elf", "prophecy", "enchanted sword", "quest"),
    "mystery": ("detective", "murder", "clue", "alibi", "suspect", "cold case", "locked room", "inspector"),
    "documentary": ("history", "nature", "science", "biography", "expedition", "wildlife", "investigation", "archive"),
    "family": ("puppy", "treehouse", "birthday", "grandma", "summer camp", "playground", "picnic", "bedtime"),
}
_ADJECTIVES = ("Last", "Silent", "Golden", "Broken", "Hidden", "Midnight", "Crimson", "Lost", "Little", "Endless", "Northern", "Second")
_PRICE_MEDIAN = {"movie": 12.0, "book": 15.0, "video game": 40.0, "board game": 38.0, "comic": 9.0, "tv series": 25.0}
_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens; hyphenated words stay whole ("sci-fi")."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class Item:
    """One catalogue item. `quality` is hidden from agents (it drives rating, popularity and clicks)."""

    id: str
    title: str
    category: str
    genres: tuple[str, ...]
    price: float
    rating: float
    year: int
    popularity: int
    description: str
    quality: float = 0.0

    def summary(self) -> dict[str, Any]:
        """What a search result shows."""
        return {"id": self.id, "title": self.title, "category": self.category, "genres": list(self.genres),
                "price": self.price, "rating": self.rating}

    def public(self) -> dict[str, Any]:
        """Everything an agent may see (`get_item`)."""
        return {**self.summary(), "year": self.year, "popularity": self.popularity, "description": self.description}

    @property
    def text(self) -> str:
        """The text a relevance model reads: title, category, genres, blurb (no price)."""
        return f"{self.title}. {self.category}. {', '.join(self.genres)}. {self.description}"


@dataclass
class Catalog:
    """Items plus the arrays the simulator, scorers and search read.

    Arrays (N items, G = len(GENRES), C = len(categories)): `genre_matrix [N, G]` 0/1, `category_index [N]`,
    `prices [N]`, `ratings [N]`, `log_popularity [N]`, `quality [N]`.
    """

    items: list[Item]
    categories: tuple[str, ...] = CATEGORIES
    name: str = "synthetic"
    by_id: dict[str, Item] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.items:
            raise ValueError("a catalog needs at least one item")
        self.by_id = {item.id: item for item in self.items}
        self.index = {item.id: i for i, item in enumerate(self.items)}
        genre_pos = {g: j for j, g in enumerate(GENRES)}
        cat_pos = {c: j for j, c in enumerate(self.categories)}
        self.genre_matrix = np.zeros((len(self.items), len(GENRES)), dtype=np.float32)
        for i, item in enumerate(self.items):
            if item.category not in cat_pos or not set(item.genres) <= genre_pos.keys():
                raise ValueError(f"item {item.id}: category must be one of {self.categories} and genres from {GENRES}")
            self.genre_matrix[i, [genre_pos[g] for g in item.genres]] = 1.0
        self.category_index = np.array([cat_pos[item.category] for item in self.items])
        self.prices = np.array([item.price for item in self.items])
        self.ratings = np.array([item.rating for item in self.items])
        self.log_popularity = np.log1p([item.popularity for item in self.items])
        self.quality = np.array([item.quality for item in self.items])
        self._build_index()

    def __len__(self) -> int:
        return len(self.items)

    def _build_index(self) -> None:
        postings: dict[str, list[int]] = {}
        for i, item in enumerate(self.items):
            for token in set(tokenize(item.text)):
                postings.setdefault(token, []).append(i)
        n = len(self.items)
        self._postings = {t: np.array(ix) for t, ix in postings.items()}
        self._idf = {t: math.log(1 + n / len(ix)) for t, ix in postings.items()}

    def filter_mask(self, filters: dict[str, Any]) -> np.ndarray:
        """Boolean mask `[N]` of the items that pass `filters`; unknown keys or bad values raise ValueError."""
        unknown = set(filters) - _FILTER_KEYS
        if unknown:
            raise ValueError(f"unknown filter(s) {sorted(unknown)}; use {sorted(_FILTER_KEYS)}")
        mask = np.ones(len(self.items), dtype=bool)
        if "category" in filters:
            category = str(filters["category"]).lower()
            if category not in self.categories:
                raise ValueError(f"unknown category {category!r}; categories: {list(self.categories)}")
            mask &= self.category_index == self.categories.index(category)
        for key, array, keep in (("max_price", self.prices, np.less_equal), ("min_price", self.prices, np.greater_equal),
                                 ("min_rating", self.ratings, np.greater_equal)):
            if key in filters:
                value = filters[key]
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"filter {key!r} must be a number")
                mask &= keep(array, value)
        for key, want in (("genres", True), ("exclude_genres", False)):
            if key in filters:
                columns = [GENRES.index(g) for g in _genre_list(filters[key], key)]
                hit = self.genre_matrix[:, columns].sum(axis=1) > 0 if columns else np.zeros(len(self.items), bool)
                mask &= hit if want else ~hit
        return mask

    def search(self, query: str = "", filters: dict[str, Any] | None = None, sort: str = "relevance",
               limit: int = 10, offset: int = 0) -> tuple[int, list[Item]]:
        """Items matching `filters`, ranked by `sort`; returns (total matches, the requested page).

        "relevance" ranks by summed IDF of the query words an item's text contains (ties keep catalogue
        order); "popularity", "rating" rank high first; "price" ranks cheap first.
        """
        if sort not in SORTS:
            raise ValueError(f"sort must be one of {list(SORTS)}")
        mask = self.filter_mask(filters or {})
        if sort == "relevance":
            key = np.zeros(len(self.items))
            for token in set(tokenize(query)):
                if token in self._postings:
                    key[self._postings[token]] -= self._idf[token]
        else:
            key = {"popularity": -self.log_popularity, "rating": -self.ratings, "price": self.prices}[sort]
        matches = np.flatnonzero(mask)
        order = matches[np.argsort(key[matches], kind="stable")]
        page = order[max(offset, 0): max(offset, 0) + max(limit, 0)]
        return len(matches), [self.items[i] for i in page]


SORTS = ("relevance", "popularity", "rating", "price")
_FILTER_KEYS = {"category", "max_price", "min_price", "min_rating", "genres", "exclude_genres"}


def _genre_list(value: Any, key: str) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ValueError(f"filter {key!r} must be a genre or a list of genres")
    unknown = [v for v in values if v.lower() not in GENRES]
    if unknown:
        raise ValueError(f"unknown genre(s) {unknown}; genres: {list(GENRES)}")
    return [v.lower() for v in values]


def pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    """One element of `options`, uniformly."""
    return options[int(rng.integers(len(options)))]


def _title(rng: np.random.Generator, genre: str, taken: set[str]) -> str:
    noun = pick(rng, MOTIFS[genre]).title()
    title = f"The {pick(rng, _ADJECTIVES)} {noun}" if rng.random() < 0.5 else f"{noun} of the {pick(rng, _ADJECTIVES)} {pick(rng, MOTIFS[genre]).title()}"
    base, n = title, 2
    while title in taken:  # titles name items in requests ("something like X"), so they must be unique
        title, n = f"{base} {n}", n + 1
    taken.add(title)
    return title


def describe(rng: np.random.Generator, category: str, genres: Sequence[str]) -> str:
    """A one-sentence blurb made of the genres' motif words."""
    motifs = [pick(rng, MOTIFS[g]) for g in genres] + [pick(rng, MOTIFS[genres[0]])]
    return f"A {category} about {' and '.join(dict.fromkeys(motifs))}."


def sample_price(rng: np.random.Generator, category: str) -> float:
    """A shop-like price (x.99) around the category's median."""
    return max(1.99, round(float(np.exp(rng.normal(np.log(_PRICE_MEDIAN[category]), 0.5)))) - 0.01)


def generate_catalog(n_items: int = 600, seed: int = 0) -> Catalog:
    """A seeded synthetic catalogue of `n_items` items (same seed, same catalogue, byte for byte)."""
    if n_items < 20:
        raise ValueError("n_items must be at least 20")
    rng = np.random.default_rng(seed)
    taken: set[str] = set()
    items = []
    for i in range(n_items):
        category = pick(rng, CATEGORIES)
        n_genres = int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
        genres = tuple(str(g) for g in rng.choice(GENRES, size=n_genres, replace=False))
        quality = float(rng.normal())
        items.append(Item(
            id=f"I{i:04d}",
            title=_title(rng, genres[0], taken),
            category=category,
            genres=genres,
            price=sample_price(rng, category),
            rating=float(np.clip(round(3.5 + 0.6 * quality + rng.normal(0, 0.3), 1), 1.0, 5.0)),
            year=int(rng.integers(1975, 2027)),
            popularity=int(np.exp(4.0 + 1.0 * quality + rng.normal(0, 0.5))),
            description=describe(rng, category, genres),
            quality=quality,
        ))
    return Catalog(items, name=f"synthetic-{n_items}-{seed}")
