"""`ContextWindow`: what an environment shows the agent of its history, under a token budget.

`ChatEnv` passes every step's new messages through its window. By default the history is **streamed**: the
env keeps no copy of it, the compressor holds only the turns it may still show (a turn it drops for good is
released, `Compressor.compress_held`), so the memory of an episode follows the budget, not its length.
With `keep_full_history=True` (an env keyword) the env keeps every message (`env.unwrapped.full_history`)
and the compressor rewrites the whole history each time, so it may bring back a turn it dropped earlier;
memory then grows with the episode.

New messages are appended to the view while it fits `budget_tokens`; when it does not, the compressor
rewrites the history to `budget_tokens − headroom` (hysteresis, so that a rewrite happens every few turns
rather than every turn), where `headroom = (1 − fill) × budget_tokens` but at most half of what the opening
messages and the latest turn leave free, and 0 when it is smaller than the latest turn (then every turn
needs a rewrite anyway, so the memory gets all the room). The view never exceeds the budget.

A rewrite breaks the token sequence a rollout is growing: the rollout starts a new Sample at that turn
(same episode reward; per-turn reshaping such as HRR allowed). `info["compression"]["rewritten"]` is True on
exactly those steps, and then also carries the per-turn levels and Q_com record of the compressor.

`info["compression"]` on every step: compressor, tokenizer, budget_tokens, rewritten, tokens_full (the whole
history), tokens_before / tokens_after (the view before and after this step's compression), keep_ratio
(after / full), q_com (mean Q_com of the compressed turns in the view; None before the first rewrite),
ignored_tags; on rewrites: turns (per completed turn the compressor holds, i.e. when streaming the turns
it has not released: turn, level, q_com, ratio, consistency, retention, completeness).

Control tags: with a controllable compressor (zip), `<zip turn=K level=N/>` in an action fixes the level of
turn K (N in 1..5) for the rest of the episode and forces a rewrite; `<zip level=N/>` is the same for the turn
just before the action (the one whose results it answers). A tag for a turn already released, out of range or
malformed is ignored (listed in `ignored_tags`); the applied tags' character spans are added to
`info["control_spans"]` as kind "zip", so a learner can treat them as control decisions.

Agent-driven and uniform compression (`zip` with `mode="agent"` or `"uniform"`, `Compressor.every_turn`): the
context is rewritten at every step, so a turn is compressed as soon as it leaves the protected recent turns,
at the level the action chose (agent) or at the one fixed level (uniform). `q_com` is then the score of the
decisions of that step, not of the whole view: the mean Q_com of the turn that became compressible and of the
turns the action's tags re-levelled; None when there was none. So HRR credits each turn with the quality of
its own compression decision.

Hindsight retention: an env may pass `needed` (a callable returning the exact lines that a later turn of the
episode needs, e.g. Ledger's facts asked by later probes); Q_com's retention and consistency terms are then
judged against those lines instead of the lexical line values (`Compressor.compress(needed=...)`). The agent
never sees them.
"""

from __future__ import annotations

from typing import Any, Callable, Collection, Sequence

from agentenv.compression.base import MIN_BUDGET, Compressor
from agentenv.compression.baselines import NoCompression
from agentenv.tools.parsing import zip_tags
from agentenv.types import Message

__all__ = ["ContextWindow", "make_window"]


