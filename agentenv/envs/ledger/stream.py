"""LedgerStream: the seeded fact stream behind Ledger-v0 (LedgerStream-256, docs/anchors-domains.md §1.3).

A stream of `turns` feed pages, each a templated tool output of log lines (about 150–400 tokens) holding:

* **facts** about the tracked keys: `acct-417.balance = 1280` (an account field) or `var-qzt = var-mkd + 3`
  (a link of a variable chain; the last link is a number); a later fact for a key **overwrites** it;
* **events**: `event refund on acct-417 (page 12, ref #3321)`;
* **distractors**: facts and events about near-duplicate keys (`acct-471`, `var-qtz`) and stale mentions of
  tracked keys (`replica lag: acct-417.balance read as 1190 (stale)`);
* noise: heartbeats, HTTP logs, metrics.

`ledgers` independent sub-ledgers (one account and one variable chain each) are interleaved (MEM1-style
composition). A **probe** every `probe_every` pages and on the last page asks one question with an exact
answer computed from the generator's state: *lookup* (current value of a field), *multi-hop* (value of the
chain's head variable), *aggregation* (events of a type on an account in a page range) or *negative* (was a
field ever set?). Each probe names the facts it needs (`Probe.needs`); `live_facts(page)` lists the facts
still needed at a page (shown by then, needed by a probe at or after it): the denominator of retention.

Same seed, same stream: the state (facts, events, probes) is drawn once, at construction, from one
`random.Random(seed)`; the rest of page k (distractors, noise, line order, timestamps) from its own
`random.Random` seeded by (seed, k) when the page is read (`pages[k - 1]`). So a stream holds only its
facts (about 0.2 KB per page), not its text (about 1.5 KB per page), and a long episode's memory does not
grow with page text it has already shown.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["LedgerConfig", "Fact", "Probe", "LedgerStream", "PROBE_KINDS"]

FIELDS = ("balance", "status", "owner", "tier", "limit", "region")
SET_FIELDS = 4  # fields of an account that the stream ever sets; negative probes ask about the other two
_STATUS = ("open", "frozen", "closed", "pending", "review")
_OWNERS = ("alice", "bruno", "chen", "dana", "emeka", "farah", "goran", "hana", "ivan", "jules", "kofi", "lena")
_TIERS = ("bronze", "silver", "gold", "platinum")
_REGIONS = ("emea", "apac", "amer", "latam")
EVENT_TYPES = ("refund", "chargeback", "dispute")
_SOURCES = ("billing-sync", "crm-export", "audit-log", "ops-stream")
PROBE_KINDS = ("lookup", "multihop", "aggregation", "negative")
_PROBE_WEIGHTS = (0.3, 0.3, 0.2, 0.2)
_RESOURCES = ("orders", "invoices", "users", "sessions", "carts", "payouts", "shipments")
_HOSTS = ("pay-gw-2", "ledger-db-1", "kv-cache-3", "auth-svc", "search-7")
_CODES = ("200", "200", "200", "201", "304", "404", "500")
_NOTES = (
    "nightly reconciliation finished without errors",
    "schema migration 42 applied to the reporting replica",
    "rate limiter raised the burst allowance for the partner api",
    "on-call handover completed, no open incidents",
    "export job compressed 1.2 GB of archived statements",
    "feature flag new-checkout rolled out to 25 percent of traffic",
)


@dataclass(frozen=True)
class LedgerConfig:
    """Stream shape and difficulty knobs (defaults: the 256-turn stress setting)."""

    turns: int = 256
    ledgers: int = 4
    probe_every: int = 16
    facts_per_page: float = 1.0
    events_per_page: float = 0.3
    distractors_per_page: float = 1.5
    chain_length: int = 3
    noise_lines: tuple[int, int] = (6, 14)
    aggregation_window: int = 32

    def __post_init__(self) -> None:
        if self.turns < 1 or self.ledgers < 1 or self.probe_every < 1:
            raise ValueError("turns, ledgers and probe_every must be at least 1")
        if self.ledgers > 64:
            raise ValueError("at most 64 ledgers (their ids must stay distinct and readable)")
        if self.chain_length < 1:
            raise ValueError("chain_length must be at least 1")
        if min(self.facts_per_page, self.events_per_page, self.distractors_per_page) < 0:
            raise ValueError("per-page rates must be non-negative")
        low, high = self.noise_lines
        if not 0 <= low <= high:
            raise ValueError("noise_lines must be (low, high) with 0 <= low <= high")
        if self.aggregation_window < 1:
            raise ValueError("aggregation_window must be at least 1")


@dataclass(frozen=True)
class Fact:
    """One line of the stream that a probe may need: the page it is on, its key and its exact text."""

    page: int
    key: str
    line: str


@dataclass(frozen=True)
class Probe:
    """A question asked with page `page`; `needs` are the facts its answer is computed from."""

    number: int
    page: int
    kind: str
    question: str
    answer: str
    needs: tuple[Fact, ...]
    final: bool


_TWO_DIGITS = tuple(f"{i:02d}" for i in range(60))


def _pick(draw, options: tuple[str, ...]) -> str:
    """`random.choice` for the hot paths: one `random()` draw instead of rejection sampling on bits."""
    return options[int(draw() * len(options))]


def _below(getrandbits: Callable[[int], int], n: int) -> int:
    """`random.Random._randbelow(n)` (rejection sampling on `getrandbits`), what `randrange` and `choice` draw
    with: the same draws without their Python-level call chain."""
    k = n.bit_length()
    r = getrandbits(k)
    while r >= n:
        r = getrandbits(k)
    return r


def _shuffle(lines: list[str], getrandbits: Callable[[int], int]) -> None:
    """`random.Random.shuffle(lines)` with `_randbelow` (rejection sampling on `getrandbits`) inlined: the same
    draws and so the same pages, without two Python calls per line."""
    for i in range(len(lines) - 1, 0, -1):
        n = i + 1
        k = n.bit_length()
        j = getrandbits(k)
        while j >= n:
            j = getrandbits(k)
        lines[i], lines[j] = lines[j], lines[i]


def _poisson(rng: random.Random, mean: float, cap: int = 6) -> int:
    """Knuth's Poisson draw (small means), capped."""
    if mean <= 0:
        return 0
    limit, k, p = pow(2.718281828459045, -mean), 0, rng.random()
    while p > limit and k < cap:
        k += 1
        p *= rng.random()
    return k


