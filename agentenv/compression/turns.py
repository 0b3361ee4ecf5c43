"""A chat history as turns, with what a compressor needs to know about every line of every turn.

Turn 0 is the opening messages (system prompt, task); turn k ≥ 1 is the k-th assistant message and the
messages the environment added after it (tool results, probes, errors), as `info["turn"]` counts them.

Each line gets a **lexical relevance** to the task (the user messages of turn 0) in [0, 1]: the summed
weights of the task's terms it contains, capped at 1, where identifier-like terms (with `-` or `_`, or
letters mixed with digits: `acct-417`, `var-qzt`, `order_id`, `v2`) weigh 1 and other words and numbers
`WORD_WEIGHT`. A line that assigns a value (`key = value`, `key: value`) is *about* its key, so only the key's terms count, and it is a **fact**;
a later fact for the same key **supersedes** it. Another line that quotes a key already stated by a fact
(`replica lag: acct-417.balance read as 1190`) is **redundant** with that fact (maximal marginal relevance:
the fact line carries the value). A line's value to the task is
`relevance × (1 if fact else NON_FACT) × (SUPERSEDED if superseded) × (REDUNDANT if redundant)`.

`HistoryIndex` digests each completed turn once and keeps the supersession marks up to date as the history
grows, so a compressor's cost per call does not include re-reading old turns.
"""

from __future__ import annotations

import re
from typing import Any, Container, Sequence

from agentenv.compression.tokens import TokenCounter

__all__ = ["TurnDigest", "HistoryIndex", "turn_starts", "task_terms", "terms", "FACT_LINE", "WORD_WEIGHT", "NON_FACT", "SUPERSEDED", "REDUNDANT"]

Message = dict[str, Any]

WORD_WEIGHT = 0.15
NON_FACT = 0.5
SUPERSEDED = 0.1
REDUNDANT = 0.5
_KEY = re.compile(r"[A-Za-z_][\w.\-#\[\]]*")
_TERM = re.compile(r"[a-z0-9]+(?:[-_][a-z0-9]+)*")
_IDENTIFIER = re.compile(r"[-_]|[a-z].*[0-9]|[0-9].*[a-z]")  # a separator, or letters mixed with digits
FACT_LINE = re.compile(r"^\s*([A-Za-z_][\w.\-#\[\]]*)\s*(?::=|=|:)\s*(\S.*)$")
_STOPWORDS = frozenset(
    "a an and are as at be but by can do for from had has have if in into is it its may no not of on one or "
    "so such that the their then there these they this those to was were what when which while who will with "
    "you your only other get call".split()
)


def terms(text: str) -> list[str]:
    """Lower-cased words and identifiers of `text` (`acct-417.balance` → `acct-417`, `balance`)."""
    return _TERM.findall(text.lower())


def turn_starts(messages: Sequence[Message], start: int = 0, starts: list[int] | None = None) -> list[int]:
    """Index of the first message of every turn (turn 0 starts at 0); scanning from `start` extends `starts`."""
    starts = [0] if starts is None else starts
    for i in range(max(start, 1), len(messages)):
        if messages[i]["role"] == "assistant":
            starts.append(i)
    return starts


def task_terms(messages: Sequence[Message]) -> dict[str, float]:
    """Weighted terms of the task: the user messages before the first assistant message."""
    terms: dict[str, float] = {}
    for m in messages:
        if m["role"] == "assistant":
            break
        if m["role"] == "user":
            for term in _TERM.findall(m["content"].lower()):
                if term in _STOPWORDS or len(term) < 3:
                    continue
                terms[term] = 1.0 if _IDENTIFIER.search(term) else WORD_WEIGHT
    return terms


