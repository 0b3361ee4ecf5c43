"""Ledger-v0: long-horizon fact tracking over a stream of feed pages (LedgerStream-256, docs/anchors-domains.md §1.3).

The agent reads a seeded stream of log-like pages with the `read` tool, one page per call. Pages carry
facts about the tracked keys (with overwrites), variable chains, events, near-duplicate distractors and
noise (`stream.py`). Every `probe_every` pages and on the last page a PROBE asks one question with
an exact answer: the agent answers it with the `answer` tool and reads on; the final probe is answered with
`<answer>...</answer>`, which ends the episode. Reward: the fraction of probes answered correctly.

Made for context compression (`gym.make("agentenv/Ledger-v0", compressor="zip", budget_tokens=2048)`):
at 256 pages the full history is about 65k tokens. With `compressor_options={"mode": "agent"}` the agent
compresses its own context (`<zip level=N/>` after each page, `AGENT_ZIP_NOTE`) and Q_com scores each of those
decisions in hindsight, against the facts later probes ask about (`_needed_lines`);
`{"mode": "uniform", "level": N}` is the uniform baseline (every page at level N). `env.unwrapped.stream` holds the generator's state
(`state_facts(page)`, `needed_facts(page)`) so that a harness can measure retention exactly; nothing of it
is in the observation or in `info`.
"""

from __future__ import annotations

import re
from typing import Any

from agentenv.core import ChatEnv, Message, Score
from agentenv.envs.ledger.stream import PROBE_KINDS, LedgerConfig, LedgerStream, Probe
from agentenv.tools.base import Tool
from agentenv.tools.parsing import ParsedAction

__all__ = ["LedgerEnv", "canonical_value", "AGENT_ZIP_NOTE"]

SYSTEM = "You are a careful agent that tracks facts in a long stream of log pages and answers questions about them exactly."
ZIP_NOTE = (
    "Older turns may be compressed into notes tagged [tK Ln] (turn K at level n: 1 = dropped, 5 = verbatim); "
    "write <zip turn=K level=N/> in a reply to choose the level of turn K."
)
# With agent-driven compression (zip mode "agent") the agent alone decides what its context keeps. The levels
# are zip's thresholds (compression/zip.py) in the terms of this task; the scripted reader acts on this note.
AGENT_ZIP_NOTE = (
    "You compress your own context: start each reply with <zip level=N/> to keep the page you just read at level N "
    "(1 = drop it; 2 = keep its facts about tracked keys; 3 = also its other lines that name a tracked key, such as "
    "events; 4 = also lines about look-alike keys; 5 = verbatim). A page you do not level stays verbatim until the "
    "context budget pushes the oldest pages out. <zip turn=K level=N/> re-levels turn K if it is still kept; "
    "kept pages appear as notes tagged [tK Ln]."
)
_NUMBER = re.compile(r"-?\d+(?:\.0+)?")


def canonical_value(value: Any) -> str:
    """Canonical form of an answer: trimmed, lower-case, without quotes or a final period; integers as ints."""
    text = str(value).strip().strip("\"'`").rstrip(".").strip().lower()
    return str(int(float(text))) if _NUMBER.fullmatch(text) else text


