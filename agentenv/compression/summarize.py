"""Summarisation by the policy itself: old turns are folded into one summary the policy writes from a
coarse-to-fine prompt (an overview line, then the facts, then other details), updated incrementally.

`ExtractiveSummarizer` is a deterministic policy that really summarises such prompts (it keeps the latest
fact per task key and the lines that mention task identifiers, copied exactly): the default, and the
stand-in for a model in tests and stress runs.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from agentenv.compression.base import Compressor, History, Plan
from agentenv.compression.tokens import RegexTokenizer
from agentenv.compression.turns import FACT_LINE, TurnDigest, task_terms, terms
from agentenv.types import Generation, Policy

__all__ = ["Summarize", "ExtractiveSummarizer", "SUMMARY_SYSTEM", "SUMMARY_PROMPT"]

SUMMARY_SYSTEM = "You compress the history of an agent's episode so that the agent can continue its task from your summary alone."
SUMMARY_PROMPT = """Task:
{task}

Summary so far (turns 1-{covered}):
{previous}

New turns {first}-{last}:
{turns}

Write the summary of turns 1-{last} from coarse to fine, in at most {limit} tokens:
OVERVIEW: one line on what has happened so far.
FACTS: every fact the task still needs, one per line, exactly as written (`key = value`), latest value only.
DETAILS: other lines the task may need (events, identifiers), copied exactly, newest last.
Leave out everything else."""
_SECTIONS = re.compile(r"^Task:\n(?P<task>.*?)\n\nSummary so far \(turns 1-\d+\):\n(?P<previous>.*?)\n\nNew turns (?P<first>\d+)-(?P<last>\d+):\n(?P<turns>.*?)\n\nWrite the summary.*?at most (?P<limit>\d+) tokens", re.S)
_LABELS = ("OVERVIEW:", "FACTS:", "DETAILS:", "[turn ", "(none)")
_TOKENS = RegexTokenizer()


class ExtractiveSummarizer:
    """A deterministic `Policy` that answers `SUMMARY_PROMPT`s extractively.

    FACTS: the latest line per fact key whose key names a task identifier; DETAILS: other lines that
    mention one, newest last. Over the token limit (counted with `RegexTokenizer`) it drops the oldest
    details, then the oldest facts. Any other prompt gets an empty summary.
    """

    def generate(self, contexts: Sequence[list[dict[str, Any]]]) -> list[Generation]:
        return [Generation(self.summarize(context[-1]["content"])) for context in contexts]

    @staticmethod
    def summarize(prompt: str) -> str:
        match = _SECTIONS.search(prompt)
        if match is None:
            return "OVERVIEW: nothing to summarise."
        ids = {t for t, w in task_terms([{"role": "user", "content": match["task"]}]).items() if w == 1.0}
        facts: dict[str, str] = {}
        details: dict[str, None] = {}
        for line in (match["previous"] + "\n" + match["turns"]).split("\n"):
            if not line.strip() or line.startswith(_LABELS):
                continue
            fact = FACT_LINE.match(line)
            if fact and ids.intersection(terms(fact.group(1))):
                facts.pop(fact.group(1), None)
                facts[fact.group(1)] = line
            elif ids.intersection(terms(line)):
                details.pop(line, None)
                details[line] = None
        limit = int(match["limit"]) - 32  # the overview and the two labels
        size = lambda lines: sum(len(_TOKENS.encode(x)) + 1 for x in lines)  # noqa: E731
        fact_lines, detail_lines = list(facts.values()), list(details)
        room = limit - size(fact_lines)
        while detail_lines and size(detail_lines) > room:
            detail_lines.pop(0)
        while fact_lines and size(fact_lines) > limit:
            fact_lines.pop(0)
        overview = f"OVERVIEW: turns 1-{match['last']}; {len(fact_lines)} current facts and {len(detail_lines)} other relevant lines."
        return "\n".join([overview, "FACTS:", *fact_lines, "DETAILS:", *detail_lines])


class Summarize(Compressor):
    """Fold every compressible turn into one summary written by `policy` (default `ExtractiveSummarizer`).

    The summary is incremental: while the history only grows, the policy sees its previous summary and
    the turns since, not the whole history. A summary over its token limit keeps as many whole lines from
    its start as fit: the prompt asks for coarse to fine, so the finest details go first.
    """

    name = "summarize"

    def __init__(self, *args: Any, policy: Policy | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.policy = policy if policy is not None else ExtractiveSummarizer()
        self._memo: tuple[object, int, str] | None = None  # (index epoch, number of the last folded turn, summary)

    def _prompt(self, history: History, fold: list[TurnDigest], limit: int) -> str:
        task = "\n".join(m["content"] for m in history.head if m["role"] == "user")
        covered, previous = 0, "(none)"
        memo = self._memo
        if memo is not None and memo[0] is self.index.epoch and memo[1] <= fold[-1].number:  # the same history, grown
            covered, previous = memo[1], memo[2]
        new = [d for d in fold if d.number > covered]
        turns = []
        for digest in new:
            turns.append(f"[turn {digest.number}]")
            turns.extend(m["content"] for m in history.messages_of(digest.number))
        first = new[0].number if new else fold[-1].number
        return SUMMARY_PROMPT.format(task=task, covered=covered, previous=previous, first=first, last=fold[-1].number,
                                     turns="\n".join(turns) or "(none)", limit=limit)

    def _fit(self, summary: str, limit: int) -> str:
        """The longest prefix of whole lines within `limit` tokens (coarse comes first, so fine goes first)."""
        lines, total = [], 0
        for line in summary.split("\n"):
            total += self.counter.count(line + "\n")
            if total > limit:
                break
            lines.append(line)
        while lines and self.counter.count("\n".join(lines)) > limit:
            lines.pop()
        return "\n".join(lines)

    def _compress(self, history: History, budget: int) -> Plan:
        fold = history.candidates
        if not fold:
            return Plan(history.messages, [5] * len(history.turns), [d.tokens for d in history.turns])
        header = f"[summary of turns 1-{fold[-1].number}]"
        count = self.counter.count_messages
        limit = budget - count(history.head) - count(history.tail) - self.counter.count_message({"content": header + "\n"})
        summary = ""
        if limit > 0:
            summary = self.policy.generate([[{"role": "system", "content": SUMMARY_SYSTEM},
                                             {"role": "user", "content": self._prompt(history, fold, limit)}]])[0].text
            summary = self._fit(summary.strip(), limit)
            self._memo = (self.index.epoch, fold[-1].number, summary)
        note = {"role": "user", "content": f"{header}\n{summary}" if summary else header}
        out = [*history.head, note, *history.tail]
        share = self.counter.count_message(note) // len(fold)
        levels = [2] * len(fold) + [5] * (len(history.turns) - len(fold))
        kept = [share] * len(fold) + [d.tokens for d in history.turns[len(fold):]]
        # once in the summary, a folded turn is never needed again (the next summary starts from this one)
        return Plan(out, levels, kept, forget=[d.number for d in fold] if summary else None)
