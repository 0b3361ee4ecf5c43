"""Speech synthesis with the `espeak-ng` command (Debian package `espeak-ng`), resampled to 16 kHz.

`espeak-ng --stdout` writes a WAV at 22,050 Hz; it is read with the stdlib `wave` module and resampled
with numpy. The voice, speed and pitch are drawn by the caller (from the episode's generator), so the same
seed speaks the same words the same way. Without the binary, `speech_available()` is False and the speech
task kinds cannot be generated.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from agentenv.envs.audio.signals import SAMPLE_RATE, wav_to_array

__all__ = ["Voice", "speech_available", "draw_voice", "speak", "INSTALL_HINT"]

INSTALL_HINT = "install espeak-ng (Debian/Ubuntu: `apt-get install -y espeak-ng`) to generate the spoken task kinds"
VOICES = ("en", "en-us", "en+m3", "en+f3", "en-gb-x-rp")
TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Voice:
    """espeak-ng settings: voice name (`-v`), words per minute (`-s`) and pitch 0–99 (`-p`)."""

    name: str = "en"
    speed: int = 160
    pitch: int = 50


def speech_available() -> bool:
    """Whether the `espeak-ng` binary is on PATH."""
    return shutil.which("espeak-ng") is not None


def draw_voice(rng: np.random.Generator) -> Voice:
    """A random voice, speed (130–180 wpm) and pitch (30–70): robustness variants, as in the ALR recipe."""
    return Voice(str(rng.choice(VOICES)), int(rng.integers(130, 181)), int(rng.integers(30, 71)))


@lru_cache(maxsize=1024)
def _synthesize(text: str, voice: Voice) -> np.ndarray:
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise RuntimeError(f"espeak-ng was not found: {INSTALL_HINT}")
    command = [binary, "--stdout", "--stdin", "-v", voice.name, "-s", str(voice.speed), "-p", str(voice.pitch)]
    done = subprocess.run(command, input=text.encode("utf-8"), capture_output=True, timeout=TIMEOUT_S, check=False)
    if done.returncode != 0 or len(done.stdout) < 44:
        raise RuntimeError(f"espeak-ng failed ({done.returncode}): {done.stderr.decode(errors='replace')[:200]}")
    audio = wav_to_array(done.stdout, SAMPLE_RATE)
    audio.flags.writeable = False  # cached: callers get a view they cannot corrupt
    return audio


def speak(text: str, voice: Voice = Voice(), peak: float = 0.5) -> np.ndarray:
    """`text` spoken by espeak-ng at 16 kHz, peak-normalised to `peak`. -> float32 [N] (a fresh array)."""
    audio = _synthesize(text, voice)
    top = float(np.abs(audio).max()) if audio.size else 0.0
    return (audio * np.float32(peak / top)) if top > 0 else audio.copy()
