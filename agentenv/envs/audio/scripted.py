"""Reference agents for AudioReasoning-v0: a tool-using scripted agent and a chance-level agent.

`ScriptedAudioAgent` solves the tone tasks the way a careful text-only agent would, only through tool
calls: `count_onsets` to find the events, then `spectrum` on each event for its pitch, then it reasons
from the numbers (counts, argmax, gap clustering, arithmetic) and answers. It reads the question text
and tool results, never the label or the waveform. It cannot transcribe speech, so on spoken items it
answers "not-entailed" / 0 (a fixed guess). `ChanceAgent` picks uniformly among the answer options.
Both are `Policy`s (`generate`) and have `act(messages) -> str`.

`ScriptedAudioAgent(listen=True)` is the same analysis run on the waveform of the observation itself (the
same functions the tools call), answering in one turn with what it heard in words ("The second tone sounds
higher.") instead of the measurements: the warm-start teacher of an audio-language policy, which hears the
clip and has no tools (`configs/audio.yaml`). It hears audio (`hears_audio`), so the rollout lets it act on
audio-only tasks.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Callable, Sequence

import numpy as np

from agentenv.envs.audio import analysis
from agentenv.envs.audio.signals import SAMPLE_RATE
from agentenv.types import Generation, Messages

__all__ = ["ScriptedAudioAgent", "ChanceAgent"]

HIGH_LOW_SPLIT_HZ = 600.0  # the task vocabulary: "low tones" sit below it, "high-pitched beeps" above
MAX_SPECTRUM_CALLS = 16  # one turn's call limit (`tools.parsing.MAX_CALLS_PER_TURN`)

Events = list[dict[str, float]]


def _question(messages: Messages) -> str:
    return next((m["content"] for m in messages if m["role"] == "user"), "")


def _call(name: str, arguments: dict[str, Any]) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def _results(messages: Messages, name: str) -> list[dict]:
    out = []
    for m in messages:
        if m["role"] == "tool" and m.get("name") == name and m["content"].startswith("{"):
            out.append(json.loads(m["content"]))
    return out


def _groups(events: Events) -> list[int]:
    """Group sizes, splitting at gaps much longer than the shortest (geometric-mean threshold)."""
    if len(events) < 2:
        return [len(events)]
    gaps = [b["start"] - a["end"] for a, b in zip(events, events[1:])]
    short, long = max(min(gaps), 1e-3), max(gaps)
    if long < 1.8 * short:
        return [len(events)]
    threshold = math.sqrt(short * long)
    sizes = [1]
    for gap in gaps:
        if gap > threshold:
            sizes.append(1)
        else:
            sizes[-1] += 1
    return sizes


_ARITHMETIC = {"L + H": lambda lo, hi: lo + hi, "L * H": lambda lo, hi: lo * hi, "|L - H|": lambda lo, hi: abs(lo - hi)}

# solver(events, pitch of each event, question match) -> (answer value, the reasoning in words)
Solver = Callable[[Events, list[float], re.Match], tuple[Any, str]]


def _count(events: Events, hz: list[float], m: re.Match) -> tuple[Any, str]:
    high = sum(f > HIGH_LOW_SPLIT_HZ for f in hz)
    return high, f"{len(events)} events at {_hz(hz)} Hz; {high} are above {HIGH_LOW_SPLIT_HZ:g} Hz."


def _compare(events: Events, hz: list[float], m: re.Match) -> tuple[Any, str]:
    first, second = hz[0], hz[-1]
    return ("higher" if second > first else "lower"), f"First tone {first:.0f} Hz, second tone {second:.0f} Hz."


def _highest(events: Events, hz: list[float], m: re.Match) -> tuple[Any, str]:
    return int(np.argmax(hz)) + 1, f"Tone pitches in order: {_hz(hz)} Hz."


def _longest(events: Events, hz: list[float], m: re.Match) -> tuple[Any, str]:
    durations = [e["end"] - e["start"] for e in events]
    return int(np.argmax(durations)) + 1, f"Tone durations in order: {', '.join(f'{d:.3f}' for d in durations)} s."


def _rhythm(events: Events, hz: list[float], m: re.Match) -> tuple[Any, str]:
    sizes = _groups(events)
    return tuple(sizes), f"{len(events)} beeps; the long pauses split them into groups of {', '.join(map(str, sizes))}."


def _arithmetic(events: Events, hz: list[float], m: re.Match) -> tuple[Any, str]:
    low = sum(f <= HIGH_LOW_SPLIT_HZ for f in hz)
    high = len(hz) - low
    value = _ARITHMETIC[m["expr"]](low, high)
    return value, f"Pitches {_hz(hz)} Hz give L = {low} low and H = {high} high tones, so {m['expr']} = {value}."


def _hz(hz: list[float]) -> str:
    return ", ".join(f"{f:.0f}" for f in hz)


# What a listener says it heard, per solver (no measurements: an audio model hears, it does not read numbers).
def _heard(solve: Solver, value: Any, m: re.Match) -> str:
    if solve is _count:
        return f"I hear {value} high beeps."
    if solve is _compare:
        return f"The second tone sounds {value}."
    if solve is _highest:
        return f"Tone {value} sounds highest."
    if solve is _longest:
        return f"Tone {value} lasts longest."
    if solve is _rhythm:
        return f"The groups have {' '.join(map(str, value))} beeps."
    return f"So {m['expr']} = {value}."


_EXPR = r"(?P<expr>L \+ H|L \* H|\|L - H\|)"
# (open question, nli claim with the claimed value as `v`, needs the pitch of each event?, solver)
_SOLVERS: list[tuple[re.Pattern, re.Pattern, bool, Solver]] = [
    (re.compile(r"How many high-pitched beeps"),
     re.compile(r"Claim: The clip contains exactly (?P<v>\d+) high-pitched beeps"), True, _count),
    (re.compile(r"Is the second tone higher or lower"),
     re.compile(r"Claim: The second tone is (?P<v>higher|lower) in pitch"), True, _compare),
    (re.compile(r"Which tone has the highest pitch"),
     re.compile(r"Claim: The tone at position (?P<v>\d+) has the highest pitch"), True, _highest),
    (re.compile(r"Which tone lasts the longest"),
     re.compile(r"Claim: The tone at position (?P<v>\d+) lasts the longest"), False, _longest),
    (re.compile(r"How many beeps are in each group"),
     re.compile(r"Claim: The beeps come in groups of (?P<v>[\d, ]+)\."), False, _rhythm),
    (re.compile(rf"What is {_EXPR}\?"), re.compile(rf"Claim: For this clip, {_EXPR} = (?P<v>\d+)\."), True, _arithmetic),
]


def _claimed(text: str) -> Any:
    """A claim's value in the solver's type: int, word or tuple of ints."""
    if text.isdigit():
        return int(text)
    if re.fullmatch(r"[\d, ]+", text):
        return tuple(int(t) for t in re.findall(r"\d+", text))
    return text


class ScriptedAudioAgent:
    """Deterministic agent for the tone tasks of AudioReasoning-v0: through the tools, or with `listen=True` from
    the waveform in the observation (see the module docstring)."""

    def __init__(self, listen: bool = False):
        self.listen = listen
        self.hears_audio = listen

    def generate(self, contexts: Sequence[Messages]) -> list[Generation]:
        return [Generation(self.act(messages)) for messages in contexts]

    def act(self, messages: Messages) -> str:
        return self._listen(messages) if self.listen else self._use_tools(messages)

    def _listen(self, messages: Messages) -> str:
        """One turn: the events and their pitches from the clip itself, what was heard, the answer."""
        question = _question(messages)
        solver = self._match(question)
        clip = next((m["audio"] for m in reversed(messages) if m.get("audio") is not None), None)
        if solver is None or clip is None:
            fallback = "not-entailed" if "entailed" in question else "0"
            return f"<think>I cannot make out the answer, so I guess.</think><answer>{fallback}</answer>"
        match, nli, needs_pitch, solve = solver
        x, rate = np.asarray(clip["array"], dtype=np.float32), int(clip.get("sampling_rate", SAMPLE_RATE))
        events = analysis.onsets(x, rate)["events"]
        hz = [analysis.spectrum(x, rate, e["start"], e["end"])["dominant_hz"] for e in events] if needs_pitch else []
        value = solve(events, hz, match)[0] if events else 0
        heard = _heard(solve, value, match) if events else "I hear no sound events."
        return self._answer(value, heard, match, nli)

    @staticmethod
    def _answer(value: Any, reasoning: str, match: re.Match, nli: bool) -> str:
        if nli:
            entailed = _claimed(match["v"]) == value
            reasoning += f" The claim says {match['v']}."
            answer = "entailed" if entailed else "not-entailed"
        else:
            answer = " ".join(map(str, value)) if isinstance(value, tuple) else str(value)
        return f"<think>{reasoning}</think><answer>{answer}</answer>"

    def _use_tools(self, messages: Messages) -> str:
        question = _question(messages)
        last = messages[-1]
        if last["role"] == "tool" and last["content"].startswith("queued #"):
            return "Running the queued calls. <execute/>"
        solver = self._match(question)
        if solver is None:
            fallback = "not-entailed" if "entailed" in question else "0"
            return f"<think>These tools cannot transcribe speech, so I guess.</think><answer>{fallback}</answer>"
        match, nli, needs_pitch, solve = solver
        onsets = _results(messages, "count_onsets")
        if not onsets:
            return "<think>First I find the sound events.</think>" + _call("count_onsets", {})
        events = onsets[-1]["events"]
        spectra = _results(messages, "spectrum")
        if needs_pitch and len(spectra) < min(len(events), MAX_SPECTRUM_CALLS) and events:
            calls = "".join(_call("spectrum", {"start": e["start"], "end": e["end"]}) for e in events[:MAX_SPECTRUM_CALLS])
            return f"<think>There are {len(events)} events; I measure the pitch of each.</think>{calls}"
        if not events:
            value, reasoning = 0, "No sound events were found."
        else:
            hz = [s["dominant_hz"] for s in spectra[-min(len(events), MAX_SPECTRUM_CALLS):]] if needs_pitch else []
            value, reasoning = solve(events, hz, match)
        if nli:
            entailed = _claimed(match["v"]) == value
            shown = " ".join(map(str, value)) if isinstance(value, tuple) else value
            reasoning += f" The measured answer is {shown}; the claim says {match['v']}."
            answer = "entailed" if entailed else "not-entailed"
        else:
            answer = " ".join(map(str, value)) if isinstance(value, tuple) else str(value)
        return f"<think>{reasoning}</think><answer>{answer}</answer>"

    @staticmethod
    def _match(question: str) -> tuple[re.Match, bool, bool, Solver] | None:
        for open_form, claim_form, needs_pitch, solve in _SOLVERS:
            match = claim_form.search(question)
            if match:
                return match, True, needs_pitch, solve
            match = open_form.search(question)
            if match:
                return match, False, needs_pitch, solve
        return None


class ChanceAgent:
    """Answers uniformly at random among the options the question names (no tools, no listening)."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def generate(self, contexts: Sequence[Messages]) -> list[Generation]:
        return [Generation(self.act(messages)) for messages in contexts]

    def act(self, messages: Messages) -> str:
        question = _question(messages)
        if "entailed or not-entailed" in question:
            options = ["entailed", "not-entailed"]
        elif "higher or lower" in question:
            options = ["higher", "lower"]
        else:
            options = [str(i) for i in range(1, 6)]
        return f"<think>I pick at random.</think><answer>{options[int(self.rng.integers(len(options)))]}</answer>"
