"""Optional real data: MovieLens-100k (`u.item`, `u.data`, `u.user`) from a local directory as a catalogue and users.

The data is never downloaded or shipped (MovieLens terms forbid redistribution): pass the directory of
an ML-100k copy you have, e.g. `gym.make("agentenv/Recommend-v0", catalog="/data/ml-100k")`.

Mapping: every movie becomes an item of category "movie" whose genres are the ML genres folded into
`GENRES`; rating and popularity are the mean rating and the number of ratings; price and blurb are
synthesized (seeded) because ML has none; the hidden `quality` is the shrunk mean rating. Each ML
user becomes a `User` whose history is the movies they rated 4+ (5 = "buy"), and whose latent genre
affinity is estimated from their ratings, so the simulator's behaviour model stays meaningful.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from agentenv.envs.recommend.catalog import GENRES, Catalog, Item, describe, sample_price
from agentenv.envs.recommend.users import MAX_HISTORY, Interaction, User

__all__ = ["load_movielens", "ML_GENRES"]

# ML-100k's 19 genre flags, in file order, folded into our genres (None: dropped).
ML_GENRES = (None, "action", "action", "family", "family", "comedy", "mystery", "documentary", "drama", "fantasy",
             "mystery", "horror", "family", "mystery", "romance", "sci-fi", "mystery", "action", "action")


def _lines(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass the directory that holds MovieLens-100k's u.item, u.data and u.user")
    sep = "\t" if path.name == "u.data" else "|"
    return [line.split(sep) for line in path.read_text(encoding="latin-1").splitlines() if line.strip()]


def load_movielens(directory: str | Path, seed: int = 0) -> tuple[Catalog, list[User]]:
    """Catalogue and users from an ML-100k directory; `seed` fixes the synthesized prices, blurbs and budgets."""
    root = Path(directory)
    rng = np.random.default_rng(seed)
    ratings: dict[str, list[tuple[int, str, int]]] = defaultdict(list)  # user → (timestamp, item, rating)
    by_item: dict[str, list[int]] = defaultdict(list)
    for user_id, item_id, rating, timestamp in (row[:4] for row in _lines(root / "u.data")):
        ratings[user_id].append((int(timestamp), item_id, int(rating)))
        by_item[item_id].append(int(rating))
    global_mean = float(np.mean([r for rs in by_item.values() for r in rs])) if by_item else 3.5
    items = []
    for row in _lines(root / "u.item"):
        genres = tuple(dict.fromkeys(g for g, flag in zip(ML_GENRES, row[5:24]) if g and flag.strip() == "1"))
        if not genres:
            continue
        scores = by_item.get(row[0], [])
        shrunk = (sum(scores) + 5 * global_mean) / (len(scores) + 5)  # Bayesian mean: few ratings → near the global mean
        year = row[2][-4:]
        items.append(Item(id=f"M{row[0]}", title=row[1].strip(), category="movie", genres=genres, price=sample_price(rng, "movie"),
                          rating=round(float(np.mean(scores)), 1) if scores else round(global_mean, 1),
                          year=int(year) if year.isdigit() else 0, popularity=len(scores),
                          description=describe(rng, "movie", genres), quality=float((shrunk - global_mean) / 0.5)))
    catalog = Catalog(items, categories=("movie",), name=f"movielens:{root.resolve()}")
    ages = {row[0]: int(row[1]) for row in _lines(root / "u.user")}
    base_rate = catalog.genre_matrix.mean(axis=0) + 1e-3
    users = []
    for user_id, rows in sorted(ratings.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0):
        rows = sorted(r for r in rows if f"M{r[1]}" in catalog.index)
        if not rows:
            continue
        idx = [catalog.index[f"M{i}"] for _, i, _ in rows]
        scores = np.array([r for *_, r in rows], dtype=float)
        genres = catalog.genre_matrix[idx]
        share = genres.mean(axis=0)
        liking = (genres * (scores - scores.mean())[:, None]).sum(axis=0) / np.maximum(genres.sum(axis=0), 1.0)
        affinity = np.clip(np.log((share + 1e-3) / base_rate) + 2.0 * liking, -2.5, 2.5)
        history = [Interaction(f"M{i}", "buy" if r == 5 else "click") for _, i, r in rows if r >= 4][-MAX_HISTORY:]
        users.append(User(f"ml-{user_id}", ages.get(user_id, 30), affinity, np.ones(1),
                          budget=float(np.exp(rng.normal(np.log(12.0), 0.4))), price_sensitivity=float(rng.uniform(0.5, 2.0)),
                          history=history))
    if not users:
        raise ValueError(f"{root}: no ratings of known movies in u.data")
    return catalog, users
