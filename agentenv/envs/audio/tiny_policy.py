"""A tiny audio-conditioned policy for tests: log-mel front end + small transformer, randomly initialised.

It reads the waveform and the question text of an AudioReasoning observation and scores a fixed set of
answer tokens (e.g. "entailed" / "not-entailed", or "higher" / "lower"); sampling one and wrapping it in
`<think>…</think><answer>…</answer>` gives the assistant turn. Small enough to train a few GRPO steps on
CPU in seconds (tests/test_audio.py), so the learner's objectives are exercised on waveform observations.

Shapes: B batch, S samples, F mel frames, M mel bands, P audio tokens (F / patch_frames), L text bytes,
D model width, A answers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from agentenv.types import Messages

__all__ = ["TinyAudioConfig", "LogMel", "TinyAudioPolicy", "mel_filterbank"]


@dataclass
class TinyAudioConfig:
    """Sizes of the front end and the transformer; `answers` are the answer tokens the head scores."""

    sample_rate: int = 16_000
    n_fft: int = 400  # 25 ms windows
    hop_length: int = 160  # 10 ms hops
    n_mels: int = 40
    patch_frames: int = 4  # mel frames per audio token (40 ms)
    max_audio_tokens: int = 256
    max_text_bytes: int = 256
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    dropout: float = 0.0
    answers: tuple[str, ...] = ("entailed", "not-entailed")


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int, fmin: float = 0.0, fmax: float | None = None) -> Tensor:
    """Triangular HTK-mel filters. -> [n_fft // 2 + 1, n_mels]."""
    fmax = fmax or sample_rate / 2

    def to_mel(hz):
        return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)

    def to_hz(mel):
        return 700.0 * (10 ** (np.asarray(mel) / 2595.0) - 1.0)

    edges = to_hz(np.linspace(to_mel(fmin), to_mel(fmax), n_mels + 2))
    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rise = (freqs[None, :] - lower) / (centre - lower)
    fall = (upper - freqs[None, :]) / (upper - centre)
    return torch.tensor(np.maximum(0.0, np.minimum(rise, fall)).T, dtype=torch.float32)


class LogMel(nn.Module):
    """Waveforms [B, S] -> log-mel features [B, F, M] (F = S // hop + 1), per-clip mean/variance normalised."""

    def __init__(self, config: TinyAudioConfig):
        super().__init__()
        self.n_fft, self.hop = config.n_fft, config.hop_length
        self.register_buffer("window", torch.hann_window(config.n_fft), persistent=False)
        self.register_buffer("mel", mel_filterbank(config.n_fft, config.n_mels, config.sample_rate), persistent=False)

    def forward(self, waves: Tensor) -> Tensor:
        spec = torch.stft(waves, self.n_fft, self.hop, window=self.window, return_complex=True).abs() ** 2  # [B, K, F]
        logmel = torch.log(spec.transpose(1, 2) @ self.mel + 1e-6)  # [B, F, M]
        return (logmel - logmel.mean(dim=(1, 2), keepdim=True)) / (logmel.std(dim=(1, 2), keepdim=True) + 1e-5)


class TinyAudioPolicy(nn.Module):
    """[CLS] + text-byte tokens + audio-patch tokens -> transformer encoder -> answer logits from [CLS]."""

    def __init__(self, config: TinyAudioConfig = TinyAudioConfig()):
        super().__init__()
        self.config = c = config
        self.front = LogMel(c)
        self.audio_in = nn.Linear(c.n_mels * c.patch_frames, c.d_model)
        self.text_in = nn.Embedding(256, c.d_model)
        self.audio_pos = nn.Parameter(torch.randn(c.max_audio_tokens, c.d_model) * 0.02)
        self.text_pos = nn.Parameter(torch.randn(c.max_text_bytes, c.d_model) * 0.02)
        self.cls = nn.Parameter(torch.randn(1, 1, c.d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(c.d_model, c.n_heads, 4 * c.d_model, c.dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, c.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, len(c.answers))

    def forward(self, waves: Tensor, wave_lengths: Tensor, text: Tensor, text_lengths: Tensor) -> Tensor:
        """waves: [B, S] (zero-padded), wave_lengths: [B], text: [B, L] bytes, text_lengths: [B] -> logits [B, A]."""
        c = self.config
        mel = self.front(waves)  # [B, F, M]
        patches = mel.shape[1] // c.patch_frames
        if patches > c.max_audio_tokens:
            raise ValueError(f"clip too long: {patches} audio tokens > max_audio_tokens={c.max_audio_tokens}")
        audio = self.audio_in(mel[:, : patches * c.patch_frames].reshape(mel.shape[0], patches, -1))  # [B, P, D]
        audio = audio + self.audio_pos[:patches]
        words = self.text_in(text) + self.text_pos[: text.shape[1]]  # [B, L, D]
        tokens = torch.cat([self.cls.expand(waves.shape[0], -1, -1), words, audio], dim=1)
        audio_valid = torch.arange(patches) < (wave_lengths // c.hop_length // c.patch_frames)[:, None]
        text_valid = torch.arange(text.shape[1]) < text_lengths[:, None]
        pad = ~torch.cat([torch.ones_like(text_valid[:, :1]), text_valid, audio_valid], dim=1)
        hidden = self.encoder(tokens, src_key_padding_mask=pad)
        return self.head(self.norm(hidden[:, 0]))

    def encode(self, observations: list[Messages]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Batch the last audio-bearing user message of each observation into `forward`'s inputs."""
        c = self.config
        clips, texts = [], []
        for messages in observations:
            message = next(m for m in reversed(messages) if m["role"] == "user" and "audio" in m)
            audio = message["audio"]
            if audio["sampling_rate"] != c.sample_rate:
                raise ValueError(f"audio at {audio['sampling_rate']} Hz; this policy expects {c.sample_rate} Hz")
            clips.append(torch.tensor(np.asarray(audio["array"], dtype=np.float32)))  # a copy: observations are read-only
            texts.append(torch.tensor(list(message["content"].encode("utf-8")[-c.max_text_bytes :]), dtype=torch.long))
        wave_lengths = torch.tensor([x.numel() for x in clips])
        text_lengths = torch.tensor([t.numel() for t in texts])
        waves = nn.utils.rnn.pad_sequence(clips, batch_first=True)
        text = nn.utils.rnn.pad_sequence(texts, batch_first=True)
        return waves, wave_lengths, text, text_lengths

    def logits(self, observations: list[Messages]) -> Tensor:
        """Answer logits for a batch of observations. -> [B, A]."""
        return self(*self.encode(observations))

    def action(self, answer_index: int) -> str:
        """The assistant turn that gives answer `answer_index`."""
        return f"<think>I listened to the clip.</think><answer>{self.config.answers[answer_index]}</answer>"
