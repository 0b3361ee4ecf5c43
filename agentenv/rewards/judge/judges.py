"""Judges: any `Policy` asked a rubric's question, pointwise (one response → a score) or pairwise (A vs B → a
preference), and the mitigations of a pairwise judge's biases, which are judges themselves.

Every judgement is a number in [0, 1] (`Judgement.value`): a pointwise score mapped from the rubric's scale,
or a pairwise preference for A (1 = A, 0 = B, 0.5 = tie). How it is read from the judge:

* `method="text"`: the policy writes a reply and `parse_score` / `parse_verdict` read it. A reply they cannot
  read gives the judge's `fallback` (default 0.5, "no information") with `parsed=False`: a bad reply never
  raises.
* `method="logprob"`: the policy scores the rubric's reply strings (`policy.choice_logprobs`, e.g. `HFPolicy`);
  the preference is P([[A]]) / (P([[A]]) + P([[B]])), the score the expected score under the normalised
  distribution over the scale. Always parsed.
* `method="auto"` (default): log-probs when the policy exposes them, else text.

Mitigations (arXiv 2306.05685 for swapping; the multi-agent set-ups after the seed paper on bias in
multi-agent LLM-as-judge systems):

* `SwapAveraged(judge)`: judge both orders and average P(A first) with 1 − P(A second). With text verdicts a
  consistent pair keeps its verdict and an inconsistent one becomes a tie; with log-probs it is the
  order-averaged probability (the position-invariant scoring PINE aims at, done by averaging over the two
  orders rather than by PINE's change of the attention; arXiv 2407.01100).
* `Panel(judges, debate_rounds=k, meta_judge=None)`: several judges vote independently; in each debate round
  every judge sees the others' last verdicts (`PairItem.opinions`) and judges again; the final value is the
  mean of the last round's preferences ("mean") or its majority verdict ("majority"), or, with a
  `meta_judge`, that judge's verdict given every panel verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol, Sequence

from agentenv.rewards.judge.rubrics import Rubric, get_rubric, parse_score, parse_verdict
from agentenv.types import Messages, Policy

__all__ = ["PointItem", "PairItem", "Judgement", "PointwiseJudge", "PairwiseJudge", "PairJudge", "SwapAveraged", "Panel",
           "verdict_of"]

Method = Literal["auto", "text", "logprob"]


@dataclass(frozen=True)
class PointItem:
    """One response to score; `reference` is shown by rubrics that have a `{reference}` field."""

    question: str
    response: str
    reference: str = ""


@dataclass(frozen=True)
class PairItem:
    """Two responses to compare, shown as A and B. `opinions` are other judges' verdicts on this pair ("A",
    "B" or "tie"), shown in a debate round or to a meta-judge."""

    question: str
    response_a: str
    response_b: str
    reference: str = ""
    opinions: tuple[str, ...] = ()

    def swapped(self) -> "PairItem":
        """The same pair in the other order (opinions relabelled to follow their responses)."""
        flip = {"A": "B", "B": "A"}
        return replace(self, response_a=self.response_b, response_b=self.response_a,
                       opinions=tuple(flip.get(o, o) for o in self.opinions))


@dataclass(frozen=True)
class Judgement:
    """A judge's decision. `value` in [0, 1]: a pointwise score mapped from the rubric's scale, or the
    preference for A (1 = A better, 0 = B, 0.5 = tie). `parsed` is False when the reply could not be read
    and `value` is the judge's fallback. `reply` is the judge's text ("" for log-prob judgements); `score`
    the pointwise score on the rubric's own scale (None when unread or pairwise)."""

    value: float
    parsed: bool = True
    reply: str = ""
    score: float | None = None

    @property
    def verdict(self) -> str:
        return verdict_of(self.value)


def verdict_of(value: float) -> str:
    """"A" above 0.5, "B" below, "tie" at exactly 0.5."""
    return "A" if value > 0.5 else "B" if value < 0.5 else "tie"


