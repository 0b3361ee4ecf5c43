"""The two learned reward models, small enough to train on a CPU in seconds.

- `BiEncoder`: query–item relevance. Each side is a bag of hashed word unigrams and bigrams (so
  "no horror" is one feature, not "horror") → mean embedding → linear → L2-normalised vector; the
  relevance logit is `scale·cos(q, i) + bias`. Separate towers, because requests and blurbs use
  different words for the same genre.
- `ClickModel`: user-behaviour prediction. An MLP over `click_features` (the user's history profile
  crossed with the item's attributes) with two logits: click and order (purchase).
"""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np
import torch
from torch import nn

from agentenv.envs.recommend.catalog import GENRES, Catalog, tokenize

__all__ = ["hash_tokens", "BiEncoder", "ClickModel", "click_features", "N_CLICK_FEATURES"]


MAX_GRAMS = 128  # hashed n-grams kept per text


def hash_tokens(texts: Sequence[str], buckets: int) -> torch.Tensor:
    """Stable bucket ids `[len(texts), L]` of each text's word unigrams then bigrams, padded with `buckets`.

    `L` is the longest text's n-gram count (at most `MAX_GRAMS`); the padding id is ignored by the towers.
    """
    rows = []
    for text in texts:
        words = tokenize(text)
        grams = words + [f"{a} {b}" for a, b in zip(words, words[1:])]
        rows.append([zlib.crc32(g.encode()) % buckets for g in grams[:MAX_GRAMS]])
    ids = np.full((len(rows), max([len(r) for r in rows] + [1])), buckets, dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    return torch.from_numpy(ids)


class _Tower(nn.Module):
    def __init__(self, buckets: int, dim: int):
        super().__init__()
        self.bag = nn.EmbeddingBag(buckets + 1, dim, mode="mean", padding_idx=buckets)
        self.proj = nn.Linear(dim, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """`ids [batch, L]` (from `hash_tokens`) → `[batch, dim]` unit vectors."""
        return nn.functional.normalize(self.proj(torch.tanh(self.bag(ids))), dim=-1)


class BiEncoder(nn.Module):
    """Query and item towers; `forward` gives the relevance logit `[batch]` of aligned (query, item) pairs."""

    def __init__(self, buckets: int = 4096, dim: int = 48):
        super().__init__()
        self.buckets = buckets
        self.query = _Tower(buckets, dim)
        self.item = _Tower(buckets, dim)
        self.scale = nn.Parameter(torch.tensor(5.0))
        self.bias = nn.Parameter(torch.tensor(0.0))

    def forward(self, query_ids: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
        """`query_ids [batch, Lq]`, `item_ids [batch, Li]` → logits `[batch]`."""
        return self.scale * (self.query(query_ids) * self.item(item_ids)).sum(-1) + self.bias

    @torch.no_grad()
    def encode(self, texts: Sequence[str], side: str) -> np.ndarray:
        """Unit vectors `[len(texts), dim]` from the "query" or "item" tower."""
        tower = self.query if side == "query" else self.item
        return tower(hash_tokens(texts, self.buckets)).numpy()

    def probability(self, query_vec: np.ndarray, item_vecs: np.ndarray) -> np.ndarray:
        """P(relevant) `[n]` of one query vector `[dim]` against item vectors `[n, dim]`."""
        logits = float(self.scale.detach()) * (item_vecs @ query_vec) + float(self.bias.detach())
        return 1.0 / (1.0 + np.exp(-logits))


N_CLICK_FEATURES = 2 * len(GENRES) + 7


def click_features(catalog: Catalog, history: Sequence[int], items: Sequence[int] | np.ndarray) -> np.ndarray:
    """Features `[len(items), N_CLICK_FEATURES]` of one user (catalogue rows of their history) × items.

    Per item: genres ⊙ the user's genre profile (mean genre vector of the history), the item's genres,
    cosine(genres, profile), the share of the history in the item's category, the item's log price
    relative to the history's mean log price (and its positive part), rating, log popularity, history size.
    """
    items = np.asarray(items, dtype=int)
    hist = np.asarray(history, dtype=int)
    genres = catalog.genre_matrix[items]
    if len(hist):
        profile = catalog.genre_matrix[hist].mean(axis=0)
        share = (catalog.category_index[hist][None, :] == catalog.category_index[items][:, None]).mean(axis=1)
        mean_log_price = float(np.log(catalog.prices[hist]).mean())
    else:
        profile, share, mean_log_price = np.zeros(len(GENRES), np.float32), np.zeros(len(items)), float(np.log(20.0))
    cosine = genres @ profile / (np.linalg.norm(genres, axis=1) * np.linalg.norm(profile) + 1e-6)
    rel_price = np.log(catalog.prices[items]) - mean_log_price
    columns = [cosine, share, rel_price, np.maximum(rel_price, 0.0), catalog.ratings[items] - 3.5,
               catalog.log_popularity[items] - 4.0, np.full(len(items), len(hist) / 20.0)]
    return np.concatenate([genres * profile, genres, np.stack(columns, axis=1)], axis=1).astype(np.float32)


class ClickModel(nn.Module):
    """MLP `[n, N_CLICK_FEATURES] → [n, 2]` logits of (click, order)."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(N_CLICK_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)

    @torch.no_grad()
    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """`[n, 2]` probabilities of (click, order)."""
        return torch.sigmoid(self.net(torch.from_numpy(features))).numpy()
