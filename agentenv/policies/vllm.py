"""VLLMPolicy: sample assistant turns with vLLM (extra `vllm`, GPU), same interface as `HFPolicy`.

Token in, token out: `generate_ids(prompts)` sends the prompt ids as they are (`{"prompt_token_ids": ids}`), so a
rollout never re-tokenizes earlier turns, and returns the sampled ids with the log-prob vLLM computed for each.
The engine is built with `logprobs_mode="processed_logprobs"` (vLLM ≥ 0.10.2), so that log-prob is taken
under the distribution the token was drawn from — after temperature and top-p — exactly as `HFPolicy` reports
it and as the learner's π_old needs it; on older vLLM the raw-logit log-probs are returned instead (a warning
says so). With `temperature=0` (greedy) the log-probs are 0.0, as in `HFPolicy`.

Sampling is seeded per request: every sequence gets its own seed drawn from one generator seeded with `seed`,
so the same seed and the same calls give the same tokens however vLLM schedules the batch.

Weights: `load_weights(state_dict)` pushes the learner's parameters into the running engine in place (no
reload from disk), then drops the prefix cache, whose KV entries were computed with the old weights. In-process
engines (vLLM's V0 engine, or V1 with `VLLM_ENABLE_V1_MULTIPROCESSING=0`, or the `external_launcher` backend
TRL uses) are updated through `llm_engine.model_executor.driver_worker.model_runner.model.load_weights`, as
TRL's colocate mode does. Engines whose workers run in other processes (V1's default) get a worker extension
(`WeightLoaderExtension`, passed as `worker_extension_cls`) and are updated with
`llm.collective_rpc("agentenv_load_weights", args=(weights,))`, which runs `model.load_weights` in each worker;
the tensors travel through vLLM's IPC on CPU, which is fine for the small models this is meant for (multi-GB
models want an NCCL weight-transfer engine instead).

`vllm` is imported lazily: importing this module never needs it; constructing a `VLLMPolicy` without it raises
an ImportError that says how to install it.
"""

from __future__ import annotations

import random
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from agentenv.policies.base import Generation, TokenPolicy
from agentenv.policies.chat_tokens import ChatTokens

__all__ = ["VLLMPolicy", "import_vllm"]

_INSTALL_HINT = (
    "VLLMPolicy needs vLLM, which is not installed: `pip install 'agentenv[vllm]'` (Linux with a CUDA GPU). "
    "On CPU use HFPolicy (`--policy hf:PATH`)."
)


def import_vllm():
    """The `vllm` module, or an ImportError with the install hint."""
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return vllm


