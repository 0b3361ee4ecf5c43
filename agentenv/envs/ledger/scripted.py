"""LedgerReader: the oracle-reading scripted policy for Ledger-v0, and `LedgerOracle`, its compression upper bound.

It reads the feed one page a turn and answers each probe by parsing **only its context** (the observation,
possibly compressed): the latest `key = value` line per key, variable definitions followed link by link,
event lines counted by page, and whether a key was set at all. It never sees the generator, so with a
compressed context its probe accuracy measures exactly what the compressor kept.

When the env asks the agent to compress its own context (zip mode "agent", `AGENT_ZIP_NOTE` in the system message),
the reader also levels each page it has read, from that page alone and the brief's list of tracked keys:
`<zip level=3/>` for a page with an event on a tracked account (events are kept from level 3), `level=2` for
one with a fact about a tracked key, `level=1` (drop) otherwise. These are its demonstrations of compression
actions. It cannot know which facts a later probe will ask about, so it keeps every tracked fact;
`LedgerOracle` (given the env) keeps exactly what later probes need, at the coarsest level that holds it.
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

from agentenv.compression.zip import level_keeps
from agentenv.envs.ledger.env import AGENT_ZIP_NOTE
from agentenv.types import Generation

__all__ = ["LedgerReader", "LedgerOracle", "READ"]

Messages = list[dict[str, Any]]

READ = '<tool_call>{"name": "read", "arguments": {}}</tool_call>'
_FACT = re.compile(r"^([A-Za-z_][\w.\-#]*) = (.+?)\s*$")
_EVENT = re.compile(r"^event (\w+) on ([\w\-]+) \(page (\d+), ref #(\d+)\)$")
_LINK = re.compile(r"^([\w\-]+) ([+-]) (\d+)$")
_LOOKUP = re.compile(r"PROBE (\d+) \((?:lookup|multi-hop)\): what is the current value of ([\w.\-#]+)\?")
_AGGREGATE = re.compile(r"PROBE (\d+) \(aggregation\): how many (\w+) events on ([\w\-]+) are in pages (\d+)-(\d+)\?")
_NEGATIVE = re.compile(r"PROBE (\d+) \(negative\): was ([\w.\-#]+) ever set\?")
_AGENT_MARK = AGENT_ZIP_NOTE.split(":")[0]  # "You compress your own context"
_TRACKED = re.compile(r"^- (acct-\d+): .*; variables (.+)$", re.MULTILINE)  # a brief's line per sub-ledger


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


def _latest_turn(messages: Messages) -> Messages | None:
    """The messages since the last assistant message (the env's answer to it), None before the first one."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "assistant":
            return messages[i + 1 :]
    return None


class LedgerReader:
    """Deterministic Ledger-v0 agent: `read` every turn; answer a probe from the context when one is open;
    with agent-driven compression, level the page just read first (`zip_level`).

    `level_shift` k moves every level it chooses by k, cyclically over 1..5 (0: its own choice). With
    `every_level`, a warm start records each task with all five shifts (`variants`): every kind of page is
    shown at every level, once each, so the best fit leaves the level choice uniform — the compression decision
    RL (and HRR's per-turn Q_com credit) is left to make; the answers still come from the context as compressed.
    """

    level_shift = 0  # class defaults: a subclass that levels pages its own way need not call __init__
    every_level = False

    def __init__(self, level_shift: int = 0, every_level: bool = False):
        self.level_shift, self.every_level = level_shift % 5, every_level

    def variants(self) -> list["LedgerReader"]:
        """The demonstrators a warm start records each task with: itself, or with `every_level` one per shift."""
        if not self.every_level:
            return [self]
        return [type(self)(level_shift=shift) for shift in range(5)]

    def generate(self, contexts: Sequence[Messages]) -> list[Generation]:
        return [Generation(self.act(messages)) for messages in contexts]

    def act(self, messages: Messages) -> str:
        probes = []
        for m in reversed(messages):  # the messages since the last assistant turn
            if m["role"] == "assistant":
                break
            if m["role"] == "user" and m["content"].startswith("PROBE "):
                probes.insert(0, m["content"])
        tag = ""
        if messages and _AGENT_MARK in messages[0]["content"]:  # the system message asks for it
            level = self.zip_level(messages)
            tag = "" if level is None else f"<zip level={(level - 1 + self.level_shift) % 5 + 1}/>"
        if not probes:
            return tag + READ
        memory = _Memory(messages)
        calls = []
        for probe in probes:
            value = memory.answer(probe)
            if "final probe" in probe:
                return tag + "".join(calls) + f"<answer>{value}</answer>"
            number = int(probe.split()[1])
            calls.append(f"<tool_call>{json.dumps({'name': 'answer', 'arguments': {'probe': number, 'value': value}})}</tool_call>")
        return tag + "".join(calls) + READ

    def zip_level(self, messages: Messages) -> int | None:
        """The level for the turn just before this one (the page it read), from that page and the brief's
        tracked keys: 3 with an event on a tracked account, 2 with a fact about a tracked key, else 1; None
        before the first turn."""
        latest = _latest_turn(messages)
        if latest is None:
            return None
        accounts, variables = set(), set()
        for account, chain in _TRACKED.findall(next((m["content"] for m in messages if m["role"] == "user"), "")):
            accounts.add(account)
            variables.update(v.strip() for v in chain.split(","))
        level = 1
        for m in latest:
            if m["role"] != "tool" or not m["content"].startswith("== feed page"):
                continue
            for line in m["content"].split("\n"):
                event = _EVENT.match(line)
                if event and event.group(2) in accounts:
                    return 3
                fact = _FACT.match(line)
                if fact and (fact.group(1) in variables or fact.group(1).split(".")[0] in accounts):
                    level = 2
        return level


class LedgerOracle(LedgerReader):
    """`LedgerReader` that compresses with hindsight: it levels each page at the coarsest level that keeps
    every line a later probe will ask about (read from the env's generator, which no real agent sees), so
    it drops the pages nothing later needs. The upper bound for agent-driven compression. Needs the env it
    plays (`env`, or a wrapper of it), with zip in mode "agent"."""

    def __init__(self, env: Any):
        self.env = env.unwrapped

    def zip_level(self, messages: Messages) -> int | None:
        env = self.env
        turn = env.context_window.compressor.index.open_turn()  # the turn this action answers, as zip will see it
        if turn is None:
            return None
        needed = {f.line for f in env.stream.needed_after(env.page)}  # asked by a probe after the next read
        want = {i for i, line in enumerate(turn.lines) if line.strip() in needed}
        keeps = level_keeps(turn.values())
        return next(level for level in range(1, 6) if want.issubset(keeps[level]))
