"""HFPolicy: sample assistant turns from a Hugging Face causal LM, returning token ids and their log-probs.

Generation is a plain batched sampling loop: one prefill forward, then one forward per new token over the
batch with the KV cache (`DynamicCache`); rows that finish are dropped from the batch and the cache, so
short turns cost nothing once done. It returns the exact log-prob of each sampled token under the
distribution it was drawn from (after temperature and top-p) with no second pass.

Prefix cache (on by default; `prefix_cache=False` turns it off). The rollout resubmits every live episode's
whole sequence each turn, and a GRPO group's G samples share one prompt; the prefill does not redo that:

* identical prompts in one call (a group's first turn) run once and their keys/values are forked;
* the policy remembers the keys/values of every sequence it ran last call (prompt + generated ids); a prompt
  that extends one (the next turn: + the env's delta) runs only its new ids — any prompt reuses the longest
  prefix it shares with a remembered sequence, so different continuations of one prefix are handled;
* prompts with nothing remembered run their common stem once (the system prompt of a batch of tasks).

Memory: only the sequences of the last call are kept (a sequence not extended in the next call is dropped),
at most `cache_max_tokens` positions in all. Staleness rule: remembered keys/values are valid only for the
weights they were computed with. Every call compares a fingerprint of the model's parameters and buffers
(storage, version counter, dtype, shape — `kv_cache.weights_version`) with the one the store was filled
under and drops the store when it differs: `optimizer.step()`, `load_state_dict`, any in-place op on a
parameter, `.to(dtype/device)` all change it. Writing weights through `p.data` does not bump the version
counter: call `clear_cache()` after such a write. The Δlog p extrapolation path (`extrapolate_from`) and
models with non-attention layers (recurrent / linear attention in `config.layer_types`) run without it.

Measured on `agentenv train`'s default collect (ToolReasoning-v0 counting tasks, 8 tasks × 8 samples, 3
turns, 48 new tokens, tiny model): 61,934 prompt tokens were run for 8,988 generated; with the cache 6,014
(`stats`, `benchmarks/bench_grpo_step.py`). Reuse is exact up to float rounding of differently shaped
matmuls: greedy rollouts give the same tokens, sampled log-probs agree to ~1e-6 (`tests/test_hf_cache.py`).

The end-of-turn token (`<|im_end|>`) is kept in `token_ids` so that a rollout stores exactly what the model
produced; `text` is the decoded ids without it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch

from agentenv.errors import UserError
from agentenv.policies.base import Generation, Messages, TokenPolicy
from agentenv.policies.chat_tokens import ChatTokens
from agentenv.policies.kv_cache import LayerKV, PrefixStore, cache_from_layers, cache_kwargs, cache_layers, weights_version

__all__ = ["HFPolicy", "sample_tokens"]


def sample_tokens(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row and return it with its log-prob under the sampling distribution.

    Args:
        logits: `[B, V]` next-token logits.
        temperature: > 0 divides the logits; 0 means greedy (log-prob 0.0, the distribution is a point mass).
        top_p: nucleus mass in (0, 1]: keep the smallest set of most likely tokens whose mass reaches `top_p`.
    Returns:
        tokens `[B]` (int64) and logprobs `[B]` (float32).
    """
    logits = logits.float()
    if temperature == 0:
        tokens = logits.argmax(dim=-1)
        return tokens, torch.zeros_like(tokens, dtype=torch.float32)
    logits = logits / temperature
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p  # mass before this token already reaches top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    logp = logits.log_softmax(dim=-1)
    tokens = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