class PairJudge(Protocol):
    """What a pairwise judge or mitigation provides: one judgement per pair, in order."""

    def compare(self, items: Sequence[PairItem]) -> list[Judgement]: ...


class _PolicyJudge:
    """A policy asked a rubric's question: renders the chats and reads the replies (text or log-probs)."""

    mode: str

    def __init__(self, policy: Policy, rubric: str | Rubric, method: Method = "auto", fallback: float = 0.5):
        self.policy = policy
        self.rubric = get_rubric(rubric)
        if self.rubric.mode != self.mode:
            raise ValueError(f"rubric {self.rubric.name!r} is {self.rubric.mode}; {type(self).__name__} needs a {self.mode} rubric")
        if method not in ("auto", "text", "logprob"):
            raise ValueError(f"method must be 'auto', 'text' or 'logprob', got {method!r}")
        has_logprobs = callable(getattr(policy, "choice_logprobs", None))
        if method == "logprob" and not has_logprobs:
            raise ValueError(f"method='logprob' needs a policy with choice_logprobs (e.g. HFPolicy); {type(policy).__name__} has none")
        self.method = "logprob" if method == "logprob" or (method == "auto" and has_logprobs) else "text"
        if not 0.0 <= fallback <= 1.0:
            raise ValueError("fallback must be in [0, 1]")
        self.fallback = fallback

    def _judge(self, chats: Sequence[Messages]) -> list[Judgement]:
        if not chats:
            return []
        if self.method == "logprob":
            return [self._from_logprobs(row) for row in self.policy.choice_logprobs(chats, self.rubric.choices)]
        return [self._from_text(g.text) for g in self.policy.generate(chats)]

    def _from_text(self, reply: str) -> Judgement:
        raise NotImplementedError

    def _from_logprobs(self, logprobs: Sequence[float]) -> Judgement:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.policy).__name__}, rubric={self.rubric.name!r}, method={self.method!r})"


def _normalised(logprobs: Sequence[float]) -> list[float]:
    """Probabilities proportional to exp(logprobs) (a softmax over the choices)."""
    top = max(logprobs)
    weights = [math.exp(lp - top) for lp in logprobs]
    total = sum(weights)
    return [w / total for w in weights]


class PointwiseJudge(_PolicyJudge):
    """Scores one response at a time with a pointwise rubric ("correctness", "reference", or a `Rubric`)."""

    mode = "pointwise"

    def __init__(self, policy: Policy, rubric: str | Rubric = "correctness", method: Method = "auto", fallback: float = 0.5):
        super().__init__(policy, rubric, method, fallback)

    def score(self, items: Sequence[PointItem]) -> list[Judgement]:
        chats = [self.rubric.messages(question=i.question, response=i.response, reference=i.reference) for i in items]
        return self._judge(chats)

    def _scaled(self, score: float) -> float:
        return (score - self.rubric.low) / (self.rubric.high - self.rubric.low)

    def _from_text(self, reply: str) -> Judgement:
        score = parse_score(reply, self.rubric.low, self.rubric.high)
        if score is None:
            return Judgement(self.fallback, parsed=False, reply=reply)
        return Judgement(self._scaled(score), reply=reply, score=score)

    def _from_logprobs(self, logprobs: Sequence[float]) -> Judgement:
        probs = _normalised(logprobs)
        expected = sum(p * s for p, s in zip(probs, range(self.rubric.low, self.rubric.high + 1)))
        return Judgement(self._scaled(expected), score=expected)


