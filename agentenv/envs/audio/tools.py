"""Audio tools bound to the current episode's waveform, so a text-only LLM can reason over the clip.

`AudioToolbox` holds one waveform (the environment loads each episode's clip into it) and offers four
`Tool`s with JSON schemas, called like any other agentenv tool:

    <tool_call>{"name": "count_onsets", "arguments": {}}</tool_call>
    <tool_call>{"name": "spectrum", "arguments": {"start": 0.2, "end": 0.4}}</tool_call>

Results are JSON with times in seconds, frequencies in Hz and levels in dBFS (see `analysis.py`).
"""

from __future__ import annotations

import numpy as np

from agentenv.envs.audio import analysis
from agentenv.envs.audio.signals import SAMPLE_RATE
from agentenv.tools.base import Tool

__all__ = ["AudioToolbox", "AUDIO_TOOL_NAMES"]

AUDIO_TOOL_NAMES = ("spectrum", "pitch_track", "count_onsets", "loudness")
TIMEOUT_S = 5.0


class AudioToolbox:
    """The audio tools, reading whatever waveform was last `load`ed (a float32 array at `sampling_rate`)."""

    def __init__(self, sampling_rate: int = SAMPLE_RATE):
        self.sampling_rate = sampling_rate
        self.audio = np.zeros(0, dtype=np.float32)
        self.tools: dict[str, Tool] = {
            name: Tool.from_function(getattr(self, name), timeout_s=TIMEOUT_S) for name in AUDIO_TOOL_NAMES
        }

    def load(self, audio: np.ndarray) -> None:
        """Point every tool at `audio` (mono, at `sampling_rate`)."""
        self.audio = np.asarray(audio, dtype=np.float32)

    def spectrum(self, start: float = 0.0, end: float | None = None) -> dict:
        """Frequency content of a time span of the clip: the dominant frequency and the strongest peaks.

        Args:
            start: start of the span in seconds (default: the beginning of the clip).
            end: end of the span in seconds (default: the end of the clip).
        """
        return analysis.spectrum(self.audio, self.sampling_rate, float(start), None if end is None else float(end))

    def pitch_track(self) -> dict:
        """Pitch over time (YIN): the stretches of steady pitch, each with its start, end and median frequency."""
        return analysis.pitch_track(self.audio, self.sampling_rate)

    def count_onsets(self) -> dict:
        """The separate sound events in the clip (from its energy envelope): how many, and when each starts and ends."""
        return analysis.onsets(self.audio, self.sampling_rate)

    def loudness(self) -> dict:
        """Loudness of the clip: RMS and peak level, the background noise floor and a coarse level envelope (dBFS)."""
        return analysis.loudness(self.audio, self.sampling_rate)
