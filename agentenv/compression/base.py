"""The compressor interface: `compressor.compress(messages, budget_tokens) → (messages, record)` (a compressor
is also callable the same way).

A compressor rewrites a chat history into a context of at most `budget_tokens` tokens (counted by its
`TokenCounter`, template overhead included). Turn 0 (system prompt and task) and the last `keep_recent`
turns are kept verbatim; every older turn gets a **level** from 1 (dropped; at most a placeholder) to 5
(verbatim). The record (a JSON-able dict, what `info["compression"]` carries) holds the token counts, the
level of every completed turn and its Q_com score with the four terms (`quality.py`).

Subclasses implement `_compress(history, budget)` and return a `Plan`: the new messages, the level of each
completed turn, the tokens each of those turns costs in the new context and the turns dropped for good
(`forget`). When the history is streamed (`feed` / `compress_held`, what `ContextWindow` does), those turns
are released after the call, and the record lists only the turns still held.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Collection, Mapping, Sequence

from agentenv.compression.quality import QComWeights, hindsight_retention, kept_by_presence, score_turns
from agentenv.compression.tokens import TokenCounter, get_counter
from agentenv.compression.turns import HistoryIndex, TurnDigest
from agentenv.types import Message

__all__ = ["Compressor", "History", "Plan", "fit_to_budget", "MIN_BUDGET"]

MIN_BUDGET = 64
_CUT = "\n[... cut to fit the context budget ...]\n"
_NO_EXTRA: frozenset[int] = frozenset()


@dataclass
class History:
    """A history cut into turns, as a compressor sees it.

    head: the opening messages (turn 0); turns: digests of the live completed turns, ascending (`turns[i]`
    is turn i + 1 unless the history is streamed and turns were forgotten: then there are gaps);
    by_number: the same by turn number; open: digest of the last turn (None before the first assistant
    turn); tail_superseded: lines of completed turns that the open turn's facts supersede (turn number →
    lines); protected: how many of the last completed turns are kept verbatim (with the open turn).
    """

    head: Sequence[Message]
    turns: list[TurnDigest]
    by_number: Mapping[int, TurnDigest]
    open: TurnDigest | None
    tail_superseded: dict[int, frozenset[int]]
    protected: int

    def values(self, digest: TurnDigest) -> list[float]:
        """Line values of a completed turn, counting the open turn's facts as superseding."""
        return digest.values(self.tail_superseded.get(digest.number, _NO_EXTRA))

    def messages_of(self, number: int) -> Sequence[Message]:
        """The messages of turn `number` (0 = the opening messages)."""
        if number == 0:
            return self.head
        if self.open is not None and number == self.open.number:
            return self.open.messages
        return self.by_number[number].messages

    @property
    def messages(self) -> list[Message]:
        """The history as one list (the turns it still holds)."""
        out = list(self.head)
        for digest in self.turns:
            out.extend(digest.messages)
        if self.open is not None:
            out.extend(self.open.messages)
        return out

    @property
    def candidates(self) -> list[TurnDigest]:
        """Completed turns a compressor may shorten (all but the protected recent ones)."""
        return self.turns[: len(self.turns) - self.protected]

    @property
    def last_candidate(self) -> int:
        """Number of the newest turn that is not protected (held or forgotten); 0 when there is none."""
        if self.protected:
            return self.turns[len(self.turns) - self.protected].number - 1
        if self.open is not None:
            return self.open.number - 1
        return 0

    @property
    def tail(self) -> list[Message]:
        """The protected recent turns' messages, the open turn included."""
        out: list[Message] = []
        for digest in self.turns[len(self.turns) - self.protected :] if self.protected else ():
            out.extend(digest.messages)
        if self.open is not None:
            out.extend(self.open.messages)
        return out


@dataclass
class Plan:
    """What a compressor made of a history: the new messages and, per completed turn, its level and the
    tokens it costs in them; `kept_value`, `complete` and `mass` (for Q_com, see `quality.score_turns`)
    when the compressor knows them, else they are measured by which lines appear in the new messages."""

    messages: list[Message]
    levels: list[int]
    kept_tokens: list[int]
    kept_value: list[float] | None = None
    complete: list[float] | None = None
    mass: list[float] | None = None
    forget: list[int] | None = None  # turns this plan dropped for good (a streamed history releases them)
    tokens: int | None = None  # the exact size of `messages` when the compressor knows it (then it is not counted again)


