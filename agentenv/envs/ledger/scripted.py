"""LedgerReader: the oracle-reading scripted policy for Ledger-v0.

It reads the feed one page a turn and answers each probe by parsing **only its context** (the observation,
possibly compressed): the latest `key = value` line per key, variable definitions followed link by link,
event lines counted by page, and whether a key was set at all. It never sees the generator, so with a
compressed context its probe accuracy measures exactly what the compressor kept.
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

from agentenv.types import Generation

__all__ = ["LedgerReader", "READ"]

Messages = list[dict[str, Any]]

READ = '<tool_call>{"name": "read", "arguments": {}}</tool_call>'
_FACT = re.compile(r"^([A-Za-z_][\w.\-#]*) = (.+?)\s*$")
_EVENT = re.compile(r"^event (\w+) on ([\w\-]+) \(page (\d+), ref #(\d+)\)$")
_LINK = re.compile(r"^([\w\-]+) ([+-]) (\d+)$")
_LOOKUP = re.compile(r"PROBE (\d+) \((?:lookup|multi-hop)\): what is the current value of ([\w.\-#]+)\?")
_AGGREGATE = re.compile(r"PROBE (\d+) \(aggregation\): how many (\w+) events on ([\w\-]+) are in pages (\d+)-(\d+)\?")
_NEGATIVE = re.compile(r"PROBE (\d+) \(negative\): was ([\w.\-#]+) ever set\?")


class _Memory:
    """What a context says: the latest value per key, and the distinct event lines."""

    def __init__(self, messages: Messages):
        self.facts: dict[str, str] = {}
        self.events: set[tuple[str, str, int, str]] = set()
        for m in messages:
            if m["role"] == "assistant":
                continue
            for line in m["content"].split("\n"):
                fact = _FACT.match(line)
                if fact:
                    self.facts[fact.group(1)] = fact.group(2)
                elif line.startswith("event "):
                    event = _EVENT.match(line)
                    if event:
                        self.events.add((event.group(1), event.group(2), int(event.group(3)), event.group(4)))

    def resolve(self, key: str, depth: int = 0) -> int | None:
        """Value of a variable by following its definitions; None when a link is missing (or cyclic)."""
        definition = self.facts.get(key)
        if definition is None or depth > 32:
            return None
        if re.fullmatch(r"-?\d+", definition):
            return int(definition)
        link = _LINK.match(definition)
        if link is None:
            return None
        base = self.resolve(link.group(1), depth + 1)
        if base is None:
            return None
        return base + int(link.group(3)) if link.group(2) == "+" else base - int(link.group(3))

    def answer(self, probe: str) -> str:
        match = _LOOKUP.search(probe)
        if match:
            key = match.group(2)
            if key.startswith("var-"):
                value = self.resolve(key)
                return "unknown" if value is None else str(value)
            return self.facts.get(key, "unknown")
        match = _AGGREGATE.search(probe)
        if match:
            kind, account, first, last = match.group(2), match.group(3), int(match.group(4)), int(match.group(5))
            return str(sum(1 for k, a, page, _ in self.events if k == kind and a == account and first <= page <= last))
        match = _NEGATIVE.search(probe)
        if match:
            return "yes" if match.group(2) in self.facts else "no"
        return "unknown"


class LedgerReader:
    """Deterministic Ledger-v0 agent: `read` every turn; answer a probe from the context when one is open."""

    def generate(self, contexts: Sequence[Messages]) -> list[Generation]:
        return [Generation(self.act(messages)) for messages in contexts]

    def act(self, messages: Messages) -> str:
        probes = []
        for m in reversed(messages):  # the messages since the last assistant turn
            if m["role"] == "assistant":
                break
            if m["role"] == "user" and m["content"].startswith("PROBE "):
                probes.insert(0, m["content"])
        if not probes:
            return READ
        memory = _Memory(messages)
        calls = []
        for probe in probes:
            value = memory.answer(probe)
            if "final probe" in probe:
                return "".join(calls) + f"<answer>{value}</answer>"
            number = int(probe.split()[1])
            calls.append(f"<tool_call>{json.dumps({'name': 'answer', 'arguments': {'probe': number, 'value': value}})}</tool_call>")
        return "".join(calls) + READ
