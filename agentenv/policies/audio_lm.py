"""AudioLMPolicy: an audio-language model (Qwen2-Audio architecture) that hears AudioReasoning-v0's waveforms.

The model is transformers' `Qwen2AudioForConditionalGeneration`: a Whisper-style encoder (two convolutions,
transformer layers over 2·max_source_positions log-mel frames, average pooling: one audio embedding per 40 ms),
a linear projector, and a Qwen2 language model whose `<|AUDIO|>` placeholder ids take the projected audio
embeddings. "audio-tiny" builds one with random weights from a small config, with the shipped tiny tokenizer
plus Qwen2-Audio's three audio tokens and a `WhisperFeatureExtractor`, all locally; a directory saved by
`save_pretrained` loads without the network (tested), and so should a Qwen2-Audio checkpoint directory
(transformers renames its weights on load; not run here, there are no such weights offline).

Token in, token out, with the audio beside the ids. `AudioChatTokens` renders a message that carries
`"audio"` as `<|audio_bos|><|AUDIO|>×N<|audio_eos|>` per chunk of the clip (N = the encoder's output length
for that chunk, as `Qwen2AudioProcessor` counts it) before the text, and returns each chunk's log-mel features
(`input_features` [M, F], `feature_attention_mask` [F]) beside the ids. The rollout stores them in
`Sample.inputs` and hands them to `generate_ids(..., inputs=)`; the learner passes them to the forward again, so
the log-probs it trains on are those of the ids and features that were sampled (placeholders are prompt
tokens, never in the loss). A clip longer than the encoder's window (2·max_source_positions frames: 4 s for
audio-tiny, 30 s for Qwen2-Audio) is split into consecutive chunks, each with its own placeholders, so no
audio is cut off.

Features are computed once per distinct chunk (a GRPO group's G episodes hear the same clip): an LRU cache
keyed by the chunk's bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from agentenv.policies.base import Generation, stack_inputs
from agentenv.policies.chat_tokens import ChatTokens, Messages
from agentenv.policies.hf import HFPolicy, _load_tokenizer

__all__ = ["AUDIO_SIZES", "AUDIO_TOKENS", "AudioChatTokens", "AudioEmbedder", "AudioLMPolicy", "audio_tokenizer",
           "audio_lm_config", "audio_lm_model", "audio_processor", "is_audio_model", "load_audio_model", "save_for_vllm",
           "vllm_weight_name"]

AUDIO_TOKENS = ("<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>")  # Qwen2-Audio's names
SAMPLING_RATE = 16_000
MIN_CHUNK_S = 0.1  # a shorter chunk would give the encoder < 2 output positions: padded with silence to this

# language model (a `TINY_SIZES` name) and Whisper-style encoder of each random-init size. 80 mel bands as
# Whisper v1/v2; max_source_positions 200 = 400 frames = 4 s windows (every level-1 tone clip but some rhythm
# clips fits one), so the encoder's fixed-length input is not mostly padding.
AUDIO_SIZES = {
    "audio-tiny": dict(text="tiny", audio=dict(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=256,
                                              num_mel_bins=80, max_source_positions=200)),
    "audio-small": dict(text="small", audio=dict(d_model=128, encoder_layers=4, encoder_attention_heads=4, encoder_ffn_dim=512,
                                               num_mel_bins=80, max_source_positions=200)),
}


def is_audio_model(spec: Any) -> bool:
    """Whether `spec` is or names an audio-language model: an `AUDIO_SIZES` name, a directory whose config has an
    audio encoder (`audio_config`: Qwen2-Audio and its kind), or a loaded model with such a config."""
    if not isinstance(spec, (str, Path)):
        return hasattr(getattr(spec, "config", None), "audio_config")
    if str(spec) in AUDIO_SIZES:
        return True
    config = Path(spec) / "config.json"
    try:
        return config.is_file() and "audio_config" in json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def load_audio_model(spec: Any, processor: Any = None, model_seed: int = 0, max_seq_len: int = 4096,
                     dtype: torch.dtype | None = None) -> tuple[Any, Any]:
    """(model, processor) for an `AUDIO_SIZES` name (random init, `model_seed`), a directory (saved with
    `save_pretrained`, or a Qwen2-Audio checkpoint), or a loaded `Qwen2AudioForConditionalGeneration` (then
    `processor` is required)."""
    if isinstance(spec, (str, Path)) and str(spec) in AUDIO_SIZES:
        tokenizer = processor.tokenizer if processor is not None else audio_tokenizer()
        model = audio_lm_model(str(spec), seed=model_seed, tokenizer=tokenizer, max_seq_len=max_seq_len)
        return model, processor if processor is not None else audio_processor(model.config, tokenizer)
    if isinstance(spec, (str, Path)):
        from transformers import Qwen2AudioForConditionalGeneration

        path = Path(spec)
        if not is_audio_model(path):
            raise FileNotFoundError(f"{path} is not an audio-language model directory (config.json with an audio_config), "
                                    f"nor one of {sorted(AUDIO_SIZES)}")
        model = Qwen2AudioForConditionalGeneration.from_pretrained(str(path), dtype=dtype or torch.float32, local_files_only=True)
        return model, processor if processor is not None else _load_processor(path)
    if processor is None:
        raise ValueError("pass processor=... with a loaded model (audio_processor(model.config, tokenizer))")
    return spec, processor


# transformers 5 nests the parts under `model.`; the published Qwen2-Audio checkpoints (and so vLLM's loader) name
# them as below. (transformers 5.19–5.25's save_pretrained writes `language_model.model.model.*`, which vLLM
# cannot load: `save_for_vllm` writes the weights itself.)
_VLLM_NAMES = (("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
               ("model.audio_tower.", "audio_tower."), ("model.multi_modal_projector.", "multi_modal_projector."))


def vllm_weight_name(name: str) -> str:
    """A Qwen2-Audio parameter's name as the model holds it → as vLLM loads it (other names unchanged)."""
    for ours, theirs in _VLLM_NAMES:
        if name.startswith(ours):
            return theirs + name[len(ours):]
    return name


