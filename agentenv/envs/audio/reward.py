"""Rule-based reward for audio reasoning: SoundMind's structure (format + answer + length), with its bugs fixed.

    R = w_format · format + w_answer · answer + w_length · length        (defaults 1, 2, 1 as in SoundMind)

- format: 1 when the turn is exactly `<think>…</think><answer>…</answer>` (whitespace around is fine), each
  tag once, in that order, both non-empty. With `require_think=False` the think block is optional
  (R1-AQA's `<answer>…</answer>`-only contract).
- answer: 1 when the final answer (last `<answer>`, else `\\boxed{}`, as the env parses it) matches the label and,
  as in SoundMind ("structure valid and parsed label == gold"), the format holds; `answer_needs_format=False`
  pays a correct answer whatever the format. Success (`Score.success`, the accuracy) is the correct answer alone.
- length: min(1, words in the think block / reference words), and 0 when the format is broken (a long
  ramble outside the contract earns nothing).

What SoundMind's `alr.py` got wrong, and what is done here instead (tests in tests/test_audio.py):
1. "not-entailed" was matched as "entailed" (the positive check ran first): negations are matched first,
   and an answer naming both labels ("entailed or not entailed") is no answer.
2. The gold label was parsed from reference text containing "entailed" (so "not entailed" → entailed):
   labels come from the task's label field (ALR's integer `label`), never from text.
3. The format check looked for the 7-character "answer:" in a 5-character window, so it never fired:
   the format here is the tag structure itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agentenv.core import Score
from agentenv.tools.parsing import parse_action

__all__ = ["RewardWeights", "parse_nli_label", "read_typed_answer", "check_format", "score_response"]

_NEGATED = re.compile(r"(?:\b(?:not|non|no)|n't)\s*entail(?:ed|ment|s)?\b")
_POSITIVE = re.compile(r"\bentail(?:ed|ment|s)?\b")
_NUMBER_WORDS = {
    w: i for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split())
}
_ORDINAL_WORDS = {
    w: i + 1 for i, w in enumerate(
        "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth".split())
}
_TOKEN = re.compile(r"\d+(?:\.\d+)?|[a-z]+")
_WORD = re.compile(r"[a-z0-9']+")
_STRICT = re.compile(r"\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*", re.DOTALL)
_LOOSE = re.compile(r"\s*(?:<think>(?P<think>.*?)</think>\s*)?<answer>(?P<answer>.*?)</answer>\s*", re.DOTALL)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


@dataclass(frozen=True)
class RewardWeights:
    """Weights of the reward terms (SoundMind: format 1.0, answer 2.0, text length 1.0), and whether the answer term
    is paid only on a well-formed turn (SoundMind: yes)."""

    format: float = 1.0
    answer: float = 2.0
    length: float = 1.0
    answer_needs_format: bool = True


def _normal(text: str) -> str:
    """Lower case, `-`/`_` as spaces, whitespace collapsed."""
    return " ".join(text.lower().replace("-", " ").replace("_", " ").split())


def parse_nli_label(text: str) -> str | None:
    """"entailed", "not-entailed" or None (neither, or both named). Negations are matched first."""
    normal = _normal(text)
    labels = set()
    if _NEGATED.search(normal):
        labels.add("not-entailed")
        normal = _NEGATED.sub(" ", normal)
    if _POSITIVE.search(normal):
        labels.add("entailed")
    return labels.pop() if len(labels) == 1 else None


def _integers(text: str) -> list[float]:
    """The numbers named in `text`, in order: digits if there are any, else number and ordinal words."""
    tokens = _TOKEN.findall(text.lower())
    digits = [float(t) for t in tokens if t[0].isdigit()]
    if digits:
        return [int(v) if v.is_integer() else v for v in digits]
    values: list[float] = []
    for i, token in enumerate(tokens):
        if token in _ORDINAL_WORDS:
            values.append(_ORDINAL_WORDS[token])
        elif token in _NUMBER_WORDS and not (token == "one" and i and tokens[i - 1] in _ORDINAL_WORDS):
            values.append(_NUMBER_WORDS[token])  # "the second one": "one" is a pronoun there
    return values


def read_typed_answer(answer: str, answer_type: str, choices: tuple[str, ...] = ()) -> str | None:
    """The canonical form of an answer, or None when it cannot be read unambiguously.

    answer_type: "nli" -> "entailed" | "not-entailed"; "int" -> the one integer named ("3", "three",
    "3rd", "the third tone"); "int_list" -> the integers in order, space separated ("2, 3 and 1" -> "2 3 1");
    "choice" -> the one choice named (whole words, any case).
    """
    if answer_type == "nli":
        return parse_nli_label(answer)
    if answer_type == "int":
        values = set(_integers(answer))
        return str(values.pop()) if len(values) == 1 else None
    if answer_type == "int_list":
        values = _integers(answer)
        return " ".join(map(str, values)) if values else None
    if answer_type == "choice":
        words = set(_WORD.findall(_normal(answer)))
        named = [c for c in choices if set(_WORD.findall(_normal(c))) <= words]
        return named[0] if len(named) == 1 else None
    raise ValueError(f"unknown answer_type {answer_type!r}")


def check_format(text: str, require_think: bool = True) -> tuple[bool, str]:
    """(well formed?, the think block's text). See the module docstring for the rule."""
    counts = [text.count(tag) for tag in _TAGS]
    if counts[2:] != [1, 1]:
        return False, ""
    if counts[:2] != [1, 1] and (require_think or counts[:2] != [0, 0]):
        return False, ""
    match = (_STRICT if require_think else _LOOSE).fullmatch(text)
    if match is None or not match["answer"].strip():
        return False, ""
    think = match["think"] or ""
    if require_think and not think.strip():
        return False, ""
    return True, think


def score_response(
    text: str,
    label: str,
    answer_type: str = "nli",
    *,
    choices: tuple[str, ...] = (),
    weights: RewardWeights = RewardWeights(),
    ref_words: int = 50,
    require_think: bool = True,
) -> Score:
    """Score one final turn against the task's label. Components: format, answer, length (each in [0, 1]: the terms
    paid); `success` is whether the answer is right."""
    well_formed, think = check_format(text, require_think)
    answer = parse_action(text, python_blocks=False).answer
    predicted = read_typed_answer(answer, answer_type, choices) if answer is not None else None
    correct = predicted is not None and predicted == label
    length = min(1.0, len(think.split()) / max(ref_words, 1)) if well_formed else 0.0
    paid = correct and (well_formed or not weights.answer_needs_format)
    components = {"format": float(well_formed), "answer": float(paid), "length": length}
    reward = weights.format * components["format"] + weights.answer * components["answer"] + weights.length * length
    return Score(reward, correct, components)
