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
grows, so a compressor's cost per call does not include re-reading old turns. Fed a streaming history, it
also forgets the turns a compressor has dropped for good, so what it holds is bounded by what the context
can show, not by the length of the episode.
"""

from __future__ import annotations

import re
from typing import Any, Container, Iterable, Sequence

from agentenv.compression.tokens import TokenCounter
from agentenv.types import Message

__all__ = ["TurnDigest", "HistoryIndex", "turn_starts", "task_terms", "terms", "FACT_LINE", "WORD_WEIGHT", "NON_FACT", "SUPERSEDED", "REDUNDANT"]


WORD_WEIGHT = 0.15
NON_FACT = 0.5
SUPERSEDED = 0.1
REDUNDANT = 0.5
_KEY = re.compile(r"[A-Za-z_][\w.\-#\[\]]*")
_ASCII_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-#\[\]]*")  # _KEY on ASCII text (\w = [A-Za-z0-9_] there), without Unicode lookups
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
    fact key and its terms (`terms(key)`), references to task identifiers (for facts) and token cost (the
    line plus a newline); `flush` when none of those lines starts with a space character;
    `redundant` lines quote one of `known_keys` (the fact keys seen before this turn). `line_count` counts
    all non-blank lines and `tokens` is the exact size of the turn's messages as they are."""

    __slots__ = ("number", "messages", "first", "size", "line_count", "lines", "relevance", "keys", "key_terms", "refs", "costs",
                 "tokens", "flush", "superseded", "redundant", "version", "_values")

    def __init__(self, number: int, messages: Sequence[Message], terms: dict[str, float], counter: TokenCounter,
                 known_keys: Container[str] = ()):
        self.number = number
        self.messages = messages
        self.first = messages[0]  # identity of the turn's first message: the index checks it is unchanged
        self.size = len(messages)
        self.lines: list[str] = []
        lines = self.lines
        self.relevance: list[float] = []
        self.keys: list[str | None] = []
        self.key_terms: list[list[str]] = []  # terms(key) of a fact line, [] for other lines
        self.refs: list[tuple[str, ...]] = []
        self.redundant: set[int] = set()
        vocabulary, weight = terms.keys(), terms.__getitem__
        findall, match = _TERM.findall, FACT_LINE.match
        line_count = 0
        for m in messages:
            for line in m["content"].split("\n"):
                if not line or line.isspace():
                    continue
                line_count += 1
                fact = match(line)
                words = findall((fact.group(1) if fact else line).lower())
                if vocabulary.isdisjoint(words):  # most lines: no set built for them
                    continue
                if fact:
                    refs = vocabulary & findall(fact.group(2).lower())
                    self.keys.append(fact.group(1))
                    self.key_terms.append(words)
                    self.refs.append(tuple(t for t in refs if terms[t] == 1.0) if refs else ())
                else:
                    self.keys.append(None)
                    self.key_terms.append([])
                    self.refs.append(())
                    if any(map(known_keys.__contains__, (_ASCII_KEY if line.isascii() else _KEY).findall(line))):
                        self.redundant.add(len(lines))
                lines.append(line)
                self.relevance.append(min(1.0, sum(map(weight, vocabulary & words))))
        self.line_count = line_count
        self.flush = not any(line[0].isspace() for line in lines)
        count = counter.count
        self.costs = [count(line + "\n") for line in lines]
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
    """Digests of the turns of one history, built incrementally; fed in one of two ways.

    * `update(messages)`: the whole history each call. It may only grow (checked by message identity); a
      different or shorter one starts over.
    * `extend(new)`: only the messages since the last call (a streaming history, `ContextWindow`). Then a
      compressor may `forget` turns it has dropped for good: the index holds the opening messages, the live
      completed turns and the open turn, not the whole history.

    A completed turn is digested once, when `digest()` is next called (turn k is complete once turn k + 1 has
    started); `open_turn()` digests the last turn (cached while it is unchanged); `take_dirty()` returns the
    numbers of the live turns whose lines were superseded since the last call. `latest` (fact key → where its
    latest fact is) grows with the number of distinct fact keys, not with the number of turns.
    """

    def __init__(self, counter: TokenCounter):
        self.counter = counter
        self.reset()

    def reset(self) -> None:
        """Start a new history."""
        self.epoch = object()  # a new one per history: compressors key their own caches on it
        self.terms: dict[str, float] = {}
        self.head: list[Message] = []  # turn 0
        self.turns: list[TurnDigest] = []  # live completed turns, ascending numbers (gaps where forgotten)
        self.by_number: dict[int, TurnDigest] = {}
        self.latest: dict[str, tuple[int, int]] = {}  # fact key → (turn number, line)
        self.open_number = 0  # number of the last (open) turn; 0 before the first assistant message
        self.open_messages: list[Message] = []
        self.forgotten = 0
        self._raw: list[tuple[int, list[Message]]] = []  # completed turns not digested yet
        self._open: TurnDigest | None = None
        self._dirty: set[int] = set()
        self._first: Message | None = None
        self._last: Message | None = None
        self._scanned = 0

    def extend(self, messages: Sequence[Message]) -> None:
        """Append the messages that followed the last ones given."""
        for m in messages:
            if m["role"] == "assistant" and self._scanned:
                if self.open_number:
                    self._raw.append((self.open_number, self.open_messages))
                else:
                    self.terms = task_terms(self.head)
                self.open_number += 1
                self.open_messages = [m]
            elif self.open_number:
                self.open_messages.append(m)
            else:
                self.head.append(m)
            self._scanned += 1
        if messages:
            if self._first is None:
                self._first = messages[0]
            self._last = messages[-1]

    def update(self, messages: Sequence[Message]) -> list[TurnDigest]:
        """Digests of the completed turns of the whole history `messages`."""
        seen = self._scanned
        if not messages or messages[0] is not self._first or len(messages) < seen or (seen and messages[seen - 1] is not self._last):
            self.reset()
            seen = 0
        if len(messages) > seen:
            self.extend(messages[seen:])
        return self.digest()

    def digest(self) -> list[TurnDigest]:
        """Digest the turns completed since the last call; returns the live completed turns."""
        for number, part in self._raw:
            digest = self._open
            if digest is None or digest.number != number or digest.size != len(part) or digest.first is not part[0]:
                digest = TurnDigest(number, part, self.terms, self.counter, self.latest)
            self._supersede(digest)
            self.turns.append(digest)
            self.by_number[number] = digest
        self._raw = []
        return self.turns

    def open_turn(self) -> TurnDigest | None:
        """Digest of the last (open) turn, None before the first assistant message. Cached while unchanged."""
        if not self.open_number:
            return None
        cached, part = self._open, self.open_messages
        if cached is None or cached.number != self.open_number or cached.size != len(part) or cached.first is not part[0]:
            cached = self._open = TurnDigest(self.open_number, list(part), self.terms, self.counter, self.latest)
        return cached

    def holds(self, number: int) -> bool:
        """Whether turn `number` (≥ 1) is still in the index (not forgotten)."""
        return number in self.by_number or number == self.open_number or any(n == number for n, _ in self._raw)

    def forget(self, numbers: Iterable[int]) -> None:
        """Drop completed turns for good: their digests and messages are released."""
        gone = self.by_number.keys() & set(numbers)
        if not gone:
            return
        self.turns = [d for d in self.turns if d.number not in gone]
        for number in gone:
            del self.by_number[number]
        self._dirty -= gone
        self.forgotten += len(gone)

    def take_dirty(self) -> set[int]:
        """Numbers of the live completed turns superseded since the last call."""
        dirty, self._dirty = self._dirty, set()
        return dirty

    def _supersede(self, digest: TurnDigest) -> None:
        for line, key in enumerate(digest.keys):
            if key is None:
                continue
            previous = self.latest.get(key)
            if previous is not None:
                old = digest if previous[0] == digest.number else self.by_number.get(previous[0])
                if old is not None:  # a forgotten turn needs no marks
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