class TurnDigest:
    """One turn, as much of it as a compressor can use: the lines with some relevance to the task (in
    order; a compressor keeps the others only by keeping the turn verbatim) and per line its relevance,
    fact key, references to task identifiers (for facts) and token cost (the line plus a newline);
    `redundant` lines quote one of `known_keys` (the fact keys seen before this turn). `line_count` counts
    all non-blank lines and `tokens` is the exact size of the turn's messages as they are."""

    __slots__ = ("number", "first", "size", "line_count", "lines", "relevance", "keys", "refs", "costs", "tokens",
                 "superseded", "redundant", "version", "_values")

    def __init__(self, number: int, messages: Sequence[Message], terms: dict[str, float], counter: TokenCounter,
                 known_keys: Container[str] = ()):
        self.number = number
        self.first = messages[0]  # identity of the turn's first message: the index checks it is unchanged
        self.size = len(messages)
        self.line_count = 0
        self.lines: list[str] = []
        self.relevance: list[float] = []
        self.keys: list[str | None] = []
        self.refs: list[tuple[str, ...]] = []
        self.redundant: set[int] = set()
        vocabulary = terms.keys()
        findall = _TERM.findall
        for m in messages:
            for line in m["content"].split("\n"):
                if not line or line.isspace():
                    continue
                self.line_count += 1
                fact = FACT_LINE.match(line)
                about = vocabulary & findall((fact.group(1) if fact else line).lower())
                if not about:
                    continue
                if fact:
                    refs = vocabulary & findall(fact.group(2).lower())
                    self.keys.append(fact.group(1))
                    self.refs.append(tuple(t for t in refs if terms[t] == 1.0) if refs else ())
                else:
                    self.keys.append(None)
                    self.refs.append(())
                    if any(word in known_keys for word in _KEY.findall(line)):
                        self.redundant.add(len(self.lines))
                self.lines.append(line)
                self.relevance.append(min(1.0, sum(terms[t] for t in about)))
        count = counter.count
        self.costs = [count(line + "\n") for line in self.lines]
        self.tokens = counter.count_messages(messages)
        self.superseded: set[int] = set()
        self.version = 0  # bumped when a line is superseded, so derived caches know they are stale
        self._values: tuple[Any, list[float]] | None = None

    def values(self, extra_superseded: frozenset[int] = frozenset()) -> list[float]:
        """Per line: relevance × fact factor × currency factor (see the module doc); the same list object
        is returned while nothing changed."""
        key = (self.version, extra_superseded)
        if self._values is None or self._values[0] != key:
            gone = self.superseded | extra_superseded
            values = [
                r * (1.0 if k is not None else NON_FACT) * (SUPERSEDED if i in gone else 1.0) * (REDUNDANT if i in self.redundant else 1.0)
                for i, (r, k) in enumerate(zip(self.relevance, self.keys))
            ]
            self._values = (key, values)
        return self._values[1]


class HistoryIndex:
    """Digests of the turns of one history, built incrementally.

    `update(messages)` re-uses every digest whose turn is unchanged (checked by message identity) and
    digests the new completed turns (all but the last); a different history (another first message, or a
    shorter one) starts over. `open_turn` digests the last turn. `take_dirty()` returns the numbers of the
    completed turns whose lines were superseded since the last call.
    """

    def __init__(self, counter: TokenCounter):
        self.counter = counter
        self.terms: dict[str, float] = {}
        self.turns: list[TurnDigest] = []  # completed turns 1..n-1 (index i holds turn i + 1)
        self.starts: list[int] = [0]
        self.latest: dict[str, tuple[int, int]] = {}  # fact key → (turn number, line)
        self._head: Message | None = None
        self._scanned = 0
        self._open: TurnDigest | None = None
        self._dirty: set[int] = set()

    def update(self, messages: Sequence[Message]) -> tuple[list[int], list[TurnDigest]]:
        """(start index of every turn, digests of the completed turns) for `messages`."""
        if not messages or messages[0] is not self._head or len(messages) < self._scanned or (
            self.turns and messages[self.starts[len(self.turns)]] is not self.turns[-1].first
        ):
            self.__init__(self.counter)
            self._head = messages[0] if messages else None
            self.terms = task_terms(messages)
        self.starts = turn_starts(messages, self._scanned, self.starts)
        self._scanned = len(messages)
        starts = self.starts
        while len(self.turns) < len(starts) - 2:  # turn k is complete once turn k + 1 has started
            k = len(self.turns) + 1
            part = messages[starts[k] : starts[k + 1]]
            digest = self._open
            if digest is None or digest.number != k or digest.first is not part[0] or digest.size != len(part):
                digest = TurnDigest(k, part, self.terms, self.counter, self.latest)
            self._supersede(digest)
            self.turns.append(digest)
        return starts, self.turns

    def open_turn(self, messages: Sequence[Message]) -> TurnDigest:
        """Digest of the last (open) turn; call after `update`. Cached while that turn is unchanged."""
        start = self.starts[-1]
        cached = self._open
        if cached is None or cached.first is not messages[start] or cached.size != len(messages) - start:
            cached = self._open = TurnDigest(len(self.starts) - 1, messages[start:], self.terms, self.counter, self.latest)
        return cached

    def take_dirty(self) -> set[int]:
        """Numbers of the completed turns superseded since the last call."""
        dirty, self._dirty = self._dirty, set()
        return dirty

    def _supersede(self, digest: TurnDigest) -> None:
        for line, key in enumerate(digest.keys):
            if key is None:
                continue
            previous = self.latest.get(key)
            if previous is not None:
                old = self.turns[previous[0] - 1] if previous[0] < digest.number else digest
                old.superseded.add(previous[1])
                old.version += 1
                self._dirty.add(old.number)
            self.latest[key] = (digest.number, line)

    def tail_superseded(self, open_turn: TurnDigest) -> dict[int, frozenset[int]]:
        """Lines of completed turns that facts in the open (last) turn supersede: turn number → lines."""
        hits: dict[int, set[int]] = {}
        for key in open_turn.keys:
            if key is not None and key in self.latest:
                number, line = self.latest[key]
                hits.setdefault(number, set()).add(line)
        return {number: frozenset(lines) for number, lines in hits.items()}
