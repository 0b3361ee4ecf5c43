"""Train and evaluate the learned scorers; cache the default ones under `~/.cache/agentenv/recommend`.

The default models are trained at first use, deterministically (fixed seeds) in a few seconds, on data
synthesized from a training catalogue that no env uses by default (seed 1001), and evaluated on users
and requests drawn from a fresh seed. Training at first use rather than shipping weights keeps binary
blobs out of the repository and can never go stale: the cache key is a hash of every config field
and `MODEL_VERSION`, so changing the simulator or a hyper-parameter retrains. `AGENTENV_CACHE_DIR`
moves the cache.

Command line (train on real or synthesized files in the `data.py` layout, print held-out metrics):

    python -m agentenv.envs.recommend.train --synthesize DIR        # write a synthetic dataset
    python -m agentenv.envs.recommend.train --data DIR [--eval DIR] --out MODELS_DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from agentenv.envs.recommend.catalog import generate_catalog, tokenize
from agentenv.envs.recommend.data import Dataset, read_dataset, synthesize, write_dataset
from agentenv.envs.recommend.models import BiEncoder, ClickModel, click_features, hash_tokens

__all__ = ["RelevanceConfig", "BehaviourConfig", "DataConfig", "train_relevance", "train_click_model",
           "evaluate_relevance", "evaluate_click_model", "auc", "lexical_overlap", "default_relevance_model",
           "default_click_model", "default_datasets", "cache_dir"]

MODEL_VERSION = 1


@dataclass(frozen=True)
class DataConfig:
    """The synthetic training and held-out data of the default models."""

    catalog_items: int = 600
    catalog_seed: int = 1001
    n_users: int = 600
    train_seed: int = 1
    eval_seed: int = 2


@dataclass(frozen=True)
class RelevanceConfig:
    buckets: int = 4096
    dim: int = 48
    epochs: int = 8
    batch_size: int = 256
    lr: float = 0.01
    seed: int = 0


@dataclass(frozen=True)
class BehaviourConfig:
    hidden: int = 32
    steps: int = 400
    lr: float = 0.02
    weight_decay: float = 1e-4
    seed: int = 0


def auc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """ROC AUC (Mann–Whitney, ties count half); NaN when only one class is present."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def lexical_overlap(query: str, item: str) -> float:
    """The lexical baseline: cosine of the two texts' word sets."""
    q, i = set(tokenize(query)), set(tokenize(item))
    return len(q & i) / np.sqrt(max(len(q), 1) * max(len(i), 1))


@contextmanager
def _one_thread():
    """Train on one thread: these models are tiny, and on a busy 2-core machine torch's thread pool made a
    step 30× slower (250 ms vs 8 ms measured for a 24k×27 MLP step)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_relevance(rows: Sequence[dict[str, Any]], config: RelevanceConfig = RelevanceConfig()) -> BiEncoder:
    """Fit a `BiEncoder` to `{"query", "item", "label"}` rows with binary cross-entropy."""
    if not rows:
        raise ValueError("no query–item relevance rows to train on")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = BiEncoder(config.buckets, config.dim)
    texts = sorted({r["query"] for r in rows} | {r["item"] for r in rows})
    ids = hash_tokens(texts, config.buckets)  # hashed once; batches are row gathers
    position = {t: i for i, t in enumerate(texts)}
    queries = torch.tensor([position[r["query"]] for r in rows])
    items = torch.tensor([position[r["item"]] for r in rows])
    labels = torch.tensor([float(r["label"]) for r in rows])
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    with _one_thread():
        for _ in range(config.epochs):
            for batch in np.array_split(rng.permutation(len(rows)), max(1, len(rows) // config.batch_size)):
                batch = torch.from_numpy(batch)
                logits = model(ids[queries[batch]], ids[items[batch]])
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return model.eval()


def evaluate_relevance(model: BiEncoder, rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Held-out AUC and accuracy (threshold 0.5) of the model, and the AUC of `lexical_overlap`."""
    labels = np.array([r["label"] for r in rows])
    with torch.no_grad():
        probs = torch.sigmoid(model(hash_tokens([r["query"] for r in rows], model.buckets),
                                    hash_tokens([r["item"] for r in rows], model.buckets))).numpy()
    lexical = [lexical_overlap(r["query"], r["item"]) for r in rows]
    return {"pairs": len(rows), "auc": auc(probs, labels), "accuracy": float(((probs > 0.5) == labels).mean()),
            "lexical_auc": auc(lexical, labels)}