class ContextWindow:
    """Applies `compressor` to an environment's growing history.

    Args:
        compressor: a `Compressor` (each window needs its own instance: it indexes one history).
        budget_tokens: the most tokens an observation may have.
        fill: a rewrite leaves `(1 − fill) × budget_tokens` free for the next turns (see the module doc).
    """

    def __init__(self, compressor: Compressor, budget_tokens: int, fill: float = 0.75):
        if not isinstance(budget_tokens, int) or budget_tokens < MIN_BUDGET:
            raise ValueError(f"budget_tokens must be an int of at least {MIN_BUDGET} when a compressor is set, got {budget_tokens!r}")
        if not 0.0 < fill <= 1.0:
            raise ValueError("fill must be in (0, 1]")
        self.compressor = compressor
        self.budget_tokens = budget_tokens
        compressor.counter.reserve(budget_tokens // 2)  # a context of B tokens has fewer than B/2 lines
        self.headroom = int((1.0 - fill) * budget_tokens)
        self.keep_full_history = False
        self.needed: Callable[[], Collection[str]] | None = None  # set by the env: lines later turns need (Q_com)
        self._restart(None)

    def reset(self, keep_full_history: bool = False) -> None:
        """Start a new episode. `keep_full_history`: the env passes its whole (growing) history to `observe`
        and the compressor works on all of it; else `observe` gets only the new messages (streaming)."""
        self.keep_full_history = keep_full_history
        self._restart(None)
        if not keep_full_history:
            self.compressor.restart()

    @property
    def view(self) -> list[Message]:
        """The current observation."""
        return list(self._view)

    def _restart(self, messages: list[Message] | None) -> None:
        self._source = messages
        self._view: list[Message] = []
        self._seen = 0
        self._view_tokens = 0
        self._full_tokens = 0
        self._head_tokens: int | None = None
        self._levels: dict[int, int] = {}
        self._q: float | None = None
        self._turn = 0
        self._tagged: set[int] = set()  # turns the latest action's tags levelled

    def observe(self, messages: list[Message], info: dict[str, Any]) -> list[Message]:
        """The observation after `messages` arrived: when streaming, the messages since the last call; with
        `keep_full_history`, the env's whole history (its own list, which only grows within an episode).
        Writes `info["compression"]`."""
        streaming = not self.keep_full_history
        if streaming:
            new = list(messages)
            if new and not isinstance(self.compressor, NoCompression):  # "none" never compresses: nothing to index
                self.compressor.feed(new)
        else:
            if messages is not self._source or len(messages) < self._seen:
                self._restart(messages)
            new = messages[self._seen :]
            self._seen = len(messages)
        counter = self.compressor.counter
        added = sum(counter.count_lines(m["content"]) + counter.per_message for m in new)  # compressors look up their lines next
        if self._head_tokens is None:
            self._head_tokens = added
        self._full_tokens += added
        self._view_tokens += added
        self._view.extend(new)
        forced, ignored = self._read_tags(new, info)
        before = self._view_tokens
        record: dict[str, Any] = {"compressor": self.compressor.name, "tokenizer": counter.name, "budget_tokens": self.budget_tokens,
                                  "rewritten": False, "tokens_full": self._full_tokens, "tokens_before": before}
        every_turn = self.compressor.every_turn
        newest = self._turn - self.compressor.keep_recent  # the turn that became compressible at this step
        if not isinstance(self.compressor, NoCompression) and (before > self.budget_tokens or forced or (every_turn and newest >= 1)):
            options: dict[str, Any] = {"levels": dict(self._levels)} if self.compressor.controllable else {}
            if self.needed is not None:
                options["needed"] = self.needed()
            headroom = min(self.headroom, max(self.budget_tokens - self._head_tokens - added, 0) // 2)
            if headroom < added or every_turn:  # the next turn would not fit anyway (or is rewritten anyway): all the room
                headroom = 0
            target = max(MIN_BUDGET, self.budget_tokens - headroom)
            if streaming:
                self._view, result = self.compressor.compress_held(target, **options)
                self._levels = {t: level for t, level in self._levels.items() if self.compressor.index.holds(t)}
            else:
                self._view, result = self.compressor(messages, target, **options)
            self._view_tokens = result["tokens_after"]
            self._q = self._decided_q(result["turns"], newest) if every_turn else result["q_com"]
            record.update(rewritten=True, turns=result["turns"])
        elif every_turn:
            self._q = None  # no decision this step
        record.update(tokens_after=self._view_tokens, keep_ratio=self._view_tokens / max(self._full_tokens, 1),
                      q_com=self._q, ignored_tags=ignored)
        info["compression"] = record
        return list(self._view)

    def _decided_q(self, turns: dict[str, list], newest: int) -> float | None:
        """Mean Q_com of the turns decided at this step (agent / uniform modes): the turn that became
        compressible and the compressible turns the action's tags levelled."""
        decided = {t for t in self._tagged if t <= newest} | ({newest} if newest >= 1 else set())
        scores = [q for t, q in zip(turns["turn"], turns["q_com"]) if t in decided]
        return sum(scores) / len(scores) if scores else None

    def _read_tags(self, new: Sequence[Message], info: dict[str, Any]) -> tuple[bool, list[str]]:
        """Apply the `<zip .../>` tags of the new assistant message(s). Returns (any applied, tags ignored)."""
        forced = False
        ignored: list[str] = []
        self._tagged = set()
        for m in new:
            if m["role"] != "assistant":
                continue
            self._turn += 1
            spans = []
            for turn, level, (start, end), tag in zip_tags(m["content"]):
                if turn is None and level is not None:
                    turn = self._turn - 1  # `<zip level=N/>`: the turn this action answers
                if not self.compressor.controllable or level is None or not 1 <= level <= 5 or not 1 <= turn < self._turn or (
                    not self.keep_full_history and not self.compressor.index.holds(turn)  # released for good
                ):
                    ignored.append(tag)
                    continue
                self._levels[turn] = level
                self._tagged.add(turn)
                forced = True
                spans.append((start, end, "zip"))
            if spans and "control_spans" in info:
                info["control_spans"] = sorted([*info["control_spans"], *spans])
        return forced, ignored


def make_window(compressor: Any, budget_tokens: int | None, options: dict[str, Any] | None = None) -> ContextWindow | None:
    """The window for `ChatEnv(compressor=..., budget_tokens=..., compressor_options=...)`: None without a compressor.

    `compressor`: a name in `COMPRESSORS` (a fresh instance is built, with `options` as keyword arguments:
    `{"mode": "agent"}` for zip) or a `Compressor`.
    """
    from agentenv.compression import get

    if compressor is None:
        if budget_tokens is not None or options:
            what = "budget_tokens" if budget_tokens is not None else "compressor_options"
            raise ValueError(f"{what} needs a compressor: pass compressor='zip' (or another name in agentenv.compression.COMPRESSORS)")
        return None
    if budget_tokens is None:
        raise ValueError(f"compressor={compressor!r} needs budget_tokens=N (the most tokens an observation may have)")
    try:
        built = get(compressor, **(options or {}))
    except TypeError as err:  # an option the compressor does not take
        raise ValueError(f"compressor_options {options!r} do not fit compressor {compressor!r}: {err}") from None
    return ContextWindow(built, budget_tokens)
