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

__all__ = ["cache_kwargs", "LayerKV", "PrefixStore", "cache_from_layers", "growing_layer", "cache_layers", "weights_version"]

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


def cache_from_layers(layers: Sequence[tuple[torch.Tensor, torch.Tensor]], length: int | None = None) -> Any:
    """A `DynamicCache` holding `layers` (keys, values `[B, kv_heads, L, head_dim]` per layer).

    With `length` < L, the cache holds the first `length` positions and the rest of each tensor is room that
    the next positions are written into in place (`growing_layer`), instead of `DynamicLayer` concatenating
    the whole cache into a new tensor at every generated token."""
    from transformers import DynamicCache

    cache = DynamicCache()
    if length is not None and hasattr(cache, "layers") and hasattr(cache, "layer_class_to_replicate"):
        layer_class = growing_layer()
        cache.layers = [layer_class.holding(keys, values, length) for keys, values in layers]
        cache.layer_class_to_replicate = None
        return cache
    for index, (keys, values) in enumerate(layers):
        if length is not None:
            keys, values = keys[:, :, :length], values[:, :, :length]
        cache.update(keys, values, index)
    return cache


@lru_cache(maxsize=None)
def growing_layer() -> type:
    """`GrowingLayer`, a `DynamicLayer` over a buffer with room to grow (built on first use: importing this
    module does not import transformers)."""
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """`update` writes the new positions into the buffer's room (and reallocates, doubling, only when it
        is full); `keys` / `values` are views of the filled part."""

        @classmethod
        def holding(cls, keys: torch.Tensor, values: torch.Tensor, length: int) -> "GrowingLayer":
            layer = cls()
            layer.device, layer.is_initialized = keys.device, True
            layer._keys, layer._values, layer.length = keys, values, length
            layer._views()
            return layer

        def _views(self) -> None:
            self.keys = self._keys[:, :, : self.length]
            self.values = self._values[:, :, : self.length]

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            self.device, self.is_initialized = key_states.device, True
            self._keys, self._values, self.length = key_states[:, :, :0], value_states[:, :, :0], 0

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self.length + key_states.shape[-2]
            if end > self._keys.shape[-2]:
                room = max(end, 2 * self._keys.shape[-2])
                for name, new in (("_keys", key_states), ("_values", value_states)):
                    grown = new.new_empty(new.shape[0], new.shape[1], room, new.shape[3])
                    grown[:, :, : self.length] = getattr(self, name)[:, :, : self.length]
                    setattr(self, name, grown)
            self._keys[:, :, self.length : end] = key_states
            self._values[:, :, self.length : end] = value_states
            self.length = end
            self._views()
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length if self.is_initialized else 0

        def reset(self) -> None:
            self.length = 0
            super().reset()

        def crop(self, tokens_to_remove: int) -> None:
            if tokens_to_remove > 0:
                raise ValueError("crop takes a negative number of tokens to remove")
            if self.is_initialized and tokens_to_remove:
                self.length = max(0, self.length + tokens_to_remove)
                self._views()

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self.is_initialized:
                self._keys = self._keys.repeat_interleave(repeats, dim=0)
                self._values = self._values.repeat_interleave(repeats, dim=0)
                self._views()

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self.is_initialized:
                self._keys, self._values = self._keys[indices], self._values[indices]
                self._views()

        def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
            self.batch_select_indices(beam_idx)

    return GrowingLayer


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
