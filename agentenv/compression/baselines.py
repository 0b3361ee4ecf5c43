"""The cheap baselines every compressor must beat (docs/anchors-domains.md §1.2): no compression, a window of
the last turns, and SWE-agent's observation masking.
"""

from __future__ import annotations

from typing import Any

from agentenv.compression.base import Compressor, History, Message, Plan

__all__ = ["NoCompression", "Window", "MaskObservations"]


class NoCompression(Compressor):
    """The full history, unchanged (the budget is not enforced: this is the `full` reference)."""

    name = "none"

    def compress(self, messages: list[Message], budget_tokens: int, **options: Any) -> tuple[list[Message], dict[str, Any]]:
        tokens = self.counter.count_messages(messages)
        return list(messages), {
            "compressor": self.name, "tokenizer": self.counter.name, "budget_tokens": budget_tokens,
            "tokens_before": tokens, "tokens_after": tokens, "q_com": None, "turns": None,
        }


def _omitted(first: int, last: int) -> Message:
    return {"role": "user", "content": f"[turns {first}-{last} omitted to fit the context budget]"}


def _omitted_before(history: History, shown: list[Any]) -> list[Message]:
    """The note for the turns before the first shown candidate (those dropped now or forgotten earlier)."""
    last = shown[0].number - 1 if shown else history.last_candidate
    return [_omitted(1, last)] if last > 0 else []


def _fit_suffix(room: int, cost: list[int]) -> int:
    """Index of the oldest item of the longest suffix of `cost` whose sum fits `room`."""
    first = len(cost)
    while first > 0 and cost[first - 1] <= room:
        room -= cost[first - 1]
        first -= 1
    return first


class Window(Compressor):
    """The last turns that fit (at most `turns` of them when given); older turns are dropped (level 1)
    behind one `[turns a-b omitted ...]` note."""

    name = "window"

    def __init__(self, *args: Any, turns: int | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if turns is not None and turns < 0:
            raise ValueError("turns must be None or >= 0")
        self.turns = turns

    def _compress(self, history: History, budget: int) -> Plan:
        candidates = history.candidates
        note = self.counter.count_message(_omitted(10**4, 10**4))
        room = budget - self.counter.count_messages(history.head) - self.counter.count_messages(history.tail) - note
        first = _fit_suffix(room, [d.tokens for d in candidates])
        if self.turns is not None:
            first = max(first, len(candidates) - self.turns)
        out = [*history.head, *_omitted_before(history, candidates[first:])]
        for digest in candidates[first:]:
            out.extend(history.messages_of(digest.number))
        out.extend(history.tail)
        kept = set(d.number for d in candidates[first:]) | {d.number for d in history.turns[len(candidates):]}
        levels = [5 if d.number in kept else 1 for d in history.turns]
        return Plan(out, levels, [d.tokens if d.number in kept else 0 for d in history.turns],
                    forget=[d.number for d in candidates[:first]])


class MaskObservations(Compressor):
    """SWE-agent `LastNObservations`: environment messages older than the last `observations` turns become
    one-line placeholders; the assistant messages stay. When that is still over budget, fewer observations
    stay verbatim, then the oldest turns are dropped as in `Window`."""

    name = "mask_observations"

    def __init__(self, *args: Any, observations: int = 5, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if observations < 0:
            raise ValueError("observations must be >= 0")
        self.observations = observations

    @staticmethod
    def _masked(messages: list[Message]) -> list[Message]:
        out = []
        for m in messages:
            if m["role"] == "assistant":
                out.append(m)
            else:
                lines = m["content"].count("\n") + 1
                out.append({**m, "content": f"Old environment output: ({lines} lines omitted)"})
        return out

    def _compress(self, history: History, budget: int) -> Plan:
        candidates = history.candidates
        count = self.counter.count_messages
        masked = [self._masked(list(history.messages_of(d.number))) for d in candidates]
        masked_cost = [count(m) for m in masked]
        note = self.counter.count_message(_omitted(10**4, 10**4))
        room = budget - count(history.head) - count(history.tail) - note
        verbatim = min(self.observations, len(candidates))
        while True:
            cost = masked_cost[: len(candidates) - verbatim] + [d.tokens for d in candidates[len(candidates) - verbatim :]]
            first = _fit_suffix(room, cost)
            if verbatim == 0 or first <= len(candidates) - verbatim:
                break
            verbatim -= 1  # the verbatim observations alone do not fit
        out = [*history.head, *_omitted_before(history, candidates[first:])]
        levels, kept = [], []
        for i, digest in enumerate(candidates):
            full = i >= len(candidates) - verbatim
            if i >= first:
                out.extend(history.messages_of(digest.number) if full else masked[i])
            levels.append(5 if full and i >= first else 1)
            kept.append(cost[i] if i >= first else 0)
        out.extend(history.tail)
        for digest in history.turns[len(candidates):]:
            levels.append(5)
            kept.append(digest.tokens)
        return Plan(out, levels, kept, forget=[d.number for d in candidates[:first]])
