"""Judging prompts (rubrics) and the readers of a judge's reply: a score ("Score: 7") or a verdict ("[[A]]").

A `Rubric` is a plain template: `template.format(**fields)` is the user message, `system` the system
message. A pointwise rubric asks for a score in `[low, high]`; a pairwise one for a verdict between two
responses shown as A and B. Each rubric also names the exact reply strings it asks for (`choices`), so a
judge whose policy exposes log-probs can score them directly instead of sampling a reply.

Readers are lenient about wording (a judge model is not a parser) and strict about ambiguity: a reply
that names two different scores or both verdicts gives None, never a guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from agentenv.types import Messages

__all__ = ["Rubric", "RUBRICS", "get_rubric", "parse_score", "parse_verdict", "quote_untrusted", "MAX_RESPONSE_CHARS"]

# A response longer than this is cut in the judge's prompt: the judge's context is finite, and a policy
# must not be able to drown the rubric (or bury an injected "Score: 10") in a flood of text.
MAX_RESPONSE_CHARS = 2000
UNTRUSTED_FIELDS = ("response", "response_a", "response_b")  # written by the policy being judged


@dataclass(frozen=True)
class Rubric:
    """A judging prompt.

    Args:
        name: registry name (`RUBRICS`).
        mode: "pointwise" (one response → a score) or "pairwise" (responses A and B → a verdict).
        template: the user message; pointwise fields `{question}`, `{response}`, `{reference}`; pairwise
            `{question}`, `{response_a}`, `{response_b}`, `{reference}`.
        system: the system message ("" for none).
        low, high: the score scale (pointwise).
        score_reply: how a score is written (pointwise; `{}` is the score): the log-prob choices.
        verdict_replies: the replies meaning "A is better" and "B is better" (pairwise).
    """

    name: str
    mode: Literal["pointwise", "pairwise"]
    template: str
    system: str = ""
    low: int = 1
    high: int = 10
    score_reply: str = "Score: {}"
    verdict_replies: tuple[str, str] = ("[[A]]", "[[B]]")

    def __post_init__(self) -> None:
        if self.mode not in ("pointwise", "pairwise"):
            raise ValueError(f"mode must be 'pointwise' or 'pairwise', got {self.mode!r}")
        if self.mode == "pointwise" and not self.low < self.high:
            raise ValueError("a pointwise rubric needs low < high")

    def messages(self, opinions: str = "", **fields: str) -> Messages:
        """The judge's chat: system message (if any), then the filled template; `opinions` (other judges'
        verdicts, in a debate or for a meta-judge) is appended as its own paragraph."""
        fields = {key: quote_untrusted(value) if key in UNTRUSTED_FIELDS else _cut(value) for key, value in fields.items()}
        user = self.template.format(**fields)
        if opinions:
            user = f"{user}\nOther judges' verdicts: {opinions}"
        chat: Messages = [{"role": "system", "content": self.system}] if self.system else []
        return chat + [{"role": "user", "content": user}]

    @property
    def choices(self) -> list[str]:
        """The replies a log-prob judge scores: every score of the scale, or the two verdicts."""
        if self.mode == "pointwise":
            return [self.score_reply.format(score) for score in range(self.low, self.high + 1)]
        return list(self.verdict_replies)


def _cut(text: str) -> str:
    text = str(text)
    return text if len(text) <= MAX_RESPONSE_CHARS else text[:MAX_RESPONSE_CHARS] + " [...]"


def quote_untrusted(text: str) -> str:
    """A judged response as the judge's prompt shows it. The policy writes it, so it is hostile: cut to
    `MAX_RESPONSE_CHARS`; every line after its first indented with "| ", so no line of it starts a field of the
    template ("B: ...", "Reference: ...") — a response cannot forge the other response, the reference or another
    judge's opinion; and runs of "[" or "]" spaced apart, so it cannot hand a text judge a verdict to copy ("[[A]]").
    A one-line answer without double brackets is shown unchanged."""
    text = re.sub(r"(\[(?=\[)|\](?=\]))", r"\1 ", _cut(text))  # "[[[A]]]" → "[ [ [A] ] ]"; "[]" stays
    return "\n| ".join(text.splitlines())  # every line break a model may read as one: \r, \x0b, \x85, \u2028 ...


_PAIRWISE_SYSTEM = "You are a strict judge. Decide which answer to the question is correct. Reply [[A]] or [[B]] only."
_POINTWISE_SYSTEM = "You are a strict judge. Rate how correct the answer to the question is. Reply Score: N only."

RUBRICS: dict[str, Rubric] = {
    rubric.name: rubric
    for rubric in (
        Rubric("correctness", "pointwise", "Question: {question}\nAnswer: {response}\nScore from 1 to 10.",
               system=_POINTWISE_SYSTEM),
        Rubric("reference", "pointwise",
               "Question: {question}\nReference: {reference}\nAnswer: {response}\nScore from 1 to 10.",
               system=_POINTWISE_SYSTEM + " The reference answer is right."),
        Rubric("pairwise", "pairwise", "Question: {question}\nA: {response_a}\nB: {response_b}", system=_PAIRWISE_SYSTEM),
        Rubric("pairwise_reference", "pairwise",
               "Question: {question}\nReference: {reference}\nA: {response_a}\nB: {response_b}",
               system=_PAIRWISE_SYSTEM + " The reference answer is right."),
    )
}


def get_rubric(rubric: str | Rubric) -> Rubric:
    """A `Rubric` as given, or the registered one of that name."""
    if isinstance(rubric, Rubric):
        return rubric
    if rubric not in RUBRICS:
        raise ValueError(f"unknown rubric {rubric!r}; registered: {', '.join(sorted(RUBRICS))} (or pass a Rubric)")
    return RUBRICS[rubric]


_NUMBER = r"(-?\d+(?:\.\d+)?)"
_SCORE_PATTERNS = (
    re.compile(rf"\bscore\s*(?:is|of|=|:)?\s*\**\s*{_NUMBER}(?:\s*(?:/|out of)\s*\d+)?", re.IGNORECASE),
    re.compile(rf"\[\[\s*{_NUMBER}\s*\]\]"),
    re.compile(rf"(?<![\d.]){_NUMBER}\s*(?:/|out of)\s*\d+", re.IGNORECASE),
    re.compile(rf"\brating\s*(?:is|of|=|:)?\s*\**\s*{_NUMBER}", re.IGNORECASE),
)
_BARE_NUMBER = re.compile(rf"^\W*{_NUMBER}\W*$")


def parse_score(reply: str, low: float, high: float) -> float | None:
    """The score a reply gives ("Score: 7", "score of 7/10", "[[7]]", "7/10", "Rating: 7", or just "7"), or None.

    None when no score is found, when the reply gives two different scores in the first form that occurs, or
    when the score is outside `[low, high]` (out of scale means the judge did not follow the rubric)."""
    for pattern in _SCORE_PATTERNS:
        found = {float(m) for m in pattern.findall(reply)}
        if found:
            if len(found) > 1:
                return None
            (score,) = found
            return score if low <= score <= high else None
    bare = _BARE_NUMBER.match(reply)
    if bare:
        score = float(bare.group(1))
        return score if low <= score <= high else None
    return None


_VERDICT_PATTERNS = (
    re.compile(r"\[\[\s*([ABC])\s*\]\]"),
    # the words in any case, the letter only as a capital ("the answer is a bit off" names no verdict)
    re.compile(r"\b(?i:verdict|winner|choice|better answer|answer)\s*(?i:is|:)?\s*\**\s*\(?([AB])\b\)?"),
    re.compile(r"\b(?i:answer|response|assistant)\s+([AB])\s+(?i:is\s+(?:better|correct|right))"),
    re.compile(r"^\W*\(?([AB])\)?\W*$"),
)
_TIE = re.compile(r"^\W*(?:tie|draw|equal|both)\W*$", re.IGNORECASE)


def parse_verdict(reply: str) -> Literal["A", "B", "tie"] | None:
    """The verdict a reply gives ("[[A]]", "[[B]]", "[[C]]" = tie, "Verdict: A", "Answer B is better", "A"), or None.

    The first form that occurs decides; None when it names both A and B, or when nothing is found."""
    for pattern in _VERDICT_PATTERNS:
        found = {m.upper() for m in pattern.findall(reply)}
        if found:
            if len(found) > 1:
                return None
            (letter,) = found
            return "tie" if letter == "C" else letter  # type: ignore[return-value]
    if _TIE.match(reply):
        return "tie"
    return None
