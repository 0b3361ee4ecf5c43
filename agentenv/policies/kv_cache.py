"""The keyword a model's forward takes its KV cache by: `cache` in transformers >= 5.2x, where
`past_key_values` warns on every call (and goes in 5.40), `past_key_values` before."""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any

__all__ = ["cache_kwargs"]


@lru_cache(maxsize=None)
def _cache_keyword(forward_owner: type) -> str:
    return "cache" if "cache" in inspect.signature(forward_owner.forward).parameters else "past_key_values"


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """`{"cache": cache}` or `{"past_key_values": cache}`, whichever `model.forward` takes."""
    return {_cache_keyword(type(model)): cache}