def save_for_vllm(model: Any, processor: Any, path: str | Path) -> None:
    """A directory vLLM's Qwen2-Audio loads: config, processor (tokenizer + feature extractor) and weights under
    the published names. The language model's head tying is written as the model has it: vLLM reads
    `text_config.tie_word_embeddings`, which a Qwen2-Audio config leaves at True even when the head is separate."""
    from safetensors.torch import save_file

    path = Path(path)
    model.config.save_pretrained(str(path))
    tied = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    config.setdefault("text_config", {})["tie_word_embeddings"] = tied
    config["architectures"] = [type(model).__name__]  # how vLLM picks its implementation (model.save_pretrained adds it)
    (path / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    processor.save_pretrained(str(path))
    tensors = {vllm_weight_name(k): v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


class AudioEmbedder:
    """A copy of an audio LM's encoder and projector: log-mel features → the embeddings its placeholder ids take,
    as the model's own forward computes and scatters them. For an engine that runs the language model alone on
    given embeddings (vLLM's `audio_embeds` input), so it hears exactly the features the learner forwards.
    `load(state_dict)` takes the model's new weights (its `model.audio_tower.*` / `model.multi_modal_projector.*`)."""

    PARTS = ("model.audio_tower.", "model.multi_modal_projector.")

    def __init__(self, model: Any):
        import copy

        inner = model.model
        self.tower = copy.deepcopy(inner.audio_tower).eval().requires_grad_(False)
        self.projector = copy.deepcopy(inner.multi_modal_projector).eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, items: Sequence[dict[str, Any]]) -> list[torch.Tensor]:
        """One `[N_i, H]` tensor per item (N_i = `AudioChatTokens.audio_tokens(item)`), on the CPU."""
        if not items:
            return []
        from transformers.masking_utils import create_bidirectional_mask

        parameter = next(self.tower.parameters())
        features = torch.stack([item["input_features"] for item in items]).to(parameter.device, parameter.dtype)
        masks = torch.stack([item["feature_attention_mask"] for item in items]).to(parameter.device)
        lengths, outputs = self.tower._get_feat_extract_output_lengths(masks.sum(-1))
        positions = (features.shape[-1] - 2) // 2 + 1
        valid = (torch.arange(positions, device=parameter.device)[None] < lengths[:, None]).long()
        attention = create_bidirectional_mask(config=self.tower.config, attention_mask=valid,
                                              inputs_embeds=features.new_zeros(len(items), positions, 1))
        hidden = self.projector(self.tower(features, attention_mask=attention).last_hidden_state)
        return [h[: int(n)].float().cpu() for h, n in zip(hidden, outputs)]

    def load(self, state: Mapping[str, torch.Tensor]) -> None:
        for prefix, module in zip(self.PARTS, (self.tower, self.projector)):
            module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})


