"""ZipRL multi-granularity compression (arXiv 2605.28069): every old turn gets one of five levels, chosen by
its relevance to the task, under a token budget.

Levels (nested: a finer level keeps everything a coarser one keeps; line values from `turns.py`):

| level | name | what is kept of the turn |
|---|---|---|
| L1 | ultra-coarse | nothing: the turn is dropped into its block's headline `[zip: turns a-b ...]` |
| L2 | coarse | the relevant current facts (value ≥ 0.6) |
| L3 | medium | plus the lines that mention the task's identifiers (value ≥ 0.3) |
| L4 | fine | plus every line with any relevance (value ≥ 0.05), superseded facts included |
| L5 | ultra-fine | the turn's messages verbatim |

Kept lines of consecutive non-verbatim turns form one memory message, each turn tagged `[tK Ln]` so the
policy can see (and learn) the levels. The choice of levels maximises the kept value under the budget: a
greedy multiple-choice knapsack over each turn's upper convex hull of (tokens, value) points, densest
upgrade first, newer turns first on ties, then a check of the exact count that undoes the last upgrades
while the context is over budget.

The policy can choose levels itself: pass `levels={turn: level}` (the env reads `<zip turn=K level=N/>`
control tags from actions, `context.py`); chosen levels are honoured first, and dropped oldest-first only
when they alone cannot fit.
"""

from __future__ import annotations

from typing import Any

from agentenv.compression.base import Compressor, History, Message
from agentenv.compression.turns import TurnDigest

__all__ = ["Zip", "THRESHOLDS"]

THRESHOLDS = {2: 0.6, 3: 0.3, 4: 0.05}
VERBATIM_BONUS = 1e-3  # value of each line at L5: spare budget goes to verbatim turns, newest first

Option = tuple[int, int, float, list[int]]  # (level, tokens, value, kept line indices)


class Zip(Compressor):
    """Multi-granularity compression by relevance (ZipRL); `levels` chosen by the policy are honoured."""

    name = "zip"
    controllable = True

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._options: dict[int, tuple[TurnDigest, list[float], list[Option], list[Option]]] = {}

    def _turn_options(self, digest: TurnDigest, values: list[float]) -> tuple[list[Option], list[Option]]:
        """(the option of every level, the upper convex hull of those options from L1 up)."""
        cached = self._options.get(digest.number)
        if cached is not None and cached[0] is digest and cached[1] is values:
            return cached[2], cached[3]
        count = self.counter.count
        options: list[Option] = [(1, 0, 0.0, [])]
        for level, threshold in THRESHOLDS.items():
            kept = [i for i, v in enumerate(values) if v >= threshold]
            if kept:
                tokens = count(f"[t{digest.number} L{level}]\n") + sum(digest.costs[i] for i in kept)
                options.append((level, tokens, sum(values[i] for i in kept), kept))
        everything = list(range(len(digest.lines)))
        block_split = 2 * self.counter.per_message + self._header_cost  # a verbatim turn may split a block in two
        options.append((5, digest.tokens + block_split, sum(values) + VERBATIM_BONUS * len(everything), everything))
        hull: list[Option] = []
        for option in sorted(options, key=lambda o: (o[1], -o[2])):
            if hull and option[2] <= hull[-1][2]:
                continue  # costs at least as much for no more value
            while len(hull) >= 2:
                (_, c0, v0, _), (_, c1, v1, _) = hull[-2], hull[-1]
                if (v1 - v0) * (option[1] - c0) <= (option[2] - v0) * (c1 - c0):
                    hull.pop()  # hull[-1] lies under the segment from hull[-2] to this option
                else:
                    break
            hull.append(option)
        self._options[digest.number] = (digest, values, options, hull)
        return options, hull

    @property
    def _header_cost(self) -> int:
        return self.counter.count("[zip: turns 1000-1000 compressed; [tK Ln] = turn K kept at level n of 5, others omitted]\n")

    def _compress(self, history: History, budget: int, levels: dict[int, int] | None = None) -> tuple[list[Message], list[int], list[int]]:
        candidates = history.candidates
        if not candidates:
            return list(history.messages), [5] * len(history.turns), [d.tokens for d in history.turns]
        count_messages = self.counter.count_messages
        fixed = count_messages(history.head) + count_messages(history.tail) + self.counter.per_message + self._header_cost
        available = budget - fixed
        chosen: dict[int, Option] = {}
        hulls: list[list[Option]] = []
        forced = levels or {}
        for digest, values in zip(candidates, history.values):
            options, hull = self._turn_options(digest, values)
            hulls.append(hull)
            level = forced.get(digest.number)
            option = next((o for o in options if o[0] == level), None) if level is not None else None
            chosen[digest.number] = option or options[0]
        for number in sorted(n for n in chosen if chosen[n][0] > 1):  # the policy's levels, oldest dropped first
            if sum(o[1] for o in chosen.values()) <= available:
                break
            chosen[number] = (1, 0, 0.0, [])
        pinned = {n for n, o in chosen.items() if o[0] > 1}
        available -= sum(o[1] for o in chosen.values())
        upgrades = []
        for digest, hull in zip(candidates, hulls):
            if digest.number in pinned:
                continue
            for low, high in zip(hull, hull[1:]):
                extra = high[1] - low[1]
                density = (high[2] - low[2]) / extra if extra > 0 else float("inf")
                upgrades.append((-density, -digest.number, low[0], high, extra))
        upgrades.sort(key=lambda u: (u[0], u[1]))
        applied: list[tuple[int, Option]] = []
        for _, negative_number, low_level, high, extra in upgrades:
            number = -negative_number
            previous = chosen[number]
            if previous[0] != low_level or extra > available:
                continue
            available -= extra
            chosen[number] = high
            applied.append((number, previous))
        out = self._render(history, chosen)
        while count_messages(out) > budget and applied:  # estimates were low: undo the least dense upgrades
            number, previous = applied.pop()
            chosen[number] = previous
            out = self._render(history, chosen)
        levels_out = [chosen[d.number][0] if d.number in chosen else 5 for d in history.turns]
        kept = [chosen[d.number][1] if d.number in chosen and chosen[d.number][0] < 5 else d.tokens for d in history.turns]
        return out, levels_out, kept

    def _render(self, history: History, chosen: dict[int, Option]) -> list[Message]:
        out: list[Message] = list(history.head)
        block: list[str] = []
        span: list[int] = []

        def flush() -> None:
            if span:
                header = f"[zip: turns {span[0]}-{span[-1]} compressed; [tK Ln] = turn K kept at level n of 5, others omitted]"
                out.append({"role": "user", "content": "\n".join([header, *block])})
                block.clear()
                span.clear()

        for digest in history.candidates:
            level, _, _, kept = chosen[digest.number]
            if level == 5:
                flush()
                out.extend(history.messages_of(digest.number))
                continue
            span.append(digest.number)
            if level > 1:
                block.append(f"[t{digest.number} L{level}]")
                block.extend(digest.lines[i] for i in kept)
        flush()
        out.extend(history.tail)
        return out