class HFPolicy(TokenPolicy):
    """A `Policy` backed by a `transformers` causal LM.

    Args:
        model_or_path: a loaded `PreTrainedModel`, a local model directory, or "tiny"/"small" for a random
            tiny model (`agentenv.policies.tiny`).
        tokenizer: a tokenizer with a chat template; default: loaded from the model directory, or the tiny one.
        device: "cpu" or "cuda" (the model is moved there).
        temperature, top_p: sampling; `temperature=0` is greedy.
        max_new_tokens: default limit of one turn.
        seed: seeds the sampling generator; the same seed and the same calls give the same tokens.
        dtype: the model's dtype (default: float32 on CPU, bfloat16 on CUDA when loading from a path; a
            given model keeps its dtype).
        extrapolate_from: Δlog p test-time extrapolation (arXiv 2603.22117, `plugins/direction.py`): this
            model is the RL checkpoint and `extrapolate_from` its base (a model or a directory). The base
            samples each token; where log p_RL(y) − log p_base(y) ≤ `extrapolate_tau` the token is
            resampled from log p_RL + α·Δlog p over the base's top `extrapolate_top_k`
            (α = `extrapolate_alpha`). Log-probs are those of the distribution each token was drawn from.
        prefix_cache: reuse keys/values across calls and within a call (module docstring); False runs every
            prompt from scratch, as before.
        cache_max_tokens: the most positions the prefix cache keeps between calls (over it, the rest of the
            sequences are simply run again next call).
        share_min_tokens: the shortest common stem worth a forward of its own.

    `stats` counts, since construction or `reset_stats()`: `calls`, `prompt_tokens` (ids submitted),
    `prefill_tokens` (ids actually run through the model before sampling), `prefill_padded_tokens` (the
    same with padding), `reused_tokens` (per row, ids whose keys/values came from the cache or a fork) and
    `generated_tokens`. `clear_cache()` forgets every remembered sequence.

    `generate(contexts)` renders chats and samples; `generate_ids(prompts)` continues token ids (the rollout
    uses it, so nothing is re-tokenized); `render_prompt` / `render_delta` give ids of a chat / of new
    messages continuing one.
    """

    def __init__(
        self,
        model_or_path: Any,
        tokenizer: Any = None,
        device: str = "cpu",
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 256,
        seed: int = 0,
        dtype: torch.dtype | str | None = None,
        extrapolate_from: Any = None,
        extrapolate_alpha: float = 0.1,
        extrapolate_tau: float = -0.35,
        extrapolate_top_k: int = 50,
        prefix_cache: bool = True,
        cache_max_tokens: int = 131_072,
        share_min_tokens: int = 16,
    ):
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        self.model, tokenizer = _load(model_or_path, tokenizer, device, dtype)
        self.chat = ChatTokens(tokenizer)
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.stop_ids = {self.chat.end_id}
        # ids the policy never emits (an audio model's input placeholders); sampled from the rest, renormalised
        self.suppressed_ids: list[int] = []
        self.base_model = _load(extrapolate_from, tokenizer, device, dtype)[0] if extrapolate_from is not None else None
        self.extrapolate = (extrapolate_alpha, extrapolate_tau, extrapolate_top_k)
        self.prefix_cache = prefix_cache
        self.cache_max_tokens = cache_max_tokens
        self.share_min_tokens = max(1, share_min_tokens)
        self._store = PrefixStore(cache_max_tokens)
        self._store_version: tuple | None = None
        self.reset_stats()

    def clear_cache(self) -> None:
        """Forget every remembered sequence: the next call runs its prompts from scratch."""
        self._store.clear()
        self._store_version = None

    def reset_stats(self) -> None:
        """Zero `stats` (see the class docstring)."""
        self.stats = {"calls": 0, "prompt_tokens": 0, "prefill_tokens": 0, "prefill_padded_tokens": 0,
                      "reused_tokens": 0, "generated_tokens": 0}

    def model_inputs(self, inputs: Sequence[Sequence[dict[str, Any]]]) -> dict[str, torch.Tensor]:
        """The forward's keyword inputs for the non-text items of B prompts (`Sample.inputs` of each). A text
        model takes none: it refuses them rather than drop them (`AudioLMPolicy` collates audio features)."""
        raise UserError(f"{type(self).__name__} reads text only and was given non-text model inputs "
                        f"({sorted({k for row in inputs for item in row for k in item})}); use a policy that takes them "
                        "(AudioLMPolicy for audio)")

    @torch.no_grad()
    def generate_ids(self, prompts: Sequence[Sequence[int]], max_new_tokens: int | Sequence[int] | None = None,
                     inputs: Sequence[Sequence[dict[str, Any]]] | None = None) -> list[Generation]:
        """Continue each prompt (token ids) until the end-of-turn id or its token limit.

        Args:
            prompts: B lists of ids (any lengths ≥ 1).
            max_new_tokens: one limit for all, one per prompt, or None for the policy's default.
            inputs: per prompt, the model inputs beside its ids (`Sample.inputs`: audio features for the
                placeholder ids in it); such prompts run without the prefix cache (ids alone do not say which
                audio they hold).
        Returns:
            B `Generation`s with `prompt_ids`, `token_ids` (end id included when emitted), `logprobs` (one per
            token id), `text` and `finish_reason` ("stop" or "length").
        """
        if not prompts:
            return []
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        prompts = [list(p) for p in prompts]
        batch = len(prompts)
        limit = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        limits = torch.tensor([limit] * batch if isinstance(limit, int) else list(limit), device=self.device)
        pad = self.chat.pad_id
        self.stats["calls"] += 1
        self.stats["prompt_tokens"] += sum(len(p) for p in prompts)
        base_cache = base_logits = None
        extra = self.model_inputs(inputs) if inputs is not None and any(inputs) else {}
        caching = self.prefix_cache and not extra and self.base_model is None and _attention_only(self.model)
        if caching:
            version = weights_version(self.model)
            if version != self._store_version:  # the weights changed since the store was filled: it is stale
                self._store.clear()
            cache, logits, attention, next_position, row_kv = self._prefill_cached(prompts, room=max(int(limits.max()), 0))
            store = PrefixStore(self.cache_max_tokens)
            for row in (limits <= 0).nonzero().squeeze(-1).tolist():  # nothing to generate: remember the prompt
                if store.tokens + len(prompts[row]) <= store.max_tokens:
                    store.add(prompts[row], [(k.clone(), v.clone()) for k, v in row_kv[row]])
            prompt_len = torch.tensor([len(p) for p in prompts], device=self.device)
        else:
            cache, logits, attention, next_position, base_cache, base_logits = self._prefill_plain(prompts, extra)
        stop = torch.tensor(sorted(self.stop_ids), device=self.device)
        steps = int(limits.max())
        tokens = torch.full((batch, max(steps, 0)), pad, dtype=torch.long, device=self.device)
        logprobs = torch.zeros((batch, max(steps, 0)), dtype=torch.float32, device=self.device)
        lengths = torch.zeros(batch, dtype=torch.long, device=self.device)
        rows = (limits > 0).nonzero().squeeze(-1)  # original row of each row still in the batch
        logits, attention, next_position = logits[rows], attention[rows], next_position[rows]
        cache.batch_select_indices(rows)
        if base_cache is not None:
            base_logits = base_logits[rows]
            base_cache.batch_select_indices(rows)
        for step in range(steps):
            if rows.numel() == 0:
                break
            if base_cache is None:
                if self.suppressed_ids:
                    logits = logits.index_fill(-1, torch.tensor(self.suppressed_ids, device=logits.device), float("-inf"))
                token, logprob = sample_tokens(logits, self.temperature, self.top_p, self.generator)
            else:
                token, logprob = self._extrapolated_tokens(base_logits, logits)
            tokens[rows, step], logprobs[rows, step] = token, logprob
            lengths[rows] += 1
            finished = torch.isin(token, stop) | (lengths[rows] >= limits[rows])
            if bool(finished.any()):  # drop finished rows so no compute is spent on them
                if caching:
                    self._remember(store, cache, finished, rows, prompts, tokens, prompt_len + step)
                keep = (~finished).nonzero().squeeze(-1)
                rows, token, attention, next_position = rows[keep], token[keep], attention[keep], next_position[keep]
                cache.batch_select_indices(keep)
                if base_cache is not None:
                    base_cache.batch_select_indices(keep)
                if rows.numel() == 0:
                    break
            attention = torch.cat([attention, torch.ones((rows.numel(), 1), dtype=attention.dtype, device=self.device)], dim=1)
            out = self.model(input_ids=token[:, None], attention_mask=attention, position_ids=next_position, **cache_kwargs(self.model, cache), use_cache=True)
            if base_cache is not None:
                base_logits = self.base_model(input_ids=token[:, None], attention_mask=attention, position_ids=next_position,
                                              **cache_kwargs(self.base_model, base_cache), use_cache=True).logits[:, -1]
            logits, next_position = out.logits[:, -1], next_position + 1
        if caching:
            self._store, self._store_version = store, version  # last call's sequences only: the rest is evicted

        tokens, logprobs, lengths = tokens.tolist(), logprobs.tolist(), lengths.tolist()
        self.stats["generated_tokens"] += sum(lengths)
        generations = []
        for row in range(batch):
            ids, lps = tokens[row][: lengths[row]], logprobs[row][: lengths[row]]
            stopped = bool(ids) and ids[-1] in self.stop_ids
            text = self.chat.decode(ids[:-1] if stopped else ids)
            generations.append(Generation(text, ids, lps, list(prompts[row]), "stop" if stopped else "length"))
        return generations

    @torch.no_grad()
    def choice_logprobs(self, contexts: Sequence[Messages], choices: Sequence[str], batch_size: int = 32) -> list[list[float]]:
        """log p(choice as the whole assistant reply | chat), for each chat and each choice: `[C][K]` floats.

        A choice's log-prob sums its tokens and the end-of-turn id after them, so "Score: 1" is not favoured
        for being a prefix of "Score: 10". Each prompt runs once (`batch_size` chats per forward); its keys and
        values are repeated for the K choices, which run together in a second forward. Used by LLM-as-judge
        rewards (`agentenv.rewards.judge`) to read a verdict without sampling one."""
        if not contexts:
            return []
        if not choices:
            raise ValueError("choice_logprobs needs at least one choice")
        choice_ids = [self.chat.encode(c) + [self.chat.end_id] for c in choices]
        k, width = len(choice_ids), max(len(c) for c in choice_ids)
        ids = torch.full((k, width), self.chat.pad_id, dtype=torch.long)
        mask = torch.zeros((k, width), dtype=torch.long)
        for row, choice in enumerate(choice_ids):
            ids[row, : len(choice)] = torch.tensor(choice)
            mask[row, : len(choice)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        out: list[list[float]] = []
        for start in range(0, len(contexts), batch_size):
            prompts = [self.chat.prompt(m) for m in contexts[start : start + batch_size]]
            b = len(prompts)
            cache, last_logits, attention, next_position, _, _ = self._prefill_plain(prompts)
            cache.batch_repeat_interleave(k)  # row r·K + j: prompt r followed by choice j
            rows_ids, rows_mask = ids.repeat(b, 1), mask.repeat(b, 1)
            logits = self.model(input_ids=rows_ids, attention_mask=torch.cat([attention.repeat_interleave(k, 0), rows_mask], 1),
                                position_ids=next_position.repeat_interleave(k, 0) + torch.arange(width, device=self.device),
                                **cache_kwargs(self.model, cache), use_cache=True).logits
            # token t of a choice is predicted by the prompt's last position (t = 0) or by choice token t − 1
            predicting = torch.cat([last_logits.repeat_interleave(k, 0)[:, None], logits[:, :-1]], 1).float().log_softmax(-1)
            token_logp = predicting.gather(-1, rows_ids[..., None]).squeeze(-1) * rows_mask
            out.extend(token_logp.sum(-1).view(b, k).tolist())
        return out

    # -- prefill ------------------------------------------------------------------------------------

    def _prefill_plain(self, prompts: list[list[int]], extra: dict[str, torch.Tensor] | None = None):
        """Every prompt from scratch, left-padded, one forward (with the non-text inputs `extra`, if any): (cache,
        last logits [B, V], attention [B, W], next position [B, 1], base model's cache and logits or None)."""
        extra = {k: v.to(self.device) for k, v in (extra or {}).items()}
        batch, width, pad = len(prompts), max(len(p) for p in prompts), self.chat.pad_id
        input_ids = torch.full((batch, width), pad, dtype=torch.long)
        attention = torch.zeros((batch, width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            attention[row, width - len(prompt) :] = 1
        input_ids, attention = input_ids.to(self.device), attention.to(self.device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        self.stats["prefill_tokens"] += sum(len(p) for p in prompts)
        self.stats["prefill_padded_tokens"] += batch * width

        from transformers import DynamicCache

        cache = DynamicCache()
        out = self.model(input_ids=input_ids, attention_mask=attention, position_ids=positions, **cache_kwargs(self.model, cache),
                         use_cache=True, logits_to_keep=1, **extra)
        base_cache = base_logits = None
        if self.base_model is not None:
            base_cache = DynamicCache()
            base_logits = self.base_model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                                          **cache_kwargs(self.base_model, base_cache), use_cache=True, logits_to_keep=1, **extra).logits[:, -1]
        return cache, out.logits[:, -1], attention, positions[:, -1:] + 1, base_cache, base_logits

    def _prefill_cached(self, prompts: list[list[int]], room: int):
        """The prefill with the prefix cache: identical prompts run once (a GRPO group's), each unique prompt
        starts from the longest prefix a remembered sequence shares with it, prompts with nothing remembered
        run their common stem once (the system prompt of a batch of tasks), and only the rest goes through
        the model. Returns (decode cache, last logits [B, V], attention [B, W], next position [B, 1], per-row
        prompt keys/values)."""
        index: dict[tuple[int, ...], int] = {}
        unique: list[list[int]] = []
        row_unique = []
        for prompt in prompts:
            u = index.setdefault(tuple(prompt), len(unique))
            if u == len(unique):
                unique.append(prompt)
            row_unique.append(u)
        bases: list[tuple[LayerKV | None, int]] = [
            (self._store.entries[e].kv, k) if e >= 0 else (None, 0) for e, k in self._store.match(unique)]
        fresh = [u for u, (_, k) in enumerate(bases) if k < self.share_min_tokens]
        if len(fresh) >= 2:  # prompts with (almost) nothing remembered: run their common stem once
            stem = os.path.commonprefix([unique[u] for u in fresh])
            stem = stem[: min(len(unique[u]) for u in fresh) - 1]
            if len(stem) >= self.share_min_tokens:
                (stem_kv,), _ = self._prefill_suffixes([stem], [(None, 0)])
                for u in fresh:
                    bases[u] = (stem_kv, len(stem))
        self.stats["reused_tokens"] += sum(k for _, k in bases) + sum(len(p) for p in prompts) - sum(len(p) for p in unique)
        unique_kv, unique_logits = self._prefill_suffixes(unique, bases)
        # the decode batch: every row gets its own copy of its prompt's keys/values, left-padded to one width
        lengths = [len(p) for p in prompts]
        width = max(lengths)
        select = torch.tensor(row_unique, device=self.device)
        layers = []
        for layer in range(len(unique_kv[0])):
            pair = []
            for part in (0, 1):
                sample = unique_kv[0][layer][part]
                padded = sample.new_zeros((len(unique), sample.shape[0], width + room, sample.shape[2]))
                for u, kv in enumerate(unique_kv):
                    padded[u, :, width - kv[layer][part].shape[1] : width] = kv[layer][part]
                pair.append(padded if len(unique) == len(prompts) and row_unique == list(range(len(prompts)))
                            else padded.index_select(0, select))
            layers.append(tuple(pair))
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, n in enumerate(lengths):
            attention[row, width - n :] = 1
        next_position = torch.tensor(lengths, device=self.device)[:, None]
        return (cache_from_layers(layers, length=width), unique_logits.index_select(0, select), attention.to(self.device), next_position,
                [unique_kv[u] for u in row_unique])

    def _prefill_suffixes(self, prompts: list[list[int]], bases: list[tuple[LayerKV | None, int]]) -> tuple[list[LayerKV], torch.Tensor]:
        """Run `prompts[i][k_i:]` on top of the keys/values `bases[i] = (kv, k_i)` already hold for the first
        k_i ids; rows of similar suffix length share a forward. Returns each prompt's keys/values (all its
        positions) and its last logits `[P, V]`."""
        suffix = [len(p) - k for p, (_, k) in zip(prompts, bases)]
        order = sorted(range(len(prompts)), key=lambda i: suffix[i])
        groups: list[list[int]] = [[]]
        for i in order:  # rows whose suffix is much longer than the group's shortest start a new forward
            if groups[-1] and suffix[i] > 1.25 * suffix[groups[-1][0]] + 8:
                groups.append([])
            groups[-1].append(i)
        kvs: list[LayerKV | None] = [None] * len(prompts)
        logits: list[torch.Tensor | None] = [None] * len(prompts)
        for group in groups:
            self._prefill_group(group, prompts, bases, kvs, logits)
        return kvs, torch.stack(logits)  # type: ignore[arg-type]

    def _prefill_group(self, group, prompts, bases, kvs, logits) -> None:
        """One forward over `group`'s suffixes, each after its base: the cache holds the bases left-padded to
        width C, the input the suffixes left-padded to width S, so a row is [pad, base, pad, suffix] and the
        attention mask leaves its padding out; positions continue each row's base."""
        from transformers import DynamicCache

        pad = self.chat.pad_id
        known = [bases[i][1] for i in group]
        new = [len(prompts[i]) - k for i, k in zip(group, known)]
        c, s, b = max(known), max(new), len(group)
        input_ids = torch.full((b, s), pad, dtype=torch.long)
        positions = torch.zeros((b, s), dtype=torch.long)
        attention = torch.zeros((b, c + s), dtype=torch.long)
        for row, (i, k, n) in enumerate(zip(group, known, new)):
            input_ids[row, s - n :] = torch.tensor(prompts[i][k:], dtype=torch.long)
            positions[row] = k
            positions[row, s - n :] = torch.arange(k, k + n)
            attention[row, c - k : c] = 1
            attention[row, c + s - n :] = 1
        if c > 0:
            layers = []
            first = next(bases[i][0] for i in group if bases[i][1] > 0)
            for layer in range(len(first)):
                pair = []
                for part in (0, 1):
                    sample = first[layer][part]
                    padded = sample.new_zeros((b, sample.shape[0], c, sample.shape[2]))
                    for row, (i, k) in enumerate(zip(group, known)):
                        if k:
                            padded[row, :, c - k :] = bases[i][0][layer][part][:, :k]
                    pair.append(padded)
                layers.append(tuple(pair))
            cache = cache_from_layers(layers)
        else:
            cache = DynamicCache()
        self.stats["prefill_tokens"] += sum(new)
        self.stats["prefill_padded_tokens"] += b * s
        mask = None if bool(attention.all()) else attention.to(self.device)
        out = self.model(input_ids=input_ids.to(self.device), attention_mask=mask, position_ids=positions.to(self.device),
                         **cache_kwargs(self.model, cache), use_cache=True, logits_to_keep=1)
        full = cache_layers(cache)
        for row, (i, k, n) in enumerate(zip(group, known, new)):
            if n == s:  # base and suffix are adjacent
                kvs[i] = [(keys[row, :, c - k :], values[row, :, c - k :]) for keys, values in full]
            else:
                kvs[i] = [(torch.cat([keys[row, :, c - k : c], keys[row, :, c + s - n :]], dim=1),
                           torch.cat([values[row, :, c - k : c], values[row, :, c + s - n :]], dim=1)) for keys, values in full]
            logits[i] = out.logits[row, -1]

    def _remember(self, store: PrefixStore, cache: Any, finished: torch.Tensor, rows: torch.Tensor,
                  prompts: list[list[int]], tokens: torch.Tensor, cached: torch.Tensor) -> None:
        """Keep the keys/values of the rows that just finished (prompt + every generated id but the last, which
        was never fed), while the store has room."""
        layers = cache_layers(cache)
        for local in finished.nonzero().squeeze(-1).tolist():
            row = int(rows[local])
            n = int(cached[row])
            if store.tokens + n > store.max_tokens:
                continue
            ids = prompts[row] + tokens[row, : n - len(prompts[row])].tolist()
            store.add(ids, [(keys[local, :, -n:].clone(), values[local, :, -n:].clone()) for keys, values in layers])


    def _extrapolated_tokens(self, base_logits: torch.Tensor, rl_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample from the base model; resample where the RL model disagrees by ≥ |τ| nats (Δlog p extrapolation)."""
        from agentenv.learn.plugins.direction import extrapolation_logits, extrapolation_trigger

        alpha, tau, top_k = self.extrapolate
        token, logprob = sample_tokens(base_logits, self.temperature, self.top_p, self.generator)
        redo = extrapolation_trigger(base_logits, rl_logits, token, tau)
        if bool(redo.any()):
            mixed = extrapolation_logits(base_logits[redo], rl_logits[redo], alpha, top_k)
            token[redo], logprob[redo] = sample_tokens(mixed, self.temperature, self.top_p, self.generator)
        return token, logprob


def _attention_only(model: Any) -> bool:
    """True when every layer caches attention keys/values (what the prefix cache slices and forks); models with
    recurrent or linear-attention layers (their `config.layer_types` say so) run without it."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if getattr(config, "is_encoder_decoder", False):
        return False
    kinds = getattr(config, "layer_types", None) or ()
    return all(kind in ("full_attention", "sliding_attention") for kind in kinds)


def _load_tokenizer(path: Path):
    """The tokenizer saved in `path`, exactly as saved.

    transformers 5's AutoTokenizer picks the class from the model type (Qwen2Tokenizer for a qwen2
    config), which re-applies that family's pre-tokenizer and so re-tokenizes a custom tokenizer
    (the tiny one splits digits differently); `tokenizer.json` is the complete spec, so load it as is.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if (path / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def _load(model_or_path: Any, tokenizer: Any, device: str, dtype: torch.dtype | None):
    """(model on `device` in eval mode, tokenizer) from a model object, a local directory or a tiny size."""
    from agentenv.policies.tiny import TINY_SIZES, tiny_model, tiny_tokenizer

    if isinstance(model_or_path, (str, Path)) and str(model_or_path) in TINY_SIZES:
        model = tiny_model(str(model_or_path))
        tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    elif isinstance(model_or_path, (str, Path)):
        from transformers import AutoModelForCausalLM

        path = Path(model_or_path)
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is not a model directory (save one with model.save_pretrained), nor 'tiny'/'small'")
        if dtype is None:
            dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
        if tokenizer is None:
            if not (path / "tokenizer_config.json").exists() and not (path / "tokenizer.json").exists():
                raise UserError(
                    f"{path} holds no tokenizer (tokenizer.json / tokenizer_config.json): save one there with "
                    "tokenizer.save_pretrained(path), or pass tokenizer=..."
                )  # falling back to another vocabulary would silently read the model's ids wrong
            tokenizer = _load_tokenizer(path)
    else:
        model = model_or_path
        if tokenizer is None:
            name = getattr(model, "name_or_path", "")
            if name and (Path(name) / "tokenizer_config.json").exists():
                tokenizer = _load_tokenizer(Path(name))
            elif model.config.vocab_size == len(tiny_tokenizer()):
                tokenizer = tiny_tokenizer()
            else:
                raise ValueError("pass tokenizer=...: the model does not say where its tokenizer is")
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model.to(device).eval(), tokenizer