class VLLMPolicy(TokenPolicy):
    """A `Policy` backed by a vLLM engine (`vllm.LLM`), with in-place weight updates from the learner.

    Args:
        model_or_path: a local HF model directory, "tiny"/"small" (the random tiny models of
            `agentenv.policies.tiny`), or a loaded `transformers` model; the last two are saved to a
            temporary directory first, since vLLM loads weights from disk.
        tokenizer: a tokenizer with a chat template; default: the model directory's, or the tiny one.
        temperature, top_p: sampling; `temperature=0` is greedy.
        max_new_tokens: default limit of one turn.
        seed: seeds the per-request sampling seeds (and the engine).
        dtype: vLLM's dtype ("auto", "bfloat16", "float32", ...).
        gpu_memory_utilization: fraction of GPU memory vLLM may take (leave room for the learner).
        max_model_len: longest prompt + generation (default: the model config's).
        enable_prefix_caching: reuse the KV cache of shared prompt prefixes (GRPO groups, multi-turn).
        llm_kwargs: anything else for `vllm.LLM`.

    `generate(contexts)` renders chats and samples; `generate_ids(prompts)` continues token ids (the rollout
    uses it); `render_prompt` / `render_delta` as in `HFPolicy`; `load_weights(state_dict)` /
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
        **llm_kwargs: Any,
    ):
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")
        vllm = import_vllm()
        self._tmp: tempfile.TemporaryDirectory | None = None
        path, tokenizer = self._materialise(model_or_path, tokenizer)
        self.tokenizer = tokenizer
        self.chat = ChatTokens(tokenizer)
        self.stop_ids = {self.chat.end_id}
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self._seeds = random.Random(seed)
        self._SamplingParams = vllm.SamplingParams
        kwargs = dict(model=str(path), tokenizer=str(path), dtype=dtype, seed=seed,
                      gpu_memory_utilization=gpu_memory_utilization, enable_prefix_caching=enable_prefix_caching)
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        kwargs.update(llm_kwargs)
        kwargs.setdefault("logprobs_mode", "processed_logprobs")
        kwargs.setdefault("worker_extension_cls", f"{__name__}.WeightLoaderExtension")
        self.llm = None
        while self.llm is None:
            try:
                self.llm = vllm.LLM(**kwargs)
            except TypeError as exc:  # an older vLLM: drop the option it does not know
                unknown = next((key for key in ("logprobs_mode", "worker_extension_cls") if key in kwargs and key in str(exc)), None)
                if unknown is None:
                    raise
                kwargs.pop(unknown)
        self.logprobs_mode = kwargs.get("logprobs_mode", "raw_logprobs")
        if self.logprobs_mode != "processed_logprobs":
            warnings.warn(f"vLLM {getattr(vllm, '__version__', '?')}: logprobs_mode={self.logprobs_mode!r}, so log-probs "
                          "are not taken under the sampling distribution (after temperature/top-p)", stacklevel=2)

    # -- construction ----------------------------------------------------------------------------

    def _materialise(self, model_or_path: Any, tokenizer: Any) -> tuple[Path, Any]:
        """A directory vLLM can load (model + tokenizer files) and the tokenizer to render chats with."""
        from agentenv.policies.tiny import TINY_SIZES, tiny_model, tiny_tokenizer

        if isinstance(model_or_path, (str, Path)) and str(model_or_path) not in TINY_SIZES:
            path = Path(model_or_path)
            if not path.is_dir():
                raise FileNotFoundError(f"{path} is not a model directory (save one with model.save_pretrained), nor 'tiny'/'small'")
            if tokenizer is None:
                if (path / "tokenizer_config.json").exists():
                    from transformers import AutoTokenizer

                    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
                else:
                    tokenizer = tiny_tokenizer()
            if not (path / "tokenizer_config.json").exists():  # vLLM reads the tokenizer from the model directory
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

    def _sampling_params(self, max_tokens: int):
        return self._SamplingParams(
            n=1,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=max_tokens,
            seed=self._seeds.getrandbits(62),
            logprobs=0,  # the sampled token's log-prob only
            stop_token_ids=sorted(self.stop_ids),
            skip_special_tokens=False,
        )

    def generate_ids(self, prompts: Sequence[Sequence[int]], max_new_tokens: int | Sequence[int] | None = None) -> list[Generation]:
        """Continue each prompt (token ids) until the end-of-turn id or its token limit.

        Same contract as `HFPolicy.generate_ids`: B `Generation`s with `prompt_ids`, `token_ids` (end id
        included when emitted), `logprobs` (one per token id), `text` (without the end id) and
        `finish_reason` ("stop" or "length").
        """
        if not prompts:
            return []
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        limit = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        limits = [int(limit)] * len(prompts) if isinstance(limit, int) else [int(n) for n in limit]
        if len(limits) != len(prompts):
            raise ValueError("max_new_tokens needs one limit per prompt")
        generations: list[Generation | None] = [None] * len(prompts)
        rows = [i for i, n in enumerate(limits) if n > 0]
        for i, n in enumerate(limits):
            if n <= 0:  # vLLM needs max_tokens >= 1; no room means an empty, cut-off turn
                generations[i] = Generation("", [], [], list(prompts[i]), "length")
        if rows:
            requests = [{"prompt_token_ids": list(prompts[i])} for i in rows]
            params = [self._sampling_params(limits[i]) for i in rows]
            outputs = self.llm.generate(requests, params, use_tqdm=False)
            for i, output in zip(rows, outputs):
                generations[i] = self._generation(list(prompts[i]), output.outputs[0])
        return generations  # type: ignore[return-value]

    def _generation(self, prompt: list[int], out: Any) -> Generation:
        ids = list(out.token_ids)
        if self.temperature == 0:
            logprobs = [0.0] * len(ids)  # greedy: a point mass, as HFPolicy reports it
        else:
            logprobs = sampled_logprobs(ids, out.logprobs)
        stopped = bool(ids) and ids[-1] in self.stop_ids
        text = self.chat.decode(ids[:-1] if stopped else ids)
        return Generation(text, ids, logprobs, prompt, "stop" if stopped else "length")

    # -- weights -----------------------------------------------------------------------------------

    def load_weights(self, weights: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> None:
        """Copy the learner's parameters into the engine in place (HF names, e.g. a `state_dict()`).

        Tied weights may be given once or twice; vLLM's loader maps HF names to its fused layers itself.
        """
        items = list(weights.items()) if isinstance(weights, Mapping) else list(weights)
        items = [(name, tensor.detach()) for name, tensor in items]
        model = self._inprocess_model()
        if model is not None:
            model.load_weights(items)
        else:  # workers in other processes: through the worker extension
            self.llm.collective_rpc("agentenv_load_weights", args=([(name, tensor.to("cpu")) for name, tensor in items],))
        self.llm.reset_prefix_cache()  # cached KV was computed with the old weights

    def sync_from(self, model: Any) -> None:
        """`load_weights(model.state_dict())`: the engine now samples from the learner's current policy."""
        self.load_weights(model.state_dict())

    def _inprocess_model(self) -> Any:
        """The engine's `nn.Module` when it lives in this process (TRL's colocate path), else None."""
        try:
            return self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        except AttributeError:
            return None

    def close(self) -> None:
        """Shut the engine down and remove the temporary model directory, if one was written."""
        llm = getattr(self, "llm", None)
        if llm is not None:
            shutdown = getattr(getattr(llm, "llm_engine", None), "shutdown", None)
            if callable(shutdown):
                shutdown()
            self.llm = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class WeightLoaderExtension:
    """Mixed into every vLLM worker (`worker_extension_cls`): lets `VLLMPolicy.load_weights` reach the model
    of a worker that lives in another process, via `llm.collective_rpc("agentenv_load_weights", ...)`."""

    def agentenv_load_weights(self, weights: list[tuple[str, Any]]) -> None:
        runner = self.model_runner
        model = runner.get_model() if hasattr(runner, "get_model") else runner.model
        model.load_weights(weights=weights)  # vLLM's loaders copy_ into the (GPU) parameters


def sampled_logprobs(token_ids: Sequence[int], logprobs: Any) -> list[float]:
    """The log-prob of each sampled token from a vLLM `CompletionOutput.logprobs` (requested with logprobs=0).

    vLLM gives one entry per position: a dict token id → `Logprob` (or a list-like `FlatLogprobs` in newer
    versions whose items index the same way); the sampled id is always among them.
    """
    if logprobs is None:
        raise RuntimeError("vLLM returned no log-probs: the request must set SamplingParams(logprobs=0)")
    out = []
    for position, token in enumerate(token_ids):
        entry = logprobs[position]
        value = entry[token]
        out.append(float(getattr(value, "logprob", value)))
    return out
