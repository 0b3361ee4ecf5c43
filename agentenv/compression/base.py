"""The compressor interface: `compressor(messages, budget_tokens) → (messages, record)`.

A compressor rewrites a chat history into a context of at most `budget_tokens` tokens (counted by its
`TokenCounter`, template overhead included). Turn 0 (system prompt and task) and the last `keep_recent`
turns are kept verbatim; every older turn gets a **level** from 1 (dropped; at most a placeholder) to 5
(verbatim). The record (a JSON-able dict, what `info["compression"]` carries) holds the token counts, the
level of every completed turn and its Q_com score with the four terms (`quality.py`).

Subclasses implement `_compress(messages, plan)` and return the new messages, the level of each
completed turn and the tokens each of those turns costs in the new context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from agentenv.compression.quality import QComWeights, score_turns
from agentenv.compression.tokens import TokenCounter, get_counter
from agentenv.compression.turns import HistoryIndex, TurnDigest

__all__ = ["Compressor", "History", "fit_to_budget", "MIN_BUDGET"]

Message = dict[str, Any]
MIN_BUDGET = 64
_CUT = "\n[... cut to fit the context budget ...]\n"
_NO_EXTRA: frozenset[int] = frozenset()


@dataclass
class History:
    """A history cut into turns, as a compressor sees it.

    starts: index of the first message of each turn; turns: digests of the completed turns 1..n-1
    (`turns[i]` is turn i + 1); open: digest of the last turn n (None before the first assistant turn);
    values: per completed turn, per line values with the open turn's facts counted as superseding;
    protected: how many of the last completed turns are kept verbatim (with the open turn).
    """

    messages: Sequence[Message]
    starts: list[int]
    turns: list[TurnDigest]
    open: TurnDigest | None
    values: list[list[float]]
    protected: int

    def messages_of(self, number: int) -> Sequence[Message]:
        """The messages of turn `number` (0 = the opening messages)."""
        end = self.starts[number + 1] if number + 1 < len(self.starts) else len(self.messages)
        return self.messages[self.starts[number] : end]

    @property
    def head(self) -> Sequence[Message]:
        return self.messages_of(0)

    @property
    def candidates(self) -> list[TurnDigest]:
        """Completed turns a compressor may shorten (all but the protected recent ones)."""
        return self.turns[: len(self.turns) - self.protected]

    @property
    def tail(self) -> Sequence[Message]:
        """The protected recent turns' messages, the open turn included."""
        if len(self.starts) < 2:
            return []
        first = len(self.starts) - 1 - self.protected
        return self.messages[self.starts[first] :]


class Compressor:
    """Base class: `compressor(messages, budget_tokens) → (messages, record)`.

    Args:
        tokenizer: what counts tokens (see `tokens.get_counter`): None (cl100k offline, else regex),
            "cl100k", "regex", a policy's tokenizer or a `TokenCounter`.
        keep_recent: how many of the latest turns stay verbatim (the latest one always does).
        weights: Q_com term weights.

    A compressor keeps an index of the history it last saw, so calling it again on the same history after
    it grew costs O(new turns) to index; give every environment its own compressor.
    """

    name = "base"
    controllable = False  # True when `__call__` honours `levels={turn: level}` chosen by the policy

    def __init__(self, tokenizer: Any = None, keep_recent: int = 1, weights: QComWeights = QComWeights()):
        if keep_recent < 1:
            raise ValueError("keep_recent must be at least 1 (the latest turn is always kept)")
        self.counter: TokenCounter = get_counter(tokenizer)
        self.keep_recent = keep_recent
        self.weights = weights
        self.index = HistoryIndex(self.counter)

    def __call__(self, messages: Sequence[Message], budget_tokens: int, **options: Any) -> tuple[list[Message], dict[str, Any]]:
        """Compress `messages` to at most `budget_tokens` tokens. Returns (new messages, record)."""
        if not isinstance(budget_tokens, int) or budget_tokens < MIN_BUDGET:
            raise ValueError(f"budget_tokens must be an int of at least {MIN_BUDGET}, got {budget_tokens!r}")
        history = self.history(messages)
        new, levels, kept_tokens = self._compress(history, budget_tokens, **options)
        new = fit_to_budget(new, budget_tokens, self.counter)
        before = sum(d.tokens for d in history.turns) + self.counter.count_messages(history.head)
        before += history.open.tokens if history.open is not None else 0
        scores = score_turns(history.turns, history.values, levels, kept_tokens, new, self.weights)
        compressed = [q for q, level in zip(scores["q_com"], levels) if level < 5]
        record = {
            "compressor": self.name,
            "tokenizer": self.counter.name,
            "budget_tokens": budget_tokens,
            "tokens_before": before,
            "tokens_after": self.counter.count_messages(new),
            "q_com": sum(compressed) / len(compressed) if compressed else None,
            "turns": {"turn": [d.number for d in history.turns], "level": list(levels), **scores},
        }
        return new, record

    def history(self, messages: Sequence[Message]) -> History:
        """Index `messages` (incrementally) into a `History`."""
        starts, turns = self.index.update(messages)
        open_turn = self.index.open_turn(messages) if len(starts) > 1 else None
        extra = self.index.tail_superseded(open_turn) if open_turn is not None else {}
        values = [d.values(extra.get(i, _NO_EXTRA)) for i, d in enumerate(turns)]
        return History(messages, starts, turns, open_turn, values, min(self.keep_recent - 1, len(turns)))

    def _compress(self, history: History, budget: int, **options: Any) -> tuple[list[Message], list[int], list[int]]:
        """(new messages, level of each completed turn, tokens each completed turn costs in them)."""
        raise NotImplementedError


def _shrink(text: str, keep: float) -> str:
    """`text` cut in the middle to about `keep` of its length, with a marker."""
    chars = int(len(text) * keep)
    if chars < 16:
        return _CUT.strip()
    return text[: chars // 2] + _CUT + text[len(text) - chars // 2 :]


def fit_to_budget(messages: Sequence[Message], budget: int, counter: TokenCounter) -> list[Message]:
    """Last resort so that a context always fits: cut the largest message in the middle (repeatedly),
    and drop messages after the first when even empty ones do not fit."""
    out = list(messages)
    total = counter.count_messages(out)
    while total > budget:
        sizes = [counter.count(m["content"]) for m in out]
        i = max(range(len(out)), key=sizes.__getitem__)
        if sizes[i] <= 16:
            if len(out) == 1:
                break
            del out[1]
        else:
            keep = max(0.0, (sizes[i] - (total - budget) - 16) / sizes[i])
            out[i] = {**out[i], "content": _shrink(out[i]["content"], keep * 0.95)}
        total = counter.count_messages(out)
    return out
