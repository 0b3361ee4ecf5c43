"""The declared answer format of Recommend-v0 and its parser.

The agent ends with a JSON array inside `<answer></answer>`; each element is an object with

- required: `"id"` (catalogue id, string), `"reason"` (string), `"price"` (number), `"category"` (string);
- optional: `"title"` (string), `"genres"` (list of strings), `"rating"` (number).

Every stated field except `reason` is a factual claim the factual-consistency scorer checks against
the catalogue. A ```` ```json ```` fence around the array is tolerated. Parsing never raises: what is
wrong goes to `Recommendation.errors`, and the well-formed entries are kept.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Entry", "Recommendation", "parse_recommendation", "format_recommendation", "FORMAT_HELP", "MAX_ITEMS"]

MAX_ITEMS = 20
MAX_ANSWER_CHARS = 50_000
_NUMBER = (int, float)
_FIELDS: dict[str, tuple[type | tuple[type, ...], bool]] = {  # name → (JSON type, required)
    "id": (str, True), "reason": (str, True), "price": (_NUMBER, True), "category": (str, True),
    "title": (str, False), "genres": (list, False), "rating": (_NUMBER, False),
}
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)

FORMAT_HELP = (
    'Answer with a JSON array inside <answer></answer>, one object per item, best first: '
    '<answer>[{"id": "I0042", "reason": "why it fits the request", "price": 12.99, "category": "book"}]</answer>. '
    '"id", "reason", "price" and "category" are required and must match the catalogue; you may add "title", '
    '"genres" and "rating", which must match it too. Give exactly as many items as the user asked for.'
)


@dataclass(frozen=True)
class Entry:
    """One recommended item: its id, the agent's reason and the attributes it claims (`price`, `category`, ...)."""

    id: str
    reason: str
    claims: dict[str, Any]


@dataclass
class Recommendation:
    """A parsed answer: the well-formed entries in order and what was wrong with the rest."""

    entries: list[Entry] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def well_formed(self) -> bool:
        return bool(self.entries) and not self.errors


def _entry(value: Any, position: int) -> Entry | str:
    if not isinstance(value, dict):
        return f"item {position} is not a JSON object"
    for name, (kind, required) in _FIELDS.items():
        if name not in value:
            if required:
                return f"item {position} has no {name!r}"
            continue
        v = value[name]
        if not isinstance(v, kind) or isinstance(v, bool) or (name == "genres" and not all(isinstance(g, str) for g in v)):
            return f"item {position}: {name!r} has the wrong type ({type(v).__name__})"
    claims = {k: value[k] for k in _FIELDS if k in value and k not in ("id", "reason")}
    return Entry(value["id"], value["reason"], claims)


def parse_recommendation(answer: str) -> Recommendation:
    """Parse the text inside `<answer>`; see the module docstring for the format."""
    if not isinstance(answer, str):
        return Recommendation(errors=["the answer is not text"])
    if len(answer) > MAX_ANSWER_CHARS:
        return Recommendation(errors=[f"the answer is longer than {MAX_ANSWER_CHARS} characters"])
    text = answer.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return Recommendation(errors=[f"the answer is not valid JSON: {str(exc)[:120]}"])
    if not isinstance(value, list):
        return Recommendation(errors=["the answer must be a JSON array of item objects"])
    if not value:
        return Recommendation(errors=["the answer recommends no items"])
    rec = Recommendation()
    if len(value) > MAX_ITEMS:
        rec.errors.append(f"more than {MAX_ITEMS} items; the rest were ignored")
    for position, raw in enumerate(value[:MAX_ITEMS], start=1):
        parsed = _entry(raw, position)
        if isinstance(parsed, Entry):
            rec.entries.append(parsed)
        else:
            rec.errors.append(parsed)
    return rec


def format_recommendation(entries: list[dict[str, Any]]) -> str:
    """The `<answer>` text for a list of entry dicts (what a well-behaved agent writes)."""
    return f"<answer>{json.dumps(entries, ensure_ascii=False)}</answer>"