class LedgerEnv(ChatEnv):
    """Track facts over a long stream and answer probes about them.

    Args:
        turns: pages in the stream (the horizon: 32 to train on, 256 for the stress test).
        ledgers: interleaved sub-ledgers (one account and one variable chain each).
        probe_every: pages between probes (a probe also comes with the last page).
        facts_per_page, events_per_page, distractors_per_page, chain_length, aggregation_window, noise_lines:
            difficulty knobs of `LedgerConfig` (noise_lines: (fewest, most) noise lines per page; fewer make short
            pages, e.g. for training small models on CPU).
        max_turns: turn limit (default: turns + max(8, turns // 8)).
        seed, render_mode, compressor, budget_tokens: as in `ChatEnv`.
    """

    def __init__(
        self,
        turns: int = 256,
        ledgers: int = 4,
        probe_every: int = 16,
        facts_per_page: float = 1.0,
        events_per_page: float = 0.3,
        distractors_per_page: float = 1.5,
        chain_length: int = 3,
        aggregation_window: int = 32,
        noise_lines: tuple[int, int] = (6, 14),
        max_turns: int | None = None,
        seed: int | None = None,
        render_mode: str | None = None,
        compressor: Any = None,
        budget_tokens: int | None = None,
        **chat_env_kwargs: Any,
    ):
        self.config = LedgerConfig(
            turns=turns, ledgers=ledgers, probe_every=probe_every, facts_per_page=facts_per_page, events_per_page=events_per_page,
            distractors_per_page=distractors_per_page, chain_length=chain_length, aggregation_window=aggregation_window,
            noise_lines=tuple(noise_lines),
        )
        tools = [Tool.from_function(self.read, timeout_s=None), Tool.from_function(self.answer, timeout_s=None)]
        super().__init__(tools=tools, execution="immediate", max_turns=max_turns or turns + max(8, turns // 8), seed=seed,
                         render_mode=render_mode, compressor=compressor, budget_tokens=budget_tokens, **chat_env_kwargs)
        self._system = f"{SYSTEM}\n\n{self.tools_prompt()}"
        self.stream: LedgerStream | None = None
        self.page = 0
        self._answers: dict[int, str] = {}
        self._asked: list[Probe] = []
        self._shown = 0  # probes already shown to the agent

    # -- tools (bound to the episode) ------------------------------------------------------------

    def read(self) -> str:
        """Read the next page of the feed."""
        assert self.stream is not None
        if self.page >= self.config.turns:
            return f"The feed has ended ({self.config.turns} pages read). Answer the final probe with <answer>...</answer>."
        self.page += 1
        probe = self.stream.probe_at.get(self.page)
        if probe is not None:
            self._asked.append(probe)
        return self.stream.pages[self.page - 1]

    def answer(self, probe: int, value: str | int | float) -> str:
        """Answer a probe; only the first answer to each probe counts.

        Args:
            probe: the probe's number (PROBE 3 → 3).
            value: the answer: a value, a number, or yes / no.
        """
        if not any(p.number == probe for p in self._asked):
            raise ValueError(f"probe {probe} has not been asked yet")
        if probe in self._answers:
            raise ValueError(f"probe {probe} was already answered")
        self._answers[probe] = canonical_value(value)
        return f"Answer to probe {probe} recorded."

    # -- ChatEnv hooks ---------------------------------------------------------------------------

    def _new_episode(self) -> list[Message]:
        self.stream = LedgerStream(self.config, int(self.np_random.integers(2**63)))
        self.page = 0
        self._answers = {}
        self._asked = []
        self._shown = 0
        brief, system = self.stream.brief, self._system
        compressor = self.context_window.compressor if self.context_window is not None else None
        if compressor is not None and getattr(compressor, "mode", None) == "agent":
            # in the system message, not the brief: the brief's words are the task terms that line relevance
            # (and so what each level keeps) is computed from, and the note's words are not about the task
            system = f"{system}\n\n{AGENT_ZIP_NOTE}"
        elif compressor is not None and compressor.controllable:
            brief = f"{brief}\n{ZIP_NOTE}"
        return [{"role": "system", "content": system}, {"role": "user", "content": brief}]

    def _env_turn(self, parsed: ParsedAction) -> list[Message]:
        """The probes that came with the pages read this turn."""
        new, self._shown = self._asked[self._shown :], len(self._asked)
        return [{"role": "user", "content": self._probe_text(p)} for p in new]

    @staticmethod
    def _probe_text(probe: Probe) -> str:
        if probe.final:
            return f"{probe.question} This is the final probe: reply with <answer>...</answer>."
        call = '<tool_call>{"name": "answer", "arguments": {"probe": %d, "value": "..."}}</tool_call>' % probe.number
        return f"{probe.question} Answer with {call}, then keep reading."

    def _score_answer(self, answer: str, action: str) -> Score:
        assert self.stream is not None
        final = self.stream.probes[-1]
        if final in self._asked and final.number not in self._answers:
            self._answers[final.number] = canonical_value(answer)
        correct = {p.number: self._answers.get(p.number) == canonical_value(p.answer) for p in self.stream.probes}
        accuracy = sum(correct.values()) / len(correct)
        components = {"accuracy": accuracy, "answered": len(self._answers) / len(correct), "pages_read": self.page / self.config.turns}
        for kind in PROBE_KINDS:
            asked = [p.number for p in self.stream.probes if p.kind == kind]
            if asked:
                components[f"accuracy_{kind}"] = sum(correct[n] for n in asked) / len(asked)
        return Score(accuracy, accuracy == 1.0, components)

    def _needed_lines(self) -> frozenset[str]:
        """The lines of the pages read so far that a probe at or after the current page asks about (Live_t):
        Q_com's hindsight retention. A probe that came with the current page is answered by the next action,
        from the context compressed now, so its facts count; those of earlier probes no longer do."""
        if self.stream is None or self._done:  # after the last turn nothing is needed
            return frozenset()
        return frozenset(f.line for f in self.stream.needed_facts(self.page))

    def _info(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        info = super()._info(*args, **kwargs)
        info["ledger"] = {"page": self.page, "probes_asked": len(self._asked), "probes_answered": len(self._answers)}
        return info
