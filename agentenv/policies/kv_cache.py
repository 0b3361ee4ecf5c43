"""KV-cache helpers: the keyword a model's forward takes its cache by, and `PrefixStore`, the prefix cache
that lets `HFPolicy` continue a sequence it has already run instead of running it again.

`cache_kwargs`: `cache` in transformers >= 5.2x, where `past_key_values` warns on every call (and goes in
5.40), `past_key_values` before.

`PrefixStore` keeps, per remembered token sequence, the keys and values every layer computed for it (one
`[kv_heads, n, head_dim]` pair per layer, no padding, positions 0…n−1). A prompt reuses the longest prefix
it shares with any remembered sequence; the rest is run as usual. Causal attention makes the keys and
values of positions 0…k−1 depend on the ids 0…k−1 only, so reusing them is exact (up to float rounding
of the batched matmuls) as long as the weights are those the sequence was run with — `HFPolicy` drops the
store when they change (see its docstring for the rule).
"""

from __future__ import annotations

import bisect
import inspect
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["cache_kwargs", "LayerKV", "PrefixStore", "cache_from_layers", "cache_layers", "weights_version"]

LayerKV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values `[kv_heads, n, head_dim]`


@lru_cache(maxsize=None)
def _cache_keyword(forward_owner: type) -> str:
    return "cache" if "cache" in inspect.signature(forward_owner.forward).parameters else "past_key_values"


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """`{"cache": cache}` or `{"past_key_values": cache}`, whichever `model.forward` takes."""
    return {_cache_keyword(type(model)): cache}


def cache_layers(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) `[B, kv_heads, L, head_dim]` of every layer of a `DynamicCache` (any transformers 4.5x/5.x)."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))


def cache_from_layers(layers: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """A `DynamicCache` holding `layers` (keys, values `[B, kv_heads, L, head_dim]` per layer)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for index, (keys, values) in enumerate(layers):
        cache.update(keys, values, index)
    return cache


def weights_version(*models: Any) -> tuple:
    """A key that changes whenever a parameter or buffer of `models` is modified in place (`optimizer.step()`,
    `load_state_dict`, `p.copy_(…)`, `p.add_(…)`: each bumps the tensor's version counter) or replaced (a new
    storage, dtype or device). Writes through `p.data` bypass the version counter: call `clear_cache()` then."""
    key = []
    for model in models:
        if model is None:
            continue
        for tensor in list(model.parameters()) + list(model.buffers()):
            key.append((tensor.data_ptr(), tensor._version, tensor.dtype, tensor.shape))
    return tuple(key)


@dataclass
class _Entry:
    ids: list[int]
    kv: LayerKV  # covers ids[:n] with n = kv[0][0].shape[1] == len(ids)


class PrefixStore:
    """Remembered sequences (ids + per-layer keys/values) and longest-common-prefix look-up.

    Args:
        max_tokens: the most positions kept in all entries together; `add` refuses an entry past it.
    """

    def __init__(self, max_tokens: int):
        self.max_tokens = max_tokens
        self.entries: list[_Entry] = []
        self.tokens = 0

    def __len__(self) -> int:
        return len(self.entries)

    def clear(self) -> None:
        self.entries, self.tokens = [], 0

    def add(self, ids: Sequence[int], kv: LayerKV) -> bool:
        """Remember `ids` with its keys/values; False (nothing kept) if it would pass `max_tokens`."""
        n = len(ids)
        if n == 0 or self.tokens + n > self.max_tokens:
            return False
        if kv[0][0].shape[1] != n:
            raise ValueError(f"keys cover {kv[0][0].shape[1]} positions, ids {n}")
        self.entries.append(_Entry(list(ids), kv))
        self.tokens += n
        return True

    def match(self, prompts: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
        """For each prompt, `(entry index, k)`: the entry sharing the longest prefix with it and that prefix's
        length k (capped at len(prompt) − 1, so at least one token is left to run); (−1, 0) when none.

        The entries are sorted once; the longest common prefix with a query is attained by one of its two
        neighbours in lexicographic order, so each look-up is a binary search plus two comparisons."""
        if not self.entries or not prompts:
            return [(-1, 0)] * len(prompts)
        order = sorted(range(len(self.entries)), key=lambda i: self.entries[i].ids)
        keys = [self.entries[i].ids for i in order]
        out = []
        for prompt in prompts:
            query = list(prompt)
            at = bisect.bisect_left(keys, query)
            best, k = -1, 0
            for j in (at - 1, at):
                if 0 <= j < len(keys):
                    n = _common_prefix(keys[j], query)
                    if n > k:
                        best, k = order[j], n
            k = min(k, len(query) - 1)
            out.append((best, k) if k > 0 else (-1, 0))
        return out


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    differs = np.asarray(a[:n]) != np.asarray(b[:n])
    return int(differs.argmax())