class _Names:
    """Tracked account ids and variable names, and their near-duplicates (never tracked)."""

    def __init__(self, rng: random.Random, ledgers: int, chain_length: int):
        numbers = rng.sample(range(100, 1000), ledgers)
        self.accounts = [f"acct-{n}" for n in numbers]
        letters = "abcdefghijkmnopqrstuvwxyz"
        taken: set[str] = set()
        self.chains: list[list[str]] = []
        for _ in range(ledgers):
            chain = []
            while len(chain) < chain_length:
                name = "var-" + "".join(rng.sample(letters, 3))
                if name not in taken:
                    taken.add(name)
                    chain.append(name)
            self.chains.append(chain)
        tracked = set(self.accounts) | taken
        self.account_twins = {a: self._twins(rng, a[5:], tracked, "acct-", "0123456789") for a in self.accounts}
        self.var_twins = {v: self._twins(rng, v[4:], tracked, "var-", letters) for chain in self.chains for v in chain}

    @staticmethod
    def _twins(rng: random.Random, stem: str, tracked: set[str], prefix: str, alphabet: str) -> list[str]:
        """Two look-alikes of `prefix + stem`: a transposition and a one-character change."""
        twins: list[str] = []
        for _ in range(50):
            chars = list(stem)
            i = rng.randrange(len(chars) - 1)
            if len(twins) == 0 and chars[i] != chars[i + 1]:
                chars[i], chars[i + 1] = chars[i + 1], chars[i]
            else:
                j = rng.randrange(len(chars))
                chars[j] = rng.choice(alphabet.replace(chars[j], ""))
            name = prefix + "".join(chars)
            if name not in tracked and name not in twins and (prefix != "acct-" or chars[0] != "0"):
                twins.append(name)
            if len(twins) == 2:
                break
        while not twins:  # every transposition was taken or invalid ("208": "028", "280" tracked); drawn only then,
            chars = list(stem)  # so the streams of every other seed are unchanged
            j = rng.randrange(len(chars))
            chars[j] = rng.choice(alphabet.replace(chars[j], ""))
            name = prefix + "".join(chars)
            if name not in tracked and (prefix != "acct-" or chars[0] != "0"):
                twins.append(name)
        return twins


