"""Signal analysis in numpy behind the audio tools: spectrum peaks, YIN pitch, onset/offset detection, loudness.

Pure functions of a mono float waveform `x: [N]` at rate `sr`; each returns plain Python data (floats
rounded for display) so that a tool can hand it to a text-only agent as JSON.

- `spectrum`: Hann-windowed FFT of a time span, zero-padded, peaks refined by parabolic interpolation.
- `pitch_track`: YIN (de Cheveigné & Kawahara 2002): difference function via FFT cross-correlation,
  cumulative-mean normalisation, absolute threshold, parabolic refinement; steady stretches merged into
  segments.
- `onsets`: short-time energy envelope in dB, noise floor and event level from its percentiles, hysteresis
  thresholds, then merging of short gaps and dropping of short blips.
- `loudness`: RMS/peak in dBFS, the noise floor and a coarse envelope.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["spectrum", "pitch_track", "onsets", "loudness", "frame_db"]

EPS = 1e-10
FLOOR_DB = -100.0  # what silence reads as (the power floor EPS in dB)
SILENCE_DBFS = -70.0  # frames quieter than this are never voiced


def _db(power: np.ndarray | float) -> np.ndarray:
    return 10.0 * np.log10(np.maximum(power, EPS))


def frame_db(x: np.ndarray, sr: int, win_s: float, hop_s: float) -> np.ndarray:
    """Mean power in dBFS of frames of `win_s` every `hop_s` (frame i centred at i·hop). -> [F]."""
    win, hop = max(1, int(round(win_s * sr))), max(1, int(round(hop_s * sr)))
    padded = np.pad(x.astype(np.float32), (win // 2, win - win // 2))
    sq = np.concatenate([[0.0], np.cumsum(padded.astype(np.float64) ** 2)])
    starts = np.arange(0, x.size, hop)
    return _db((sq[starts + win] - sq[starts]) / win)


def _parabolic(y: np.ndarray, i: np.ndarray) -> np.ndarray:
    """Sub-sample offset in (-½, ½) of the extremum of each row of `y` at index `i`. y: [R, K], i: [R] -> [R]."""
    i = np.clip(i, 1, y.shape[-1] - 2)
    a = np.take_along_axis(y, (i - 1)[..., None], -1)[..., 0]
    b = np.take_along_axis(y, i[..., None], -1)[..., 0]
    c = np.take_along_axis(y, (i + 1)[..., None], -1)[..., 0]
    denom = a - 2 * b + c
    safe = np.where(np.abs(denom) > 1e-12, denom, 1.0)
    return np.where(np.abs(denom) > 1e-12, 0.5 * (a - c) / safe, 0.0)


def spectrum(x: np.ndarray, sr: int, start: float = 0.0, end: float | None = None, top: int = 5) -> dict:
    """Magnitude spectrum of `x[start:end]` (seconds): the dominant frequency and the `top` strongest peaks."""
    duration = x.size / sr
    end = duration if end is None else end
    if not 0.0 <= start < end:
        raise ValueError(f"need 0 <= start < end, got start={start}, end={end}")
    if start >= duration:
        raise ValueError(f"start={start} s is past the end of the clip ({duration:.3f} s)")
    end = min(end, duration)
    seg = x[int(start * sr) : int(np.ceil(end * sr))].astype(np.float64)
    if seg.size < 8:
        raise ValueError("the span is too short: give at least 1 ms")
    nfft = max(4096, 1 << int(np.ceil(np.log2(seg.size))))
    mag = np.abs(np.fft.rfft(seg * np.hanning(seg.size), nfft)) * (2.0 / np.hanning(seg.size).sum())
    level = _db(mag**2)
    is_peak = (level[1:-1] > level[:-2]) & (level[1:-1] >= level[2:]) & (level[1:-1] > level.max() - 60)
    idx = np.flatnonzero(is_peak) + 1
    idx = idx[np.argsort(level[idx])[::-1]]
    hz_per_bin = sr / nfft
    chosen: list[int] = []
    for i in idx:  # keep peaks at least 30 Hz apart (window sidelobes are not separate sounds)
        if all(abs(int(i) - j) * hz_per_bin >= 30.0 for j in chosen):
            chosen.append(int(i))
        if len(chosen) == top:
            break
    offsets = _parabolic(np.broadcast_to(level, (len(chosen), level.size)), np.array(chosen, dtype=int))
    peaks = [
        {"hz": round(float((i + o) * hz_per_bin), 1), "db": round(float(level[i]), 1)}
        for i, o in zip(chosen, offsets)
    ]
    return {
        "start": round(start, 3),
        "end": round(end, 3),
        "dominant_hz": peaks[0]["hz"] if peaks else 0.0,
        "peaks": peaks,
        "rms_dbfs": round(float(_db(np.mean(seg**2))), 1),
    }


def _yin(x: np.ndarray, sr: int, hop: int, fmin: float, fmax: float, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """YIN per frame: (f0 in Hz, aperiodicity = CMND at the chosen lag) for frames centred every `hop`. -> ([F], [F])."""
    tau_min, tau_max = max(2, int(sr / fmax)), int(np.ceil(sr / fmin))
    win = 2 * tau_max  # two periods of the lowest pitch
    length = win + tau_max
    padded = np.pad(x.astype(np.float64), (win // 2, length))  # frame i is centred at sample i·hop
    frames = sliding_window_view(padded, length)[: max(1, x.size // hop) * hop : hop]  # [F, W + tau_max]
    nfft = 1 << int(np.ceil(np.log2(length + win)))
    head = np.fft.rfft(frames[:, :win], nfft)
    full = np.fft.rfft(frames, nfft)
    corr = np.fft.irfft(np.conj(head) * full, nfft)[:, : tau_max + 1]  # r(τ) = Σ_{j<W} x_j x_{j+τ}
    sq = np.concatenate([np.zeros((frames.shape[0], 1)), np.cumsum(frames**2, axis=1)], axis=1)
    taus = np.arange(tau_max + 1)
    energy_shifted = sq[:, taus + win] - sq[:, taus]  # Σ_{j<W} x_{j+τ}²
    diff = sq[:, [win]] + energy_shifted - 2 * corr  # d(τ)
    diff[:, 0] = 0.0
    running = np.cumsum(diff[:, 1:], axis=1) / np.arange(1, tau_max + 1)
    cmnd = np.ones_like(diff)
    cmnd[:, 1:] = diff[:, 1:] / np.maximum(running, EPS)
    cmnd[:, :tau_min] = np.inf
    below = cmnd < threshold
    # the first dip under the threshold, followed down to its local minimum (else the global minimum)
    first = np.where(below.any(axis=1), below.argmax(axis=1), np.argmin(cmnd, axis=1))
    rising = np.zeros_like(below)
    rising[:, :-1] = cmnd[:, 1:] >= cmnd[:, :-1]
    rising[:, -1] = True
    rising &= taus[None, :] >= first[:, None]
    tau = rising.argmax(axis=1)
    aperiodicity = np.take_along_axis(cmnd, tau[:, None], 1)[:, 0]
    refined = tau + _parabolic(np.where(np.isinf(cmnd), 1e3, cmnd), tau)
    return sr / np.maximum(refined, 1.0), aperiodicity


def pitch_track(x: np.ndarray, sr: int, hop_s: float = 0.01, fmin: float = 70.0, fmax: float = 2000.0,
                threshold: float = 0.2, max_segments: int = 64) -> dict:
    """Voiced segments of steady pitch: `[{"start", "end", "hz"}]` (median f0), split at > 1 semitone jumps."""
    hop = max(1, int(round(hop_s * sr)))
    if x.size < hop:
        return {"hop_s": round(hop / sr, 4), "voiced_fraction": 0.0, "count": 0, "segments": []}
    f0, aperiodicity = _yin(x, sr, hop, fmin, fmax, threshold)
    level = frame_db(x, sr, 2 / fmin, hop / sr)[: f0.size]
    voiced = (aperiodicity < threshold) & (level > max(level.max() - 40.0, SILENCE_DBFS))
    segments: list[dict] = []
    run: list[int] = []

    def close() -> None:
        if len(run) >= 3:  # ≥ 30 ms of steady pitch
            segments.append({"start": round(run[0] * hop / sr, 3), "end": round((run[-1] + 1) * hop / sr, 3),
                             "hz": round(float(np.median(f0[run])), 1)})

    for i in range(f0.size):
        if voiced[i] and run and abs(12 * np.log2(f0[i] / np.median(f0[run[-3:]]))) > 1.0:
            close()
            run = []
        if voiced[i]:
            run.append(i)
        elif run:
            close()
            run = []
    close()
    return {"hop_s": round(hop / sr, 4), "voiced_fraction": round(float(voiced.mean()) if voiced.size else 0.0, 3),
            "count": len(segments), "segments": segments[:max_segments]}


def onsets(x: np.ndarray, sr: int, win_s: float = 0.01, hop_s: float = 0.005, min_gap_s: float = 0.025,
           min_event_s: float = 0.025, max_events: int = 64) -> dict:
    """Sound events from the energy envelope: `{"count", "events": [{"start", "end"}]}` (seconds).

    The noise floor is the 5th percentile of frame levels and the event level the 99th. An event is a run of
    frames above floor + 20 % of that range (≥ 2 dB) that somewhere reaches floor + 35 % (≥ 3 dB): hysteresis,
    so noise flicker near one threshold does not split or invent events. Gaps shorter than `min_gap_s` are
    bridged; events shorter than `min_event_s` are dropped. A clip with < 6 dB of range has no events.
    """
    level = frame_db(x, sr, win_s, hop_s)
    if level.size == 0:
        return {"count": 0, "events": []}
    floor, top = np.percentile(level, 5), np.percentile(level, 99)
    span = top - floor
    if span < 6.0:  # nothing stands out of the background
        return {"count": 0, "events": []}
    on, off = floor + max(0.35 * span, 3.0), floor + max(0.2 * span, 2.0)
    # hysteresis: runs of frames above `off` that reach `on` somewhere
    above = np.concatenate([[False], level > off, [False]])
    edges = np.flatnonzero(np.diff(above.astype(np.int8)))
    runs = [(s, e) for s, e in zip(edges[::2], edges[1::2]) if level[s:e].max() > on]
    merged: list[list[int]] = []
    for start, end in runs:
        if merged and (start - merged[-1][1]) * hop_s < min_gap_s:
            merged[-1][1] = end
        else:
            merged.append([start, end])
    kept = [(float(s * hop_s), float(e * hop_s)) for s, e in merged if (e - s) * hop_s >= min_event_s]
    return {"count": len(kept), "events": [{"start": round(s, 3), "end": round(e, 3)} for s, e in kept[:max_events]]}


def loudness(x: np.ndarray, sr: int, bins: int = 50) -> dict:
    """RMS and peak level in dBFS, the noise floor (5th percentile of 10 ms frames) and a coarse envelope."""
    duration = x.size / sr
    level = frame_db(x, sr, 0.01, 0.01)
    step = max(0.1, duration / bins)
    per_bin = max(1, int(round(step / 0.01)))
    envelope = [round(float(_db(np.mean(10 ** (level[i : i + per_bin] / 10)))), 1) for i in range(0, level.size, per_bin)]
    return {
        "duration_s": round(duration, 3),
        "rms_dbfs": round(float(_db(np.mean(x.astype(np.float64) ** 2))) if x.size else FLOOR_DB, 1),
        "peak_dbfs": round(float(20 * np.log10(max(float(np.abs(x).max()) if x.size else 0.0, 1e-6))), 1),
        "noise_floor_dbfs": round(float(np.percentile(level, 5)), 1) if level.size else FLOOR_DB,
        "envelope_step_s": round(step, 3),
        "envelope_dbfs": envelope,
    }