def audio_tokenizer():
    """The shipped tiny ChatML tokenizer plus the three audio tokens (ids 1250–1252), a fresh copy."""
    from transformers import PreTrainedTokenizerFast

    from agentenv.policies.tiny import TINY_TOKENIZER_DIR

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(TINY_TOKENIZER_DIR))
    tokenizer.add_special_tokens({"additional_special_tokens": list(AUDIO_TOKENS)})
    return tokenizer


def audio_lm_config(size: str = "audio-tiny", tokenizer: Any = None, max_seq_len: int = 4096):
    """A `Qwen2AudioConfig` for `size` in `AUDIO_SIZES`, with `tokenizer`'s vocabulary (default `audio_tokenizer()`)."""
    from transformers import Qwen2AudioConfig

    from agentenv.policies.tiny import tiny_config

    if size not in AUDIO_SIZES:
        raise ValueError(f"size must be one of {sorted(AUDIO_SIZES)}, got {size!r}")
    tokenizer = tokenizer if tokenizer is not None else audio_tokenizer()
    text = tiny_config(AUDIO_SIZES[size]["text"], max_seq_len).to_dict()
    text.update(vocab_size=len(tokenizer))
    return Qwen2AudioConfig(audio_config=dict(AUDIO_SIZES[size]["audio"]), text_config=text,
                            audio_token_index=tokenizer.convert_tokens_to_ids(AUDIO_TOKENS[1]))


def audio_lm_model(size: str = "audio-tiny", seed: int = 0, tokenizer: Any = None, max_seq_len: int = 4096):
    """A randomly initialised `Qwen2AudioForConditionalGeneration` (float32, eval mode); same seed, same weights.

    The encoder's frozen position table is set to Whisper's sinusoids (as in the published encoders) rather than
    left at random: with random vectors of std 0.02 the encoder would barely know where in the window it is."""
    from transformers import Qwen2AudioForConditionalGeneration
    from transformers.models.whisper.modeling_whisper import sinusoids

    config = audio_lm_config(size, tokenizer, max_seq_len)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2AudioForConditionalGeneration(config)
    tower = model.model.audio_tower
    with torch.no_grad():
        tower.embed_positions.weight.copy_(sinusoids(*tower.embed_positions.weight.shape))
    return model.eval()


