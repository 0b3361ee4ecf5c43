"""Waveform synthesis and I/O in numpy: tones, noise at a target SNR, band-limited resampling, WAV files.

Every waveform is a mono float32 array in [-1, 1]. The environment's rate is `SAMPLE_RATE` (16 kHz, as in
ALR). WAV files are read and written with the standard-library `wave` module (integer PCM only).
"""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["SAMPLE_RATE", "Tone", "render_tones", "add_noise", "resample", "read_wav", "write_wav", "wav_to_array"]

SAMPLE_RATE = 16_000
RAMP_S = 0.008  # raised-cosine attack and release: no clicks, and onsets stay sharp
NYQUIST_MARGIN_HZ = 500.0  # square-wave harmonics stop this far below Nyquist (no aliasing)


@dataclass(frozen=True)
class Tone:
    """One tone event of a clip (times in seconds). `role` says what a task uses it for ("target", "low", ...)."""

    start: float
    end: float
    hz: float
    amplitude: float
    timbre: str = "sine"  # "sine" or "square" (odd harmonics 1, 1/3, 1/5, ... below Nyquist)
    role: str = "target"


def _waveform(tone: Tone, n: int, sr: int) -> np.ndarray:
    t = np.arange(n, dtype=np.float32) / np.float32(sr)
    phase = np.float32(2 * np.pi * tone.hz) * t
    out = np.sin(phase)
    if tone.timbre == "square":
        k = 3
        while k * tone.hz < sr / 2 - NYQUIST_MARGIN_HZ:
            out += np.sin(k * phase) / k
            k += 2
        out *= np.float32(1 / np.abs(out).max())
    ramp = min(int(RAMP_S * sr), n // 2)
    if ramp:
        edge = (0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, ramp, dtype=np.float32))).astype(np.float32)
        out[:ramp] *= edge
        out[n - ramp :] *= edge[::-1]
    return out * np.float32(tone.amplitude)


def render_tones(tones: Sequence[Tone], duration: float, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A clip of `duration` seconds holding `tones` (overlapping tones add). -> float32 [round(duration·sr)]."""
    clip = np.zeros(int(round(duration * sr)), dtype=np.float32)
    for tone in tones:
        start = int(round(tone.start * sr))
        n = min(int(round(tone.end * sr)), clip.size) - start
        if n > 0:
            clip[start : start + n] += _waveform(tone, n, sr)
    return clip


def add_noise(x: np.ndarray, rng: np.random.Generator, snr_db: float | None, signal_power: float) -> np.ndarray:
    """`x` plus white Gaussian noise whose power is `signal_power / 10^(snr_db/10)`; `snr_db=None` adds none.

    `signal_power` is the mean power of the sound events themselves (not of the whole clip, whose silences
    would make the same SNR sound different from clip to clip). The result is clipped to [-1, 1].
    """
    if snr_db is None:
        return x
    sigma = np.float32(np.sqrt(signal_power / 10 ** (snr_db / 10)))
    noisy = x + sigma * rng.standard_normal(x.size, dtype=np.float32)
    return np.clip(noisy, -1.0, 1.0, out=noisy)


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Band-limited resampling by FFT (truncate or zero-pad the spectrum). x: [N] -> float32 [round(N·sr_out/sr_in)]."""
    if sr_in == sr_out or x.size == 0:
        return np.asarray(x, dtype=np.float32)
    n_out = max(1, int(round(x.size * sr_out / sr_in)))
    spectrum = np.fft.rfft(x.astype(np.float64))
    bins = n_out // 2 + 1
    if bins <= spectrum.size:
        spectrum = spectrum[:bins]
    else:
        spectrum = np.concatenate([spectrum, np.zeros(bins - spectrum.size, dtype=spectrum.dtype)])
    return (np.fft.irfft(spectrum, n_out) * (n_out / x.size)).astype(np.float32)


def _pcm_to_float(frames: bytes, width: int, channels: int) -> np.ndarray:
    usable = len(frames) - len(frames) % (width * channels)
    raw = np.frombuffer(frames[:usable], dtype=np.uint8)
    if width == 1:  # 8-bit WAV is unsigned
        data = (raw.astype(np.float32) - 128.0) / 128.0
    elif width == 3:  # 24-bit little-endian: widen to int32 by hand
        triples = raw.reshape(-1, 3).astype(np.int32)
        ints = triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)
        ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)
        data = ints.astype(np.float32) / float(1 << 23)
    elif width in (2, 4):
        data = np.frombuffer(raw.tobytes(), dtype=f"<i{width}").astype(np.float32) / float(1 << (8 * width - 1))
    else:
        raise ValueError(f"unsupported WAV sample width {width} bytes")
    return data.reshape(-1, channels).mean(axis=1, dtype=np.float32)


def wav_to_array(source: str | Path | bytes, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Read an integer-PCM WAV (a path or the file's bytes), mix it to mono and resample to `sr`. -> float32 [N].

    Streamed WAVs whose header gives a placeholder length (e.g. `espeak-ng --stdout`) are read to the end.
    """
    x, rate = read_wav(source)
    return resample(x, rate, sr)


def read_wav(source: str | Path | bytes) -> tuple[np.ndarray, int]:
    """An integer-PCM WAV as (mono float32 [N], sampling rate), at the file's own rate."""
    handle = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    try:
        with wave.open(handle, "rb") as w:
            frames = w.readframes(w.getnframes())
            return _pcm_to_float(frames, w.getsampwidth(), w.getnchannels()), w.getframerate()
    except wave.Error as exc:
        raise ValueError(f"cannot read WAV {source if not isinstance(source, bytes) else '<bytes>'}: {exc}; "
                         "convert it to integer PCM (e.g. `sox in.wav -b 16 out.wav`)") from exc
    finally:
        handle.close()


def write_wav(path: str | Path, x: np.ndarray, sr: int = SAMPLE_RATE) -> None:
    """Write a mono float waveform as 16-bit PCM."""
    pcm = (np.clip(x, -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())