class Compressor:
    """Base class: `compress(messages, budget_tokens) → (messages, record)`; calling the compressor is the same.

    Args:
        tokenizer: what counts tokens (see `tokens.get_counter`): None (cl100k offline, else regex),
            "cl100k", "regex", a policy's tokenizer or a `TokenCounter`.
        keep_recent: how many of the latest turns stay verbatim (the latest one always does).
        weights: Q_com term weights.

    A compressor keeps an index of the history it last saw, so calling it again on the same history after
    it grew costs O(new turns) to index; give every environment its own compressor. `ContextWindow` streams
    the history instead (`feed`, `compress_held`): the compressor then releases the turns it drops for good.
    """

    name = "base"
    controllable = False  # True when `__call__` honours `levels={turn: level}` chosen by the policy
    every_turn = False  # True: `ContextWindow` compresses at every step (each turn as it becomes compressible)

    def __init__(self, tokenizer: Any = None, keep_recent: int = 1, weights: QComWeights = QComWeights()):
        if keep_recent < 1:
            raise ValueError("keep_recent must be at least 1 (the latest turn is always kept)")
        self.counter: TokenCounter = get_counter(tokenizer)
        self.keep_recent = keep_recent
        self.weights = weights
        self.index = HistoryIndex(self.counter)

    def __call__(self, messages: Sequence[Message], budget_tokens: int, **options: Any) -> tuple[list[Message], dict[str, Any]]:
        """`compress(messages, budget_tokens)`."""
        return self.compress(messages, budget_tokens, **options)

    def compress(self, messages: Sequence[Message], budget_tokens: int, **options: Any) -> tuple[list[Message], dict[str, Any]]:
        """Compress `messages` to at most `budget_tokens` tokens. Returns (new messages, record)."""
        new, record, _ = self._run(self.history(messages), budget_tokens, **options)
        return new, record

    # -- streaming: the history arrives in pieces and turns dropped for good are released -------------

    def restart(self) -> None:
        """Start a new streamed history (`feed`, `compress_held`)."""
        self.index.reset()

    def feed(self, messages: Sequence[Message]) -> None:
        """Append the messages that followed the ones fed before."""
        self.index.extend(messages)

    def compress_held(self, budget_tokens: int, **options: Any) -> tuple[list[Message], dict[str, Any]]:
        """`compress` of the history fed so far; then the turns the plan dropped for good (`Plan.forget`) are
        released, so later calls neither see nor bring them back. Memory then follows what the context
        shows, not the length of the episode."""
        new, record, plan = self._run(self.history(), budget_tokens, **options)
        if plan.forget:
            self.index.forget(plan.forget)
            self._release(plan.forget)
        return new, record

    def _release(self, numbers: list[int]) -> None:
        """Drop the compressor's own state about turns that were forgotten (default: none kept)."""

    def _run(self, history: History, budget_tokens: int, needed: Collection[str] | None = None,
             **options: Any) -> tuple[list[Message], dict[str, Any], Plan]:
        """`needed`: the exact lines later turns need, when the caller knows them (an env's hindsight): Q_com's
        retention and consistency are then judged against them (`quality.hindsight_retention`)."""
        if not isinstance(budget_tokens, int) or budget_tokens < MIN_BUDGET:
            raise ValueError(f"budget_tokens must be an int of at least {MIN_BUDGET}, got {budget_tokens!r}")
        plan = self._compress(history, budget_tokens, **options)
        new, tokens_after = fit_to_budget(plan.messages, budget_tokens, self.counter, plan.tokens)
        turns = history.turns
        if plan.kept_value is None or plan.complete is None or plan.mass is None or new is not plan.messages:
            values = [history.values(d) for d in turns]
            plan.kept_value, plan.complete = kept_by_presence(turns, values, new)
            plan.mass = [sum(v) for v in values]
        if needed is not None:
            plan.kept_value, plan.mass = hindsight_retention(turns, needed, new)
        scores = score_turns(plan.levels, plan.kept_tokens, [d.tokens for d in turns], plan.kept_value, plan.mass, plan.complete, self.weights)
        compressed = [q for q, level in zip(scores["q_com"], plan.levels) if level < 5]
        before = sum(d.tokens for d in turns) + self.counter.count_messages(history.head)
        record = {
            "compressor": self.name,
            "tokenizer": self.counter.name,
            "budget_tokens": budget_tokens,
            "tokens_before": before + (history.open.tokens if history.open is not None else 0),
            "tokens_after": tokens_after,
            "q_com": sum(compressed) / len(compressed) if compressed else None,
            "turns": {"turn": [d.number for d in turns], "level": list(plan.levels), **scores},
        }
        return new, record, plan

    def history(self, messages: Sequence[Message] | None = None) -> History:
        """Index `messages` (the whole history; incrementally) into a `History`; without `messages`, the
        history fed so far."""
        turns = self.index.update(messages) if messages is not None else self.index.digest()
        open_turn = self.index.open_turn()
        extra = self.index.tail_superseded(open_turn) if open_turn is not None else {}
        return History(self.index.head, turns, self.index.by_number, open_turn, extra, min(self.keep_recent - 1, len(turns)))

    def _compress(self, history: History, budget: int, **options: Any) -> Plan:
        """The plan for `history` within `budget` tokens."""
        raise NotImplementedError


def _shrink(text: str, keep: float) -> str:
    """`text` cut in the middle to about `keep` of its length, with a marker."""
    chars = int(len(text) * keep)
    if chars < 16:
        return _CUT.strip()
    return text[: chars // 2] + _CUT + text[len(text) - chars // 2 :]


def fit_to_budget(messages: Sequence[Message], budget: int, counter: TokenCounter, tokens: int | None = None) -> tuple[list[Message], int]:
    """Last resort so that a context always fits: cut the largest message in the middle (repeatedly),
    and drop messages after the first when even empty ones do not fit. Returns (messages, their tokens);
    the same list when it already fits. `tokens`: the messages' exact size, when the caller knows it."""
    total = counter.count_messages(messages) if tokens is None else tokens
    if total <= budget:
        return (messages if isinstance(messages, list) else list(messages)), total
    out = list(messages)
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
    return out, total