def audio_processor(config: Any, tokenizer: Any):
    """A `Qwen2AudioProcessor` for a model `config`: `tokenizer` and a `WhisperFeatureExtractor` whose window is the
    encoder's (2·max_source_positions frames of 10 ms) with its number of mel bands."""
    from transformers import Qwen2AudioProcessor, WhisperFeatureExtractor

    audio = config.audio_config
    frames = 2 * audio.max_source_positions
    extractor = WhisperFeatureExtractor(feature_size=audio.num_mel_bins, sampling_rate=SAMPLING_RATE, hop_length=160,
                                        chunk_length=frames * 160 // SAMPLING_RATE, n_fft=400)
    return Qwen2AudioProcessor(feature_extractor=extractor, tokenizer=tokenizer)


def _load_processor(path: Path):
    """The processor saved in `path`: its tokenizer exactly as saved (`hf._load_tokenizer`) and feature extractor."""
    from transformers import Qwen2AudioProcessor, WhisperFeatureExtractor

    if not any((path / name).exists() for name in ("preprocessor_config.json", "processor_config.json")):
        raise FileNotFoundError(f"{path} holds no feature extractor (preprocessor_config.json or processor_config.json): "
                                "save the processor there with processor.save_pretrained(path)")
    extractor = WhisperFeatureExtractor.from_pretrained(str(path), local_files_only=True)
    return Qwen2AudioProcessor(feature_extractor=extractor, tokenizer=_load_tokenizer(path))


def _audio_tokens_of(processor: Any) -> tuple[str, str, str]:
    """The processor's names of the audio start, placeholder and end tokens."""
    return (processor.audio_bos_token, processor.audio_token, processor.audio_eos_token)


def _encoder_tokens(frames: int) -> int:
    """Audio embeddings the encoder yields for `frames` real mel frames (conv stride 2, then pooling stride 2):
    `Qwen2AudioProcessor`'s count."""
    return (((frames - 1) // 2 + 1) - 2) // 2 + 1


class AudioChatTokens(ChatTokens):
    """`ChatTokens` that hear: a message's `"audio"` (`{"array": [N], "sampling_rate": int}`) becomes placeholder
    ids plus log-mel features (module docstring). `prompt`/`delta` give the expanded ids; `prompt_and_inputs` /
    `delta_and_inputs` give the features too — the ids are only meaningful with them.

    Anything a message brings is read defensively: other sampling rates are resampled, stereo is averaged,
    NaN/inf become 0, an empty clip becomes 0.1 s of silence, and the audio token strings in message text are
    removed (text cannot forge a placeholder that no features would fill)."""

    hears_audio = True

    def __init__(self, tokenizer: Any, feature_extractor: Any, audio_tokens: Sequence[str] = AUDIO_TOKENS, cache_items: int = 512):
        vocab = tokenizer.get_vocab()
        missing = [t for t in audio_tokens if t not in vocab]
        if missing:
            raise ValueError(f"the tokenizer lacks the audio tokens {missing}; add them (tokenizer.add_special_tokens)")
        self.audio_bos, self.audio_token, self.audio_eos = audio_tokens
        self.audio_id: int = vocab[self.audio_token]
        # never sampled by a policy that hears: a sampled placeholder id would be read as audio on the next forward
        self.audio_ids: list[int] = sorted(vocab[t] for t in audio_tokens)
        super().__init__(tokenizer)  # renders a dummy chat, with `_content` below
        self.extractor = feature_extractor
        self.sampling_rate: int = feature_extractor.sampling_rate
        self.chunk_samples: int = feature_extractor.n_samples
        self.cache_items = cache_items
        self._cache: OrderedDict[bytes, dict[str, torch.Tensor]] = OrderedDict()

    # -- rendering ------------------------------------------------------------------------------------

    def _content(self, message: dict[str, Any]) -> str:
        text = str(message.get("content", ""))
        for token in (self.audio_bos, self.audio_token, self.audio_eos):
            text = text.replace(token, "")
        if message.get("audio") is None:
            return text
        chunks = len(self._chunks(message["audio"]))
        return f"{self.audio_bos}{self.audio_token}{self.audio_eos}" * chunks + "\n" + text

    def prompt(self, messages: Messages) -> list[int]:
        return self.prompt_and_inputs(messages)[0]

    def delta(self, messages: Messages) -> list[int]:
        return self.delta_and_inputs(messages)[0]

    def prompt_and_inputs(self, messages: Messages) -> tuple[list[int], list[dict[str, Any]]]:
        return self._expand(ChatTokens.prompt(self, messages), messages)

    def delta_and_inputs(self, messages: Messages) -> tuple[list[int], list[dict[str, Any]]]:
        return self._expand(ChatTokens.delta(self, messages), messages)

    def _expand(self, ids: list[int], messages: Messages) -> tuple[list[int], list[dict[str, Any]]]:
        """Each single `<|AUDIO|>` id (one per chunk, in message order) → as many as the chunk has embeddings."""
        items = [self._features(chunk) for m in messages if m.get("audio") is not None for chunk in self._chunks(m["audio"])]
        found = sum(1 for i in ids if i == self.audio_id)
        if found != len(items):  # the template dropped or repeated a message: the ids would not match the features
            raise ValueError(f"the chat template rendered {found} audio placeholders for {len(items)} audio chunks")
        out: list[int] = []
        chunks = iter(items)
        for i in ids:
            out.extend([i] * self.audio_tokens(next(chunks)) if i == self.audio_id else [i])
        return out, items

    def inputs_of(self, prompts: Sequence[Sequence[int]],
                  inputs: Sequence[Sequence[dict[str, Any]]] | None) -> list[Sequence[dict[str, Any]]]:
        """Each prompt's inputs (none given: no audio), checked to fill exactly the prompt's placeholder ids — a
        prompt rendered without its inputs would otherwise be read with no audio at all."""
        rows = list(inputs) if inputs is not None else [[] for _ in prompts]
        if len(rows) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(rows)} rows of inputs")
        for i, (prompt, items) in enumerate(zip(prompts, rows)):
            found, filled = sum(1 for t in prompt if t == self.audio_id), sum(self.audio_tokens(x) for x in items)
            if found != filled:
                raise ValueError(f"prompt {i} has {found} audio placeholder ids and inputs that fill {filled}: pass the "
                                 "inputs its chat rendered with it (chat.prompt_and_inputs)")
        return rows

    @staticmethod
    def audio_tokens(item: dict[str, Any]) -> int:
        """Placeholder ids that one item's features fill."""
        return _encoder_tokens(int(item["feature_attention_mask"].sum()))

    # -- audio ----------------------------------------------------------------------------------------

    def _chunks(self, audio: Any) -> list[np.ndarray]:
        """The clip at the extractor's rate, split into windows of the encoder's length (the last one at least
        MIN_CHUNK_S, padded with silence)."""
        from agentenv.envs.audio.signals import resample

        if isinstance(audio, dict):
            array, rate = audio.get("array", ()), audio.get("sampling_rate", self.sampling_rate)
        else:
            array, rate = audio, self.sampling_rate
        try:
            x = np.nan_to_num(np.atleast_1d(np.asarray(array, dtype=np.float32)), nan=0.0, posinf=0.0, neginf=0.0)
        except (TypeError, ValueError):  # not numbers at all: heard as silence rather than a crashed episode
            x = np.zeros(0, dtype=np.float32)
        if x.ndim > 1:  # channels: average them (the axis with fewer entries is the channel axis)
            x = x.mean(axis=int(np.argmin(x.shape))).reshape(-1) if x.ndim == 2 else x.reshape(-1)
        try:
            rate = int(rate)
        except (TypeError, ValueError):
            rate = self.sampling_rate
        if rate != self.sampling_rate and rate > 0:
            x = resample(x, rate, self.sampling_rate)
        shortest = int(MIN_CHUNK_S * self.sampling_rate)
        chunks = [x[i : i + self.chunk_samples] for i in range(0, max(x.size, 1), self.chunk_samples)]
        if chunks[-1].size < shortest:
            chunks[-1] = np.pad(chunks[-1], (0, shortest - chunks[-1].size))
        return chunks

    def _features(self, chunk: np.ndarray) -> dict[str, torch.Tensor]:
        key = hashlib.blake2b(chunk.tobytes(), digest_size=16).digest() + chunk.size.to_bytes(8, "little")
        item = self._cache.get(key)
        if item is None:
            out = self.extractor(chunk, sampling_rate=self.sampling_rate, return_attention_mask=True, padding="max_length",
                                 return_tensors="pt")
            item = {"input_features": out["input_features"][0].float().clone(),
                    "feature_attention_mask": out["attention_mask"][0].long().clone()}
            self._cache[key] = item
            while len(self._cache) > self.cache_items:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return item


class AudioLMPolicy(HFPolicy):
    """A `Policy` backed by an audio-language model (module docstring); `HFPolicy`'s sampling loop, with the audio
    features as inputs of the prefill forward.

    Args:
        model_or_path: "audio-tiny" / "audio-small" (random init, `model_seed`), a local directory (saved with
            `save_pretrained`, or a Qwen2-Audio checkpoint), or a loaded `Qwen2AudioForConditionalGeneration`
            (then pass `processor`).
        processor: a `Qwen2AudioProcessor` (tokenizer with the audio tokens + `WhisperFeatureExtractor`); default:
            built for the tiny sizes, loaded from the directory.
        freeze_audio_encoder: keep the encoder's weights fixed (no gradients; the projector and LM still train).
        model_seed, max_seq_len: the random init's seed and position range (the tiny sizes).
        device, temperature, top_p, max_new_tokens, seed, dtype: as `HFPolicy` (`seed` seeds the sampling).

    The prefix cache is off: ids alone do not say which audio a prompt holds.
    """

    hears_audio = True

    def __init__(self, model_or_path: Any = "audio-tiny", processor: Any = None, device: str = "cpu", temperature: float = 1.0,
                 top_p: float = 1.0, max_new_tokens: int = 256, seed: int = 0, dtype: torch.dtype | str | None = None,
                 freeze_audio_encoder: bool = False, model_seed: int = 0, max_seq_len: int = 4096):
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        if dtype is None and isinstance(model_or_path, (str, Path)) and str(model_or_path) not in AUDIO_SIZES:
            dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
        model, processor = load_audio_model(model_or_path, processor, model_seed=model_seed, max_seq_len=max_seq_len,
                                            dtype=dtype)
        super().__init__(model, processor.tokenizer, device=device, temperature=temperature, top_p=top_p,
                         max_new_tokens=max_new_tokens, seed=seed, dtype=dtype, prefix_cache=False)
        self.processor = processor
        self.chat = AudioChatTokens(processor.tokenizer, processor.feature_extractor, _audio_tokens_of(processor))
        audio = self.model.config.audio_config
        if self.model.config.audio_token_id != self.chat.audio_id:
            raise ValueError(f"the model fills id {self.model.config.audio_token_id} with audio; the tokenizer's {self.chat.audio_token} "
                             f"is {self.chat.audio_id}")
        extractor = processor.feature_extractor
        if extractor.feature_size != audio.num_mel_bins or extractor.nb_max_frames != 2 * audio.max_source_positions:
            raise ValueError(f"the feature extractor gives {extractor.feature_size} mel bands × {extractor.nb_max_frames} frames; "
                             f"the encoder takes {audio.num_mel_bins} × {2 * audio.max_source_positions}")
        if freeze_audio_encoder:
            self.model.model.audio_tower.requires_grad_(False)
        # A sampled placeholder id would be read as audio on the next forward (by id, wherever it is), so they
        # are never sampled. The sampling distribution is then the model's renormalised over the other ids:
        # its log-probs differ from the learner's full softmax by log(1 − p(audio ids)), which the learner
        # logs as sampler_kl (≈ 3/V at init, and it falls: these ids are never reinforced).
        self.suppressed_ids = self.chat.audio_ids

    def model_inputs(self, inputs: Sequence[Sequence[dict[str, Any]]]) -> dict[str, torch.Tensor]:
        return stack_inputs(inputs)[0]

    def generate_ids(self, prompts: Sequence[Sequence[int]], max_new_tokens: int | Sequence[int] | None = None,
                     inputs: Sequence[Sequence[dict[str, Any]]] | None = None) -> list[Generation]:
        """`HFPolicy.generate_ids`, after checking that each prompt's placeholder ids are exactly what its inputs fill
        (`AudioChatTokens.inputs_of`)."""
        self.chat.inputs_of(prompts, inputs)
        return super().generate_ids(prompts, max_new_tokens, inputs)

    def save_pretrained(self, path: str | Path) -> None:
        """The model, tokenizer and feature extractor, loadable with `AudioLMPolicy(path)` (no network)."""
        self.model.save_pretrained(str(path))
        self.processor.save_pretrained(str(path))
