"""Training data for the learned scorers, in a RecRM-Bench-style layout: one JSONL file per sub-task.

RecRM-Bench (arXiv 2605.11874) ships one sub-database per reward dimension; its exact column names
could not be recovered offline (research notes §2.1), so this layout is ours. A dataset directory holds

- `items.jsonl`: `{"id", "title", "category", "genres": [str], "price", "rating", "year", "popularity", "description"}`
- `query_item_relevance.jsonl`: `{"query": str, "item_id": str, "item": str (item text), "label": 0|1}`
- `user_behavior.jsonl`: `{"user_id": str, "history": [item id], "item_id": str, "click": 0|1, "order": 0|1}`

`synthesize` writes such rows from the simulator (labels are ground truth by construction);
`read_dataset` reads a directory of real or synthesized files (genres must come from `GENRES`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from agentenv.envs.recommend.catalog import Catalog, Item
from agentenv.envs.recommend.requests import draw_request, is_relevant
from agentenv.envs.recommend.users import sample_user, simulate_impressions

__all__ = ["Dataset", "synthesize", "write_dataset", "read_dataset", "ITEMS_FILE", "RELEVANCE_FILE", "BEHAVIOUR_FILE"]

ITEMS_FILE = "items.jsonl"
RELEVANCE_FILE = "query_item_relevance.jsonl"
BEHAVIOUR_FILE = "user_behavior.jsonl"


@dataclass
class Dataset:
    """A catalogue plus relevance rows and behaviour rows (dicts in the layout above)."""

    catalog: Catalog
    relevance: list[dict[str, Any]]
    behaviour: list[dict[str, Any]]


def _relevance_rows(rng: np.random.Generator, catalog: Catalog, request, user_id: str) -> list[dict[str, Any]]:
    """Up to 3 relevant items, 3 same-category misses, 2 same-genre other-category misses and 2 random items."""
    relevant, near, off = [], [], []
    for item in catalog.items:
        if is_relevant(request, item):
            relevant.append(item)
        elif item.category == request.category:
            near.append(item)
        elif request.intent_genre in item.genres:
            off.append(item)
    picks: list[Item] = []
    for pool, n in ((relevant, 3), (near, 3), (off, 2), (catalog.items, 2)):
        picks += [pool[i] for i in rng.choice(len(pool), size=min(n, len(pool)), replace=False)] if pool else []
    return [{"query": request.text, "item_id": it.id, "item": it.text, "label": int(is_relevant(request, it)), "user_id": user_id}
            for it in picks]


def synthesize(catalog: Catalog, n_users: int = 600, requests_per_user: int = 3, impressions_per_user: int = 40,
               seed: int = 0) -> Dataset:
    """Simulate `n_users` new users on `catalog`: their requests give relevance rows, their impressions behaviour rows."""
    rng = np.random.default_rng(seed)
    relevance, behaviour = [], []
    for u in range(n_users):
        user = sample_user(rng, catalog, f"s{seed}-u{u}")
        for _ in range(requests_per_user):
            relevance += _relevance_rows(rng, catalog, draw_request(rng, user, catalog), user.id)
        history = [h.item_id for h in user.history]
        for row, action in simulate_impressions(user, catalog, rng, impressions_per_user):
            behaviour.append({"user_id": user.id, "history": history, "item_id": catalog.items[row].id,
                              "click": int(action != "ignore"), "order": int(action == "buy")})
    return Dataset(catalog, relevance, behaviour)


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_dataset(dataset: Dataset, directory: str | Path) -> Path:
    """Write the three JSONL files into `directory` (created if missing); returns the directory."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    items = ({k: v for k, v in it.__dict__.items() if k != "quality"} for it in dataset.catalog.items)
    _write_jsonl(out / ITEMS_FILE, items)
    _write_jsonl(out / RELEVANCE_FILE, dataset.relevance)
    _write_jsonl(out / BEHAVIOUR_FILE, dataset.behaviour)
    return out


def _read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{n}: not valid JSON ({exc})") from None
            missing = [k for k in required if not isinstance(row, dict) or k not in row]
            if missing:
                raise ValueError(f"{path}:{n}: missing field(s) {missing}; see agentenv.envs.recommend.data for the layout")
            rows.append(row)
    return rows


def read_dataset(directory: str | Path) -> Dataset:
    """Read a dataset directory (the layout in the module docstring); a missing sub-task file gives no rows."""
    root = Path(directory)
    if not (root / ITEMS_FILE).is_file():
        raise FileNotFoundError(f"{root / ITEMS_FILE} not found: a dataset directory needs {ITEMS_FILE}")
    fields = ("id", "title", "category", "genres", "price", "rating", "year", "popularity", "description")
    items = [Item(**{k: (tuple(r[k]) if k == "genres" else r[k]) for k in fields}) for r in _read_jsonl(root / ITEMS_FILE, fields)]
    categories = tuple(dict.fromkeys(it.category for it in items))
    catalog = Catalog(items, categories=categories, name=f"dataset:{root.resolve()}")
    relevance = _read_jsonl(root / RELEVANCE_FILE, ("query", "item", "label")) if (root / RELEVANCE_FILE).is_file() else []
    behaviour = (_read_jsonl(root / BEHAVIOUR_FILE, ("user_id", "history", "item_id", "click"))
                 if (root / BEHAVIOUR_FILE).is_file() else [])
    return Dataset(catalog, relevance, behaviour)