class PairwiseJudge(_PolicyJudge):
    """Compares two responses with a pairwise rubric ("pairwise", "pairwise_reference", or a `Rubric`)."""

    mode = "pairwise"

    def __init__(self, policy: Policy, rubric: str | Rubric = "pairwise", method: Method = "auto", fallback: float = 0.5):
        super().__init__(policy, rubric, method, fallback)

    def compare(self, items: Sequence[PairItem]) -> list[Judgement]:
        chats = [self.rubric.messages(", ".join(i.opinions), question=i.question, response_a=i.response_a,
                                      response_b=i.response_b, reference=i.reference) for i in items]
        return self._judge(chats)

    def _from_text(self, reply: str) -> Judgement:
        verdict = parse_verdict(reply)
        if verdict is None:
            return Judgement(self.fallback, parsed=False, reply=reply)
        return Judgement({"A": 1.0, "B": 0.0, "tie": 0.5}[verdict], reply=reply)

    def _from_logprobs(self, logprobs: Sequence[float]) -> Judgement:
        return Judgement(_normalised(logprobs)[0])


class SwapAveraged:
    """Swap-and-average: each pair is judged in both orders; value = (P(A | A, B) + 1 − P(A | B, A)) / 2.

    A judge that only follows position (always "A") gives exactly 0.5 (a tie) on every pair; a judge that
    follows content in both orders keeps its verdict. `parsed` is False when either order was unreadable."""

    def __init__(self, judge: PairJudge):
        self.judge = judge

    def compare(self, items: Sequence[PairItem]) -> list[Judgement]:
        items = list(items)
        both = self.judge.compare(items + [i.swapped() for i in items])
        forward, backward = both[: len(items)], both[len(items):]
        return [Judgement((f.value + 1.0 - b.value) / 2.0, parsed=f.parsed and b.parsed, reply=f"{f.reply} | {b.reply}".strip(" |"))
                for f, b in zip(forward, backward)]

    def __repr__(self) -> str:
        return f"SwapAveraged({self.judge!r})"


@dataclass
class Panel:
    """Several pairwise judges deciding together.

    Round 0: every judge judges alone. Each of `debate_rounds` more rounds: every judge judges again, seeing
    the other judges' verdicts of the round before. Then `meta_judge` (if any) judges once, seeing every
    panel verdict of the last round, and its judgement is the panel's; otherwise `aggregate` combines the
    last round: "mean" of the preferences, or "majority" of the verdicts (a split vote is a tie, 0.5).

    `rounds` holds, after each `compare`, every round's judgements: `rounds[r][j][i]` for round r, judge j,
    item i (the meta-judge's, if any, as a last round of one judge).
    """

    judges: Sequence[PairJudge]
    debate_rounds: int = 0
    meta_judge: PairJudge | None = None
    aggregate: Literal["mean", "majority"] = "majority"
    rounds: list[list[list[Judgement]]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if not self.judges:
            raise ValueError("a panel needs at least one judge")
        if self.debate_rounds < 0:
            raise ValueError("debate_rounds must be >= 0")
        if self.aggregate not in ("mean", "majority"):
            raise ValueError("aggregate must be 'mean' or 'majority'")

    def compare(self, items: Sequence[PairItem]) -> list[Judgement]:
        items = list(items)
        votes = [judge.compare(items) for judge in self.judges]
        self.rounds = [votes]
        for _ in range(self.debate_rounds):
            votes = [judge.compare([replace(item, opinions=tuple(votes[o][i].verdict for o in range(len(votes)) if o != j))
                                    for i, item in enumerate(items)])
                     for j, judge in enumerate(self.judges)]
            self.rounds.append(votes)
        if self.meta_judge is not None:
            final = self.meta_judge.compare([replace(item, opinions=tuple(v[i].verdict for v in votes)) for i, item in enumerate(items)])
            self.rounds.append([final])
            return final
        return [self._combine([v[i] for v in votes]) for i in range(len(items))]

    def _combine(self, judgements: list[Judgement]) -> Judgement:
        parsed = all(j.parsed for j in judgements)
        if self.aggregate == "mean":
            return Judgement(sum(j.value for j in judgements) / len(judgements), parsed=parsed)
        a = sum(j.verdict == "A" for j in judgements)
        b = sum(j.verdict == "B" for j in judgements)
        return Judgement(1.0 if a > b else 0.0 if b > a else 0.5, parsed=parsed)
