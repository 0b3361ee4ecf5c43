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
while the context is over budget. The upgrades stay sorted between calls and only the turns that are new
or had a fact superseded are re-planned, so a call costs O(kept turns + changes), not O(history).

In a streamed history (`ContextWindow`) a turn dropped to L1 is released for good (`Plan.forget`): only the
turns the context still shows are held and planned, so memory and planning follow the budget, not the
episode length; the knapsack then places new turns against the kept ones only.

Who chooses the levels (`mode`):

* `"rule"` (default; the rule-based baseline): the knapsack above. The policy may still pin levels: pass
  `levels={turn: level}` (the env reads `<zip turn=K level=N/>` control tags from actions, `context.py`);
  chosen levels are honoured first, and released (oldest first, for the greedy choice to place) only when
  they alone cannot fit.
* `"agent"` (ZipRL's adaptive compression, what HRR trains): the policy chooses. A turn gets the level its
  tag chose (`<zip level=N/>` right after the turn, or `<zip turn=K level=N/>`), else `default_level` (5:
  a turn the agent did not compress stays verbatim). Nothing is re-planned by relevance: when the chosen
  levels do not fit the budget, the oldest kept turns are dropped (a window), so keeping too much loses old
  facts, as in any fixed-budget context.
* `"uniform"` (ZipRL's uniform baseline): every turn at the one `level`; tags are ignored; over budget, the
  oldest turns are dropped as in agent mode.

In all modes a chosen level that keeps nothing more than a coarser one falls back to that one (a turn with
no current fact is dropped at L2). Agent and uniform modes compress every turn as it becomes compressible
(`every_turn`): ZipRL compresses each retrieved document as it arrives.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from typing import Any

from agentenv.compression.base import Compressor, History, Message, Plan
from agentenv.compression.quality import RELEVANT, completeness
from agentenv.compression.turns import TurnDigest

__all__ = ["Zip", "THRESHOLDS", "MODES", "level_keeps"]

THRESHOLDS = {2: 0.6, 3: 0.3, 4: 0.05}
_LOWEST = min(THRESHOLDS.values())
VERBATIM_BONUS = 1e-3  # value of each line at L5: spare budget goes to verbatim turns, newest first
MAX_MISFITS = 64  # upgrades tried after the first one that did not fit (small ones may fill the gaps)

MODES = ("rule", "agent", "uniform")

Option = tuple[int, int, float, list[int]]  # (level, tokens, value, kept line indices)
_DROPPED: Option = (1, 0, 0.0, [])


def level_keeps(values: list[float]) -> dict[int, list[int]]:
    """The lines (indices into `TurnDigest.lines`) each level keeps of a turn whose line values are `values`
    (`TurnDigest.values()`): nothing at L1, the lines above each threshold at L2-L4, every line at L5."""
    keeps = {1: []}
    for level, threshold in THRESHOLDS.items():
        keeps[level] = [i for i, v in enumerate(values) if v >= threshold]
    keeps[5] = list(range(len(values)))
    return keeps


class _TurnPlan:
    """A candidate turn's options per level and its upgrades (hull segments) in the sorted list."""

    __slots__ = ("digest", "values", "options", "items", "mass", "tags", "_facts", "_chunks")

    def __init__(self, digest: TurnDigest, values: list[float], options: dict[int, Option], items: list[tuple], mass: float,
                 tags: dict[int, int]):
        self.digest = digest
        self.values = values
        self.options = options
        self.items = items
        self.mass = mass
        self.tags = tags  # level → tokens of the `[tK Ln]` tag (a re-plan of the turn reuses them)
        self._facts: dict[int, tuple[frozenset[str], int, list[tuple[str, ...]]]] = {}
        self._chunks: dict[int, str] = {}

    def chunk(self, option: Option) -> str:
        """The option's part of a memory message, `[tK Ln]` and its kept lines; joined once per level, as a
        kept turn is rendered at every rewrite while its plan lasts."""
        level, _, _, kept = option
        text = self._chunks.get(level)
        if text is None:
            lines = self.digest.lines
            text = self._chunks[level] = "\n".join([f"[t{self.digest.number} L{level}]", *(lines[i] for i in kept)])
        return text

    def facts(self, option: Option) -> tuple[frozenset[str], int, list[tuple[str, ...]]]:
        """What Q_com's completeness needs of an option of this turn: the terms of the fact keys it keeps,
        how many of its kept lines are relevant, and the references of those that have any. Computed once
        per level: a kept turn is scored at every rewrite while its plan lasts."""
        level, _, _, kept = option
        facts = self._facts.get(level)
        if facts is None:
            key_terms, refs, values = self.digest.key_terms, self.digest.refs, self.values
            relevant = [i for i in kept if values[i] >= RELEVANT]
            defines = frozenset(t for i in kept for t in key_terms[i])
            facts = self._facts[level] = (defines, len(relevant), [refs[i] for i in relevant if refs[i]])
        return facts


class Zip(Compressor):
    """Multi-granularity compression (ZipRL): levels by relevance (`mode="rule"`), chosen by the policy
    (`"agent"`, unchosen turns at `default_level`) or one `level` for all (`"uniform"`); see the module doc.
    Other arguments as for `Compressor`."""

    name = "zip"

    def __init__(self, *args: Any, mode: str = "rule", level: int = 3, default_level: int = 5, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if mode not in MODES:
            raise ValueError(f"zip mode must be one of {MODES}, got {mode!r}")
        if not (isinstance(level, int) and 1 <= level <= 5 and isinstance(default_level, int) and 1 <= default_level <= 5):
            raise ValueError(f"zip level and default_level must be ints in 1..5, got {level!r} and {default_level!r}")
        self.mode, self.level, self.default_level = mode, level, default_level
        self.controllable = mode != "uniform"  # uniform: one level for every turn, whatever the policy writes
        self.every_turn = mode != "rule"
        self._epoch: object | None = None
        self._plans: dict[int, _TurnPlan] = {}  # candidate turns by number
        self._items: list[tuple] = []  # (-density, -number, from level, to option, extra tokens), sorted
        self._tail: dict[int, frozenset[int]] = {}
        self._header_cost = self.counter.count(self._header(100000, 100000, True) + "\n")  # at least any header's (6-digit turns)
        self._block_split = 2 * self.counter.per_message + self._header_cost  # a verbatim turn may split a block in two

    # -- planning --------------------------------------------------------------------------------

    def _plan_turn(self, digest: TurnDigest, values: list[float], tags: dict[int, int]) -> _TurnPlan:
        cost, value = digest.costs.__getitem__, values.__getitem__
        options: dict[int, Option] = {1: _DROPPED}
        relevant = [i for i, v in enumerate(values) if v >= _LOWEST]
        for level, threshold in THRESHOLDS.items():
            kept = [i for i in relevant if values[i] >= threshold]  # level_keeps(values)[level], from the relevant lines only
            if kept:
                tag = tags.get(level)
                if tag is None:
                    tag = tags[level] = self.counter.count(f"[t{digest.number} L{level}]\n")
                options[level] = (level, tag + sum(map(cost, kept)), sum(map(value, kept)), kept)
        everything = list(range(len(digest.lines)))
        mass = sum(values)
        options[5] = (5, digest.tokens + self._block_split, mass + VERBATIM_BONUS * digest.line_count, everything)
        hull: list[Option] = []
        for option in sorted(options.values(), key=lambda o: (o[1], -o[2])):
            if hull and option[2] <= hull[-1][2]:
                continue  # costs at least as much for no more value
            while len(hull) >= 2:
                (_, c0, v0, _), (_, c1, v1, _) = hull[-2], hull[-1]
                if (v1 - v0) * (option[1] - c0) <= (option[2] - v0) * (c1 - c0):
                    hull.pop()  # hull[-1] lies under the segment from hull[-2] to this option
                else:
                    break
            hull.append(option)
        items = []
        for low, high in zip(hull, hull[1:]):
            extra = high[1] - low[1]
            density = (high[2] - low[2]) / extra if extra > 0 else float("inf")
            items.append((-density, -digest.number, low[0], high, extra))
        return _TurnPlan(digest, values, options, items, mass, tags)

    def _refresh(self, history: History, candidates: list[TurnDigest]) -> None:
        """Bring the plans of the candidate turns up to date (new turns, superseded lines)."""
        if self.index.epoch is not self._epoch:  # another history: start over
            self._epoch, self._plans, self._items, self._tail = self.index.epoch, {}, [], {}
            self.index.take_dirty()
        stale = self.index.take_dirty() | set(history.tail_superseded) | set(self._tail)
        self._tail = history.tail_superseded
        for number in sorted(stale):
            old = self._plans.get(number)
            if old is None:  # not a candidate yet, or forgotten
                continue
            values = history.values(old.digest)
            if values is old.values or values == old.values:  # e.g. superseded by the open turn, then for good
                old.values = values
                continue
            self._drop(number)
            self._plans[number] = self._add(history, old.digest, old.tags)
        new = []
        for digest in reversed(candidates):  # candidates only grow at the end
            if digest.number in self._plans:
                break
            new.append(digest)
        for digest in reversed(new):
            self._plans[digest.number] = self._add(history, digest, {})

    def _drop(self, number: int) -> None:
        for item in self._plans.pop(number).items:
            i = bisect_left(self._items, item)
            assert self._items[i] is item
            del self._items[i]

    def _release(self, numbers: list[int]) -> None:
        for number in numbers:
            if number in self._plans:
                self._drop(number)

    def _add(self, history: History, digest: TurnDigest, tags: dict[int, int]) -> _TurnPlan:
        plan = self._plan_turn(digest, history.values(digest), tags)
        for item in plan.items:
            insort(self._items, item)
        return plan

    # -- compressing -----------------------------------------------------------------------------

    def _compress(self, history: History, budget: int, levels: dict[int, int] | None = None) -> Plan:
        candidates = history.candidates
        last = history.last_candidate
        if last == 0:
            return Plan(history.messages, [5] * len(history.turns), [d.tokens for d in history.turns])
        self._refresh(history, candidates)
        count_messages = self.counter.count_messages
        fixed = count_messages(history.head) + count_messages(history.tail) + self.counter.per_message + self._header_cost
        available = budget - fixed
        if self.mode != "rule":
            return self._compress_fixed(history, budget, available, levels or {})
        chosen: dict[int, Option] = {}  # turns above L1
        pinned: set[int] = set()
        for number, level in sorted((levels or {}).items()):  # the policy's levels (the finest one <= it that exists)
            if number in self._plans:
                options = self._plans[number].options
                pinned.add(number)
                if level > 1:
                    chosen[number] = options[max(lvl for lvl in options if lvl <= level)]
        for number in sorted(chosen):  # released oldest first while they alone do not fit
            if sum(o[1] for o in chosen.values()) <= available:
                break
            del chosen[number]
            pinned.discard(number)
        available -= sum(o[1] for o in chosen.values())
        applied: list[tuple[int, Option]] = []
        misfits = 0
        for _, negative, low, high, extra in self._items:
            number = -negative
            previous = chosen.get(number, _DROPPED)
            if previous[0] != low or number in pinned:
                continue
            if extra > available:
                misfits += 1
                if misfits > MAX_MISFITS:
                    break
                continue
            available -= extra
            chosen[number] = high
            applied.append((number, previous))
        out, tokens = self._render(history, chosen, last)
        while tokens > budget and applied:  # estimates were low: undo the least dense upgrades
            number, previous = applied.pop()
            if previous[0] == 1:
                del chosen[number]
            else:
                chosen[number] = previous
            out, tokens = self._render(history, chosen, last)
        return self._plan_record(history, chosen, candidates, out, tokens)

    def _compress_fixed(self, history: History, budget: int, available: int, levels: dict[int, int]) -> Plan:
        """Agent and uniform modes: each candidate turn at its given level; over budget, the oldest kept turns
        are dropped (never a re-plan by relevance: the levels are the policy's, or the one uniform level)."""
        candidates = history.candidates
        chosen: dict[int, Option] = {}
        for digest in candidates:
            want = self.level if self.mode == "uniform" else levels.get(digest.number, self.default_level)
            options = self._plans[digest.number].options
            option = options[max(lvl for lvl in options if lvl <= want)]
            if option[0] > 1:
                chosen[digest.number] = option
        total = sum(o[1] for o in chosen.values())
        for number in sorted(chosen):  # estimates first, oldest out first
            if total <= available:
                break
            total -= chosen.pop(number)[1]
        out, tokens = self._render(history, chosen, history.last_candidate)
        while tokens > budget and chosen:  # then the exact count
            del chosen[min(chosen)]
            out, tokens = self._render(history, chosen, history.last_candidate)
        return self._plan_record(history, chosen, candidates, out, tokens)

    @staticmethod
    def _header(first: int, last: int, kept: bool) -> str:
        if not kept:
            return f"[zip: turns {first}-{last} omitted]"
        return f"[zip: turns {first}-{last} compressed; [tK Ln] = turn K kept at level n of 5, others omitted]"

    def _render(self, history: History, chosen: dict[int, Option], last: int) -> tuple[list[Message], int]:
        """The context for `chosen` and its exact size in tokens.

        With an additive counter the size is summed from counts known already, without counting the memory
        messages (long, and new at every rewrite): when every kept line starts with a non-space character,
        the `split_segments` of `"\\n".join([header, tag, line, ...])` are exactly `header + "\\n"`, each
        `tag + "\\n"` and `line + "\\n"` (what an option's tokens sum) and the last line without its newline.
        Otherwise the messages are counted."""
        counter = self.counter
        exact = counter.additive
        out: list[Message] = list(history.head)
        tokens = 0
        block: list[str] = []  # chunks of the memory message being rendered
        block_tokens = 0  # Σ option tokens of its chunks
        last_line, last_cost = "", 0  # its last line, and that line's cost with a newline
        first = 1
        for number in sorted(chosen):
            option = chosen[number]
            level, option_tokens, _, kept = option
            plan = self._plans[number]
            if level == 5:
                if number > first:
                    tokens += self._memory(out, first, number - 1, block, block_tokens, last_line, last_cost, exact)
                out.extend(history.messages_of(number))
                tokens += plan.digest.tokens
                block, first, block_tokens = [], number + 1, 0
            else:
                block.append(plan.chunk(option))
                if not kept:  # a turn the policy pinned to L1 keeps its tag only, which its option does not count
                    exact = False
                    continue
                block_tokens += option_tokens
                last_line, last_cost = plan.digest.lines[kept[-1]], plan.digest.costs[kept[-1]]
                exact = exact and plan.digest.flush
        if last >= first:
            tokens += self._memory(out, first, last, block, block_tokens, last_line, last_cost, exact)
        out.extend(history.tail)
        if not exact:
            return out, counter.count_messages(out)
        return out, tokens + counter.count_messages(history.head) + counter.count_messages(history.tail)

    def _memory(self, out: list[Message], first: int, last: int, block: list[str], block_tokens: int, last_line: str, last_cost: int,
                exact: bool) -> int:
        """Append the memory message of turns first..last (`block`: its chunks); returns its tokens summed from
        the parts' counts (`_render`), 0 when not `exact`."""
        header = self._header(first, last, bool(block))
        out.append({"role": "user", "content": "\n".join([header, *block])})
        if not exact:
            return 0
        count = self.counter.count
        if not block:
            return self.counter.per_message + count(header)
        return self.counter.per_message + count(header + "\n") + block_tokens - last_cost + count(last_line)

    def _plan_record(self, history: History, chosen: dict[int, Option], candidates: list[TurnDigest], out: list[Message], size: int) -> Plan:
        """The plan with what Q_com needs, from the chosen options (no re-reading of the context)."""
        plans = self._plans
        count = len(candidates)
        position = {d.number: i for i, d in enumerate(candidates)}
        levels, kept_tokens = [1] * count, [0] * count
        kept_value, complete = [0.0] * count, [1.0] * count
        mass = [plans[d.number].mass for d in candidates]
        defined: set[str] = set()
        for number, option in chosen.items():
            defined |= plans[number].facts(option)[0]
        protected = history.turns[count:] + ([history.open] if history.open is not None else [])
        for digest in protected:
            for key_terms in digest.key_terms:
                defined.update(key_terms)
        for number, option in chosen.items():
            level, tokens, value, _ = option
            plan, i = plans[number], position[number]
            levels[i] = level
            kept_tokens[i] = tokens if level < 5 else plan.digest.tokens
            kept_value[i] = min(value, plan.mass)
            _, relevant, refs = plan.facts(option)
            if relevant:  # `quality.completeness`: the share of relevant kept lines whose references are all defined
                complete[i] = (relevant - sum(1 for r in refs if not defined.issuperset(r))) / relevant
        for digest in history.turns[count:]:
            values = history.values(digest)
            levels.append(5)
            kept_tokens.append(digest.tokens)
            kept_value.append(sum(values))
            mass.append(sum(values))
            complete.append(completeness(digest, values, range(len(values)), defined))
        forget = [d.number for d in candidates if d.number not in chosen]  # dropped to the headline
        return Plan(out, levels, kept_tokens, kept_value, complete, mass, forget, size)