def _behaviour_arrays(dataset: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features `[n, F]`, labels `[n, 2]` (click, order) and user index `[n]` of the behaviour rows."""
    catalog = dataset.catalog
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in dataset.behaviour:
        by_user[row["user_id"]].append(row)
    features, labels, users = [], [], []
    for u, rows in enumerate(by_user.values()):
        history = [catalog.index[i] for i in rows[0]["history"] if i in catalog.index]
        features.append(click_features(catalog, history, [catalog.index[r["item_id"]] for r in rows]))
        labels.append([[r["click"], r.get("order", 0)] for r in rows])
        users.append(np.full(len(rows), u))
    if not features:
        raise ValueError("no user-behaviour rows")
    return np.concatenate(features), np.concatenate(labels).astype(np.float32), np.concatenate(users)


def train_click_model(dataset: Dataset, config: BehaviourConfig = BehaviourConfig()) -> ClickModel:
    """Fit a `ClickModel` to the dataset's behaviour rows (full-batch Adam, BCE on click and order)."""
    torch.manual_seed(config.seed)
    features, labels, _ = _behaviour_arrays(dataset)
    x, y = torch.from_numpy(features), torch.from_numpy(labels)
    model = ClickModel(config.hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    with _one_thread():
        for _ in range(config.steps):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def evaluate_click_model(model: ClickModel, dataset: Dataset) -> dict[str, float]:
    """AUC of predicted click and order probabilities on the dataset's (held-out) behaviour rows."""
    features, labels, users = _behaviour_arrays(dataset)
    probs = model.probabilities(features)
    return {"rows": len(labels), "users": int(users.max()) + 1, "click_auc": auc(probs[:, 0], labels[:, 0]),
            "order_auc": auc(probs[:, 1], labels[:, 1])}


# -- default models: trained at first use, cached on disk -------------------------------------------


def cache_dir() -> Path:
    """`$AGENTENV_CACHE_DIR/recommend`, by default `~/.cache/agentenv/recommend`."""
    root = os.environ.get("AGENTENV_CACHE_DIR") or Path.home() / ".cache" / "agentenv"
    return Path(root) / "recommend"


def _cache_path(kind: str, *configs: Any) -> Path:
    key = json.dumps([MODEL_VERSION, kind, *(dataclasses.asdict(c) for c in configs)], sort_keys=True)
    return cache_dir() / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


@lru_cache(maxsize=2)
def default_datasets(data: DataConfig = DataConfig()) -> tuple[Dataset, Dataset]:
    """(train, held-out) synthetic datasets on the training catalogue; held-out users/requests are new."""
    catalog = generate_catalog(data.catalog_items, data.catalog_seed)
    return (synthesize(catalog, data.n_users, seed=data.train_seed),
            synthesize(catalog, data.n_users // 3, seed=data.eval_seed))


def _load_or_train(kind: str, model: torch.nn.Module, train, *configs: Any) -> torch.nn.Module:
    path = _cache_path(kind, *configs)
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    trained = train()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(trained.state_dict(), tmp)
    os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the whole new one
    return trained


@lru_cache(maxsize=2)
def default_relevance_model(config: RelevanceConfig = RelevanceConfig(), data: DataConfig = DataConfig()) -> BiEncoder:
    """The default relevance model (loaded from the cache, or trained and cached)."""
    return _load_or_train("relevance", BiEncoder(config.buckets, config.dim),
                          lambda: train_relevance(default_datasets(data)[0].relevance, config), config, data)


@lru_cache(maxsize=2)
def default_click_model(config: BehaviourConfig = BehaviourConfig(), data: DataConfig = DataConfig()) -> ClickModel:
    """The default behaviour model (loaded from the cache, or trained and cached)."""
    return _load_or_train("behaviour", ClickModel(config.hidden), lambda: train_click_model(default_datasets(data)[0], config),
                          config, data)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m agentenv.envs.recommend.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--synthesize", metavar="DIR", help="write the default synthetic train set to DIR and exit")
    parser.add_argument("--data", metavar="DIR", help="train on this dataset directory (default: synthesize)")
    parser.add_argument("--eval", metavar="DIR", help="held-out dataset directory (default: the synthetic held-out set)")
    parser.add_argument("--out", metavar="DIR", help="save relevance.pt and behaviour.pt here")
    args = parser.parse_args(argv)
    if args.synthesize:
        print(write_dataset(default_datasets()[0], args.synthesize))
        return {}
    train = read_dataset(args.data) if args.data else default_datasets()[0]
    held_out = read_dataset(args.eval) if args.eval else default_datasets()[1]
    report: dict[str, Any] = {}
    t0 = time.perf_counter()
    relevance = train_relevance(train.relevance)
    report["relevance"] = {**evaluate_relevance(relevance, held_out.relevance), "train_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    click = train_click_model(train)
    report["behaviour"] = {**evaluate_click_model(click, held_out), "train_s": time.perf_counter() - t0}
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        torch.save(relevance.state_dict(), Path(args.out) / "relevance.pt")
        torch.save(click.state_dict(), Path(args.out) / "behaviour.pt")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
