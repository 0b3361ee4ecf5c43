"""Seeded generators of audio reasoning tasks: tone logic from numpy, spoken syllogisms, speech mixed with tones.

Each generator draws a clip and the true answer from the episode's `np.random.Generator` and returns a
`_Draft`; `generate_task` turns it into an `AudioTask` in one of two answer formats:

- "nli" (ALR's contract): the text makes a claim about the clip; the answer is `entailed` / `not-entailed`.
  The label is a fair coin; a false claim states a value drawn from the *same distribution* as the true
  one (redrawn until it differs), so the claim's wording carries no information about the label.
- "open": the text asks the question; the answer is a number, a list of numbers or a word.

Tone kinds (numpy only): count, compare, highest, longest, rhythm, arithmetic. Speech kinds (espeak-ng):
syllogism (premises spoken, conclusion as text; always "nli") and spoken_rule (a spoken rule about the
number of beeps that follow). Difficulty knobs live in `Difficulty`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np

from agentenv.envs.audio import logic
from agentenv.envs.audio.signals import SAMPLE_RATE, Tone, add_noise, render_tones
from agentenv.envs.audio.speech import INSTALL_HINT, draw_voice, speak, speech_available

__all__ = [
    "AudioTask", "Difficulty", "LEVELS", "TONE_KINDS", "SPEECH_KINDS", "KINDS", "ANSWER_FORMATS",
    "NLI_LABELS", "NLI_INSTRUCTION", "generate_task", "resolve_difficulty",
]

NLI_LABELS = ("entailed", "not-entailed")
NLI_INSTRUCTION = "Is the claim entailed by the audio? Answer entailed or not-entailed."
ANSWER_FORMATS = ("nli", "open")
LOW_BAND = (200.0, 400.0)  # "low tones"
HIGH_BAND = (800.0, 1600.0)  # "high-pitched beeps"
MID_BAND = (250.0, 1500.0)  # pitch comparisons: about 31 semitones of room
TIMBRES = ("sine", "square")


@dataclass(frozen=True)
class Difficulty:
    """Knobs that make a clip harder to analyse.

    Attributes:
        snr_db: white noise level relative to the mean power of the sound events; None for a clean clip.
        max_tones: most tones in a sequence (count, highest, longest, rhythm, arithmetic, spoken_rule); ≥ 3.
        min_gap_s: shortest silence between consecutive tones (gaps are drawn from [min_gap_s, min_gap_s + 0.2]);
            0.03–1 s.
        distractors: low tones among the beeps to count; irrelevant premises in syllogisms; 0–4.
        min_semitones: smallest pitch difference between the tones compared (compare, highest); 1–4.
        min_duration_ratio: the longest tone lasts at least this many times the next longest (longest); ≥ 1.1.
    """

    snr_db: float | None = 30.0
    max_tones: int = 5
    min_gap_s: float = 0.15
    distractors: int = 0
    min_semitones: float = 4.0
    min_duration_ratio: float = 1.6

    def __post_init__(self) -> None:
        if self.max_tones < 3:
            raise ValueError("Difficulty.max_tones must be at least 3")
        if not 0.03 <= self.min_gap_s <= 1.0:
            raise ValueError("Difficulty.min_gap_s must be in [0.03, 1.0] seconds")
        if not 0 <= self.distractors <= 4:
            raise ValueError("Difficulty.distractors must be in [0, 4]")
        if not 1.0 <= self.min_semitones <= 4.0:
            raise ValueError("Difficulty.min_semitones must be in [1, 4]")
        if self.min_duration_ratio < 1.1:
            raise ValueError("Difficulty.min_duration_ratio must be at least 1.1")


LEVELS = {
    1: Difficulty(),
    2: Difficulty(snr_db=20.0, max_tones=8, min_gap_s=0.1, distractors=1, min_semitones=3.0, min_duration_ratio=1.4),
    3: Difficulty(snr_db=10.0, max_tones=10, min_gap_s=0.06, distractors=2, min_semitones=2.0, min_duration_ratio=1.25),
}


def resolve_difficulty(difficulty: int | Difficulty | dict | None) -> Difficulty | None:
    """A level 1–3, a `Difficulty`, a dict of its fields (level-1 defaults for the rest) or None (drawn per episode)."""
    if difficulty is None or isinstance(difficulty, Difficulty):
        return difficulty
    if isinstance(difficulty, dict):
        unknown = set(difficulty) - set(Difficulty.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown difficulty fields {sorted(unknown)}; choose from {sorted(Difficulty.__dataclass_fields__)}")
        return replace(Difficulty(), **difficulty)
    if difficulty in LEVELS:
        return LEVELS[difficulty]
    raise ValueError(f"difficulty must be 1, 2, 3, a Difficulty, a dict of its fields or None, got {difficulty!r}")


@dataclass(frozen=True, eq=False)
class AudioTask:
    """One task: the clip, the text the agent reads and the exact label.

    `answer_type` says how answers are compared: "nli" (entailed / not-entailed), "choice" (one of
    `choices`), "int" or "int_list". `tones` and `transcript` are the generator's ground truth (never shown
    to the agent); `ref_words` is the length of a reference reasoning, when one exists (ALR).
    """

    kind: str
    question: str
    label: str
    answer_type: str
    audio: np.ndarray = field(repr=False)
    choices: tuple[str, ...] = ()
    transcript: str = ""
    tones: tuple[Tone, ...] = ()
    ref_words: int | None = None

    def __post_init__(self) -> None:
        self.audio.flags.writeable = False  # shared by the observation, the tools and later episodes

    @property
    def duration(self) -> float:
        return self.audio.size / SAMPLE_RATE


@dataclass
class _Draft:
    context: str  # what the clip holds, shown in both formats
    question: str  # the open-format question (with how to answer)
    value: Any  # the true value: int, str or tuple[int, ...] ("entailed"/"not-entailed" for nli drafts)
    answer_type: str
    audio: np.ndarray
    claim: Callable[[Any], str] | None = None  # the nli-format claim that the clip's value is `v`
    redraw: Callable[[], Any] | None = None  # a fresh value from the distribution `value` was drawn from
    tones: tuple[Tone, ...] = ()
    transcript: str = ""
    choices: tuple[str, ...] = ()


# -- clip building ---------------------------------------------------------------------------------


def _hz(rng: np.random.Generator, band: tuple[float, float]) -> float:
    """Log-uniform in the band."""
    lo, hi = band
    return float(lo * (hi / lo) ** rng.random())


def _spaced_pitches(rng: np.random.Generator, n: int, min_semitones: float) -> list[float]:
    """`n` pitches in MID_BAND, pairwise at least `min_semitones` apart, in random order."""
    span = 12 * np.log2(MID_BAND[1] / MID_BAND[0])
    slack = span - (n - 1) * min_semitones
    positions = np.sort(rng.uniform(0.0, slack, n)) + min_semitones * np.arange(n)
    return [float(MID_BAND[0] * 2 ** (p / 12)) for p in rng.permutation(positions)]


def _sequence(rng: np.random.Generator, d: Difficulty, specs: Sequence[tuple[float, float, str]],
              gaps: Sequence[float] | None = None, start: float | None = None) -> tuple[list[Tone], float]:
    """Tones `(hz, duration, role)` one after another; returns them and the end time (with a silent tail).

    Gaps default to uniform in [min_gap_s, min_gap_s + 0.2]; the clip opens and closes with 0.2–0.35 s of
    silence (the onset detector reads the noise floor there).
    """
    t = rng.uniform(0.2, 0.35) if start is None else start
    tones = []
    for i, (hz, duration, role) in enumerate(specs):
        if i:
            t += gaps[i - 1] if gaps is not None else rng.uniform(d.min_gap_s, d.min_gap_s + 0.2)
        tones.append(Tone(round(t, 4), round(t + duration, 4), hz, float(rng.uniform(0.3, 0.5)),
                          str(rng.choice(TIMBRES)), role))
        t += duration
    return tones, t + rng.uniform(0.2, 0.35)


def _active_power(x: np.ndarray) -> float:
    """Mean power of the 10 ms frames within 30 dB of the loudest: the power of the events, not the silences."""
    frames = x[: x.size - x.size % 160].reshape(-1, 160).astype(np.float64)
    power = (frames**2).mean(axis=1)
    return float(power[power > power.max() * 1e-3].mean()) if power.size and power.max() > 0 else 0.0


def _finish_clip(rng: np.random.Generator, d: Difficulty, clip: np.ndarray) -> np.ndarray:
    return add_noise(clip, rng, d.snr_db, _active_power(clip))


def _tone_clip(rng: np.random.Generator, d: Difficulty, tones: Sequence[Tone], end: float) -> np.ndarray:
    return _finish_clip(rng, d, render_tones(tones, end))


# -- tone kinds --------------------------------------------------------------------------------------


def count(rng: np.random.Generator, d: Difficulty) -> _Draft:
    n = int(rng.integers(2, d.max_tones + 1))
    specs = [(_hz(rng, HIGH_BAND), rng.uniform(0.08, 0.2), "target") for _ in range(n)]
    specs += [(_hz(rng, LOW_BAND), rng.uniform(0.08, 0.2), "distractor") for _ in range(d.distractors)]
    tones, end = _sequence(rng, d, [specs[i] for i in rng.permutation(len(specs))])
    return _Draft(
        context="The clip holds high-pitched beeps and possibly some low tones.",
        question="How many high-pitched beeps are there (ignore the low tones)? Answer with a number.",
        claim=lambda v: f"The clip contains exactly {v} high-pitched beeps.",
        value=n, redraw=lambda: int(rng.integers(2, d.max_tones + 1)), answer_type="int",
        audio=_tone_clip(rng, d, tones, end), tones=tuple(tones),
    )


def compare(rng: np.random.Generator, d: Difficulty) -> _Draft:
    interval = rng.uniform(d.min_semitones, 12.0)
    span = 12 * np.log2(MID_BAND[1] / MID_BAND[0])
    low = MID_BAND[0] * 2 ** (rng.uniform(0, span - interval) / 12)
    high = low * 2 ** (interval / 12)
    direction = "higher" if rng.random() < 0.5 else "lower"
    pitches = (low, high) if direction == "higher" else (high, low)
    tones, end = _sequence(rng, d, [(float(hz), rng.uniform(0.15, 0.35), "target") for hz in pitches])
    return _Draft(
        context="Two tones are played one after the other.",
        question="Is the second tone higher or lower in pitch than the first? Answer higher or lower.",
        claim=lambda v: f"The second tone is {v} in pitch than the first.",
        value=direction, redraw=lambda: "higher" if rng.random() < 0.5 else "lower", answer_type="choice",
        audio=_tone_clip(rng, d, tones, end), tones=tuple(tones), choices=("higher", "lower"),
    )


def highest(rng: np.random.Generator, d: Difficulty) -> _Draft:
    n = int(rng.integers(3, min(d.max_tones, 7) + 1))
    pitches = _spaced_pitches(rng, n, d.min_semitones)
    tones, end = _sequence(rng, d, [(hz, rng.uniform(0.1, 0.25), "target") for hz in pitches])
    return _Draft(
        context="A sequence of tones is played.",
        question="Which tone has the highest pitch? Answer with its position in the sequence (1 for the first tone).",
        claim=lambda v: f"The tone at position {v} has the highest pitch.",
        value=int(np.argmax(pitches)) + 1, redraw=lambda: int(rng.integers(1, n + 1)), answer_type="int",
        audio=_tone_clip(rng, d, tones, end), tones=tuple(tones),
    )


def longest(rng: np.random.Generator, d: Difficulty) -> _Draft:
    n = int(rng.integers(3, min(d.max_tones, 7) + 1))
    durations = list(rng.uniform(0.08, 0.18, n))
    winner = int(rng.integers(n))
    durations[winner] = max(durations) * rng.uniform(d.min_duration_ratio, d.min_duration_ratio + 0.5)
    tones, end = _sequence(rng, d, [(_hz(rng, MID_BAND), float(t), "target") for t in durations])
    return _Draft(
        context="A sequence of tones is played.",
        question="Which tone lasts the longest? Answer with its position in the sequence (1 for the first tone).",
        claim=lambda v: f"The tone at position {v} lasts the longest.",
        value=winner + 1, redraw=lambda: int(rng.integers(1, n + 1)), answer_type="int",
        audio=_tone_clip(rng, d, tones, end), tones=tuple(tones),
    )


def _groups(rng: np.random.Generator, d: Difficulty) -> tuple[int, ...]:
    """2–3 groups (2–4 when max_tones > 6) of 1–4 beeps; one group at least has two beeps, or no gap inside a
    group would show what a short gap is and the grouping would be ambiguous."""
    while True:
        groups = tuple(int(g) for g in rng.integers(1, 5, size=int(rng.integers(2, (3 if d.max_tones <= 6 else 4) + 1))))
        if max(groups) >= 2:
            return groups


def rhythm(rng: np.random.Generator, d: Difficulty) -> _Draft:
    groups = _groups(rng, d)
    hz, beep = _hz(rng, (500.0, 1200.0)), rng.uniform(0.05, 0.09)
    gaps = []
    for g, size in enumerate(groups):
        gaps += [rng.uniform(d.min_gap_s, d.min_gap_s + 0.05) for _ in range(size - 1)]
        if g < len(groups) - 1:
            pause = max(0.45, 3 * (d.min_gap_s + 0.05))  # ≥ 2× the longest gap inside a group
            gaps.append(rng.uniform(pause, pause + 0.25))
    tones, end = _sequence(rng, d, [(hz, beep, "target")] * sum(groups), gaps)
    return _Draft(
        context="Beeps are played in groups separated by longer pauses.",
        question="How many beeps are in each group, in order? Answer with the numbers separated by spaces.",
        claim=lambda v: f"The beeps come in groups of {', '.join(map(str, v))}.",
        value=groups, redraw=lambda: _groups(rng, d), answer_type="int_list",
        audio=_tone_clip(rng, d, tones, end), tones=tuple(tones),
    )


_OPERATIONS = {
    "L + H": lambda low, high: low + high,
    "L * H": lambda low, high: low * high,
    "|L - H|": lambda low, high: abs(low - high),
}


def arithmetic(rng: np.random.Generator, d: Difficulty) -> _Draft:
    most = max(3, d.max_tones // 2 + 1)
    expression = sorted(_OPERATIONS)[int(rng.integers(len(_OPERATIONS)))]
    op = _OPERATIONS[expression]

    def draw_counts() -> tuple[int, int]:
        return int(rng.integers(1, most + 1)), int(rng.integers(1, most + 1))

    low, high = draw_counts()
    roles = ["low"] * low + ["high"] * high
    specs = [(_hz(rng, LOW_BAND if r == "low" else HIGH_BAND), rng.uniform(0.08, 0.2), r) for r in rng.permutation(roles)]
    tones, end = _sequence(rng, d, specs)
    return _Draft(
        context="The clip mixes low tones and high tones. Let L be the number of low tones and H the number of high tones.",
        question=f"What is {expression}? Answer with a number.",
        claim=lambda v: f"For this clip, {expression} = {v}.",
        value=op(low, high), redraw=lambda: op(*draw_counts()), answer_type="int",
        audio=_tone_clip(rng, d, tones, end), tones=tuple(tones),
    )


# -- speech kinds ------------------------------------------------------------------------------------


def syllogism(rng: np.random.Generator, d: Difficulty) -> _Draft:
    argument = logic.draw_argument(rng, d.distractors)
    transcript = " ".join(argument.premises)
    lead = np.zeros(int(rng.uniform(0.2, 0.35) * SAMPLE_RATE), dtype=np.float32)
    clip = np.concatenate([lead, speak(transcript, draw_voice(rng)), lead])
    label = NLI_LABELS[0] if argument.entailed else NLI_LABELS[1]
    return _Draft(
        context="The audio states some premises.",
        question=f"Conclusion: {argument.conclusion} Is the conclusion entailed by the premises? "
                 "Answer entailed or not-entailed.",
        value=label, answer_type="nli",
        audio=_finish_clip(rng, d, clip), transcript=transcript,
    )


_RULES = {"plus": lambda n, k: n + k, "times": lambda n, k: n * k}
_ENTITIES = ("door number", "locker number", "room number", "secret code")


def spoken_rule(rng: np.random.Generator, d: Difficulty) -> _Draft:
    def draw_rule() -> tuple[int, str, int]:
        n = int(rng.integers(2, d.max_tones + 1))
        op = "plus" if rng.random() < 0.5 else "times"
        return n, op, int(rng.integers(1, 6)) if op == "plus" else int(rng.integers(2, 4))

    n, op, k = draw_rule()
    transcript = f"The {_ENTITIES[int(rng.integers(len(_ENTITIES)))]} is the number of beeps {op} {k}."
    voice = speak(transcript, draw_voice(rng))
    start = 0.25 + voice.size / SAMPLE_RATE + rng.uniform(0.4, 0.6)
    tones, end = _sequence(rng, d, [(_hz(rng, HIGH_BAND), rng.uniform(0.08, 0.15), "target") for _ in range(n)], start=start)
    clip = render_tones(tones, end)
    offset = int(0.25 * SAMPLE_RATE)
    clip[offset : offset + voice.size] += voice
    return _Draft(
        context="A voice states a rule, then beeps are played.",
        question="What number does the rule give? Answer with a number.",
        claim=lambda v: f"The rule gives {v}.",
        value=_RULES[op](n, k), redraw=lambda: (lambda m, o, j: _RULES[o](m, j))(*draw_rule()), answer_type="int",
        audio=_finish_clip(rng, d, clip), tones=tuple(tones), transcript=transcript,
    )


GENERATORS: dict[str, Callable[[np.random.Generator, Difficulty], _Draft]] = {
    "count": count, "compare": compare, "highest": highest, "longest": longest, "rhythm": rhythm,
    "arithmetic": arithmetic, "syllogism": syllogism, "spoken_rule": spoken_rule,
}
TONE_KINDS = ("count", "compare", "highest", "longest", "rhythm", "arithmetic")
SPEECH_KINDS = ("syllogism", "spoken_rule")
KINDS = TONE_KINDS + SPEECH_KINDS


def _as_text(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def generate_task(rng: np.random.Generator, kind: str, difficulty: Difficulty, answer_format: str = "nli") -> AudioTask:
    """Draw one task of `kind` (see `KINDS`) in `answer_format` ("nli" or "open")."""
    if kind in SPEECH_KINDS and not speech_available():
        raise RuntimeError(f"task kind {kind!r} needs speech synthesis: {INSTALL_HINT}")
    draft = GENERATORS[kind](rng, difficulty)
    if draft.answer_type == "nli":
        question, label, answer_type, choices = f"{draft.context} {draft.question}", draft.value, "nli", NLI_LABELS
    elif answer_format == "open":
        question, label, answer_type, choices = f"{draft.context} {draft.question}", _as_text(draft.value), draft.answer_type, draft.choices
    else:
        entailed = bool(rng.random() < 0.5)
        claimed = draft.value
        while not entailed and claimed == draft.value:
            claimed = draft.redraw()
        question = f"{draft.context} Claim: {draft.claim(claimed)} {NLI_INSTRUCTION}"
        label, answer_type, choices = NLI_LABELS[0] if entailed else NLI_LABELS[1], "nli", NLI_LABELS
    return AudioTask(kind, question, label, answer_type, draft.audio, choices, draft.transcript, draft.tones)