class LedgerStream:
    """One episode's stream: `pages[p-1]` is the text of page p, `probes` the questions, `brief` the task.

    Args:
        config: the stream's shape.
        seed: seeds the stream's `random.Random`.
    """

    def __init__(self, config: LedgerConfig, seed: int):
        self.config = config
        self.seed = seed
        rng = random.Random(seed)
        self._rng = rng
        names = _Names(rng, config.ledgers, config.chain_length)
        self.names = names
        self.set_fields = [rng.sample(FIELDS, SET_FIELDS) for _ in range(config.ledgers)]
        self.current: dict[str, Fact] = {}  # key → its latest fact
        self._history: dict[str, tuple[list[int], list[Fact]]] = {}  # key → (pages, facts) in page order
        self._values: dict[str, str] = {}
        self._defs: dict[str, tuple[str, str, int] | int] = {}  # var → (other, op, constant) or a number
        self._events: list[tuple[str, str, Fact]] = []  # (type, account, fact)
        self._clock = rng.randrange(8 * 3600, 9 * 3600)
        self._page_seconds = 40 * (config.noise_lines[1] + 1)  # room for every timestamp of a page
        self._state_lines: list[tuple[str, ...]] = []  # per page: its fact and event lines, in draw order
        self.pages = _Pages(self)
        self.probes: list[Probe] = []
        for page in range(1, config.turns + 1):
            self._state_lines.append(self._page_state(page))
            if page % config.probe_every == 0 or page == config.turns:
                self.probes.append(self._probe(page, final=page == config.turns))
        until: dict[Fact, int] = {}
        for probe in self.probes:
            for fact in probe.needs:
                until[fact] = max(until.get(fact, 0), probe.page)
        self._needed = sorted(until.items(), key=lambda item: item[0].page)
        self._event_pages = [f.page for _, _, f in self._events]
        self.probe_at = {p.page: p for p in self.probes}
        self.brief = self._brief()

    # -- the task --------------------------------------------------------------------------------

    def _brief(self) -> str:
        c = self.config
        lines = [
            f"Monitor a stream of {c.turns} feed pages. Call read() to get the next page.",
            "Track only these keys (similar-looking keys belong to other records):",
        ]
        for account, chain in zip(self.names.accounts, self.names.chains):
            lines.append(f"- {account}: {', '.join(FIELDS)}; variables {', '.join(chain)}")
        lines += [
            "A fact is a line `key = value`; a later line for the same key replaces it. A variable may be defined "
            "from another one (`var-abc = var-def + 3`). Events read `event refund on acct-123 (page 12, ref #3321)`.",
            f"Every {c.probe_every} pages a PROBE asks about the tracked keys: answer it with the answer tool, then "
            "keep reading. Answer the final probe with <answer>...</answer>.",
        ]
        return "\n".join(lines)

    # -- pages -----------------------------------------------------------------------------------

    def _value(self, field: str, rng: random.Random) -> str:
        if field == "balance":
            return str(rng.randrange(100, 10000))
        if field == "limit":
            return str(rng.randrange(5, 100) * 100)
        return rng.choice({"status": _STATUS, "owner": _OWNERS, "tier": _TIERS, "region": _REGIONS}[field])

    def _set(self, page: int, key: str, value: str, line: str) -> Fact:
        fact = Fact(page, key, line)
        self.current[key] = fact
        pages, facts = self._history.setdefault(key, ([], []))
        pages.append(page)
        facts.append(fact)
        self._values[key] = value
        return fact

    def _fact_line(self, page: int, keys_this_page: set[str]) -> str | None:
        rng = self._rng
        ledger = rng.randrange(self.config.ledgers)
        if rng.random() < 0.6:
            field = rng.choice(self.set_fields[ledger])
            key, value, definition = f"{self.names.accounts[ledger]}.{field}", self._value(field, rng), None
        else:
            chain = self.names.chains[ledger]
            position = rng.randrange(len(chain))
            key = chain[position]
            if position == len(chain) - 1:
                definition = rng.randrange(1, 100)
                value = str(definition)
            else:
                definition = (chain[position + 1], rng.choice("+-"), rng.randrange(1, 10))
                value = f"{definition[0]} {definition[1]} {definition[2]}"
        if key in keys_this_page:  # one fact per key per page, so "latest" never depends on line order
            return None
        keys_this_page.add(key)
        if definition is not None:
            self._defs[key] = definition
        line = f"{key} = {value}"
        self._set(page, key, value, line)
        return line

    def _event_line(self, page: int) -> str:
        rng = self._rng
        ledger = rng.randrange(self.config.ledgers)
        account = self.names.accounts[ledger]
        kind = rng.choice(EVENT_TYPES)
        tracked = rng.random() < 0.6
        if not tracked:
            account = rng.choice(self.names.account_twins[account])
        line = f"event {kind} on {account} (page {page}, ref #{rng.randrange(1000, 10000)})"
        if tracked:
            self._events.append((kind, account, Fact(page, f"event:{kind}:{account}", line)))
        return line

    def _distractor_line(self, rng: random.Random) -> str:
        ledger = rng.randrange(self.config.ledgers)
        roll = rng.random()
        if roll < 0.45:
            twin = rng.choice(self.names.account_twins[self.names.accounts[ledger]])
            field = rng.choice(FIELDS)
            return f"{twin}.{field} = {self._value(field, rng)}"
        if roll < 0.75:
            var = rng.choice(self.names.chains[ledger])
            twin = rng.choice(self.names.var_twins[var])
            if rng.random() < 0.5:
                return f"{twin} = {rng.randrange(1, 100)}"
            return f"{twin} = {rng.choice(self.names.chains[ledger])} {rng.choice('+-')} {rng.randrange(1, 10)}"
        field = rng.choice(self.set_fields[ledger])
        key = f"{self.names.accounts[ledger]}.{field}"
        return f"replica lag: {key} read as {self._value(field, rng)} (stale, {rng.randrange(2, 90)} s behind)"

    @staticmethod
    def _noise_line(r: Callable[[], float]) -> str:
        """A log line drawn with `r` (a Random's `random`); "{t}" marks where its timestamp goes (stamped in page
        order after shuffling)."""
        roll = int(r() * 6)
        if roll == 0:
            return f"{{t}} INFO worker-{1 + int(r() * 8)} heartbeat ok latency={2 + int(r() * 88)}ms"
        if roll == 1:
            code = _CODES[int(r() * len(_CODES))]
            return f"{{t}} GET /v2/{_pick(r, _RESOURCES)}?page={1 + int(r() * 49)} {code} {3 + int(r() * 397)}ms"
        if roll == 2:
            return f"{{t}} DEBUG cache {_pick(r, _RESOURCES)} hit-ratio={r():.2f} size={1 + int(r() * 998)}k"
        if roll == 3:
            return f"{{t}} WARN retrying upstream {_pick(r, _HOSTS)} attempt {1 + int(r() * 4)}/5"
        if roll == 4:
            return f"metrics cpu={3 + int(r() * 96)}% mem={200 + int(r() * 3800)}MB queue-depth={int(r() * 300)}"
        return f"{{t}} NOTE {_pick(r, _NOTES)}"

    def _page_state(self, page: int) -> tuple[str, ...]:
        """Draw page `page`'s facts and events (they change the state the probes ask about)."""
        c, rng = self.config, self._rng
        lines: list[str] = []
        keys: set[str] = set()
        for _ in range(_poisson(rng, c.facts_per_page)):
            line = self._fact_line(page, keys)
            if line is not None:
                lines.append(line)
        lines += [self._event_line(page) for _ in range(_poisson(rng, c.events_per_page))]
        return tuple(lines)

    def page_text(self, page: int) -> str:
        """The text of page `page` (1-based): its state lines with distractors and noise, shuffled and
        timestamped; the same text every time."""
        c = self.config
        rng = random.Random(f"{self.seed}/{page}")
        lines = list(self._state_lines[page - 1])
        lines += [self._distractor_line(rng) for _ in range(_poisson(rng, c.distractors_per_page))]
        low, high = c.noise_lines
        noise, draw, bits = self._noise_line, rng.random, rng.getrandbits
        lines += [noise(draw) for _ in range(low + _below(bits, high - low + 1))]  # rng.randint(low, high)
        _shuffle(lines, bits)
        clock = self._clock + (page - 1) * self._page_seconds
        digits = _TWO_DIGITS
        for i, line in enumerate(lines):
            if line.startswith("{t}"):
                clock += 1 + int(draw() * 39)
                lines[i] = f"{digits[clock // 3600 % 24]}:{digits[clock // 60 % 60]}:{digits[clock % 60]}{line[3:]}"
        header = f"== feed page {page}/{c.turns} · {_SOURCES[_below(bits, len(_SOURCES))]} =="
        return "\n".join([header, *lines])

    # -- probes ----------------------------------------------------------------------------------

    def _chain_value(self, chain: list[str]) -> int | None:
        value: int | None = None
        for var in reversed(chain):
            definition = self._defs.get(var)
            if definition is None:
                return None
            if isinstance(definition, int):
                value = definition
            else:
                _, op, constant = definition  # a link always refers to the next variable of its chain
                if value is None:
                    return None
                value = value + constant if op == "+" else value - constant
        return value

    def _probe(self, page: int, final: bool) -> Probe:
        rng, c = self._rng, self.config
        number = len(self.probes) + 1
        set_keys = [k for k in self.current if not k.startswith("var-")]
        complete = [chain for chain in self.names.chains if self._chain_value(chain) is not None]
        kinds = [k for k in PROBE_KINDS if (k != "lookup" or set_keys) and (k != "multihop" or complete)]
        weights = [_PROBE_WEIGHTS[PROBE_KINDS.index(k)] for k in kinds]
        kind = rng.choices(kinds, weights)[0]
        if kind == "lookup":
            key = rng.choice(sorted(set_keys))
            question, answer, needs = f"what is the current value of {key}?", self._values[key], (self.current[key],)
        elif kind == "multihop":
            chain = rng.choice(complete)
            question = f"what is the current value of {chain[0]}? Resolve the variable definitions."
            answer, needs = str(self._chain_value(chain)), tuple(self.current[v] for v in chain)
        elif kind == "aggregation":
            account = rng.choice(self.names.accounts)
            event = rng.choice(EVENT_TYPES)
            first = max(1, page - c.aggregation_window + 1)
            needs = tuple(f for k, a, f in self._events if k == event and a == account and f.page >= first)
            question = f"how many {event} events on {account} are in pages {first}-{page}?"
            answer = str(len(needs))
        else:
            ledger = rng.randrange(c.ledgers)
            key = f"{self.names.accounts[ledger]}.{rng.choice(FIELDS)}"
            fact = self.current.get(key)
            question = f"was {key} ever set? Answer yes or no."
            answer, needs = ("yes", (fact,)) if fact else ("no", ())
        label = {"multihop": "multi-hop"}.get(kind, kind)
        return Probe(number, page, kind, f"PROBE {number} ({label}): {question}", answer, needs, final)

    # -- retention -------------------------------------------------------------------------------

    def needed_facts(self, page: int) -> list[Fact]:
        """Live_t of §1.3: facts shown by `page` (inclusive) that a probe at or after `page` needs."""
        return [fact for fact, until in self._needed if fact.page <= page <= until]

    def needed_after(self, page: int) -> list[Fact]:
        """The facts shown by `page` (inclusive) that a probe after `page` needs: what a context compressed
        after `page` should still hold."""
        return [fact for fact, until in self._needed if fact.page <= page < until]

    def state_facts(self, page: int) -> list[Fact]:
        """Everything a probe could ask about after `page`: the latest fact of every tracked key shown by
        then, and the tracked events of the last `aggregation_window` pages."""
        facts = []
        for pages, history in self._history.values():
            i = bisect_right(pages, page)
            if i:
                facts.append(history[i - 1])
        first = page - self.config.aggregation_window + 1
        facts += [fact for _, _, fact in self._events[bisect_right(self._event_pages, first - 1):bisect_right(self._event_pages, page)]]
        return facts


class _Pages(Sequence):
    """`stream.pages`: the pages as a read-only sequence of texts, each rendered when it is read."""

    def __init__(self, stream: LedgerStream):
        self._stream = stream

    def __len__(self) -> int:
        return self._stream.config.turns

    def __getitem__(self, index):  # noqa: ANN001 - int or slice, as for a list
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        if not -n <= index < n:
            raise IndexError("page index out of range")
        return self._stream.page_text(index % n + 1)
