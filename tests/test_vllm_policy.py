"""VLLMPolicy: the real-engine tests run where vLLM is importable and a CUDA GPU is present (skipped otherwise,
with the reason); the glue (token in/out, per-row limits, log-prob extraction, weight-update routing) is also
checked everywhere against a stand-in `vllm` module, and so is the error a missing vLLM gives."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType, SimpleNamespace

import pytest
import torch

from agentenv.errors import UserError
from agentenv.policies.base import Generation

HAS_VLLM = importlib.util.find_spec("vllm") is not None


# -- without vLLM ------------------------------------------------------------------------------------


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed: the missing-vLLM error cannot be shown")
def test_missing_vllm_gives_a_clear_error():
    from agentenv.policies.vllm import VLLMPolicy

    with pytest.raises(ImportError, match=r"pip install 'agentenv\[vllm\]'"):
        VLLMPolicy("tiny")


def test_lazy_export_and_cli_spec():
    import agentenv.policies as policies
    from agentenv.cli import _make_policy
    from agentenv.policies.vllm import VLLMPolicy

    assert policies.VLLMPolicy is VLLMPolicy and "VLLMPolicy" in policies.__all__
    if not HAS_VLLM:
        with pytest.raises(UserError, match="pip install"):
            _make_policy("vllm:tiny", "agentenv/ToolReasoning-v0")


# -- the glue, against a stand-in engine ---------------------------------------------------------------


class _FakeLLM:
    """Samples `prompt[-1] + 1, + 2, …` (the end id when `stop_at` is reached), log-prob −0.1·k; V1-shaped:
    no in-process model, weights go through collective_rpc."""

    instances: list["_FakeLLM"] = []

    def __init__(self, **kwargs):
        self.kwargs, self.rpc, self.resets, self.stop_at = kwargs, [], 0, None
        self.llm_engine = SimpleNamespace()  # no model_executor: workers live in other processes
        _FakeLLM.instances.append(self)

    def generate(self, requests, params, use_tqdm=True):
        outputs = []
        for request, p in zip(requests, params):
            ids, logprobs = [], []
            for k in range(p["max_tokens"]):
                token = request["prompt_token_ids"][-1] + 1 + k
                if self.stop_at is not None and k == self.stop_at:
                    token = p["stop_token_ids"][0]
                ids.append(token)
                logprobs.append({token: SimpleNamespace(logprob=-0.1 * (k + 1), rank=1), 7: SimpleNamespace(logprob=-9.0, rank=2)})
                if token in p["stop_token_ids"]:
                    break
            outputs.append(SimpleNamespace(outputs=[SimpleNamespace(token_ids=ids, logprobs=logprobs)]))
        return outputs

    def collective_rpc(self, method, args=(), **kwargs):
        self.rpc.append((method, args))
        return [None]

    def reset_prefix_cache(self):
        self.resets += 1


@pytest.fixture()
def fake_vllm(monkeypatch):
    module = ModuleType("vllm")
    module.LLM = _FakeLLM
    module.SamplingParams = lambda **kw: kw
    module.__version__ = "fake"
    monkeypatch.setitem(sys.modules, "vllm", module)
    _FakeLLM.instances.clear()
    return module


def test_glue_token_in_token_out_limits_and_logprobs(fake_vllm):
    from agentenv.policies.vllm import VLLMPolicy

    policy = VLLMPolicy("tiny", temperature=0.7, top_p=0.9, max_new_tokens=4, seed=3)
    llm = _FakeLLM.instances[-1]
    assert llm.kwargs["logprobs_mode"] == "processed_logprobs" and llm.kwargs["seed"] == 3
    assert llm.kwargs["worker_extension_cls"] == "agentenv.policies.vllm.WeightLoaderExtension"
    end = policy.chat.end_id
    llm.stop_at = 2
    prompts = [[5, 6, 10], [11], [20, 21]]
    out = policy.generate_ids(prompts, max_new_tokens=[5, 0, 2])
    assert all(isinstance(g, Generation) for g in out) and [g.prompt_ids for g in out] == prompts
    assert out[0].token_ids == [11, 12, end] and out[0].finish_reason == "stop"
    assert out[0].logprobs == pytest.approx([-0.1, -0.2, -0.3])
    assert out[0].text == policy.chat.decode([11, 12])  # the end id is kept in the ids, not in the text
    assert out[1].token_ids == [] and out[1].finish_reason == "length"  # no room: nothing is sent to vLLM
    assert out[2].token_ids == [22, 23] and out[2].finish_reason == "length"
    # a chat goes through the same path, rendered with the chat template
    chat = [{"role": "user", "content": "What is 2 + 2?"}]
    assert policy.generate([chat])[0].prompt_ids == policy.render_prompt(chat)


def test_glue_seeds_are_per_request_and_reproducible(fake_vllm):
    from agentenv.policies.vllm import VLLMPolicy

    seeds = []
    for _ in range(2):
        policy = VLLMPolicy("tiny", seed=11)
        original = policy._sampling_params
        policy._sampling_params = lambda n, original=original: seeds.append(original(n)["seed"]) or original(n)
        policy.generate_ids([[1], [2], [3]], max_new_tokens=1)
    assert seeds[:3] == seeds[3:] and len(set(seeds[:3])) == 3


def test_glue_load_weights_goes_through_the_worker_extension(fake_vllm):
    from agentenv.policies.tiny import tiny_model
    from agentenv.policies.vllm import VLLMPolicy, WeightLoaderExtension

    policy = VLLMPolicy("tiny")
    llm = _FakeLLM.instances[-1]
    model = tiny_model("tiny", seed=1)
    policy.sync_from(model)
    (method, (weights,)), = llm.rpc
    assert method == "agentenv_load_weights" and llm.resets == 1
    assert [name for name, _ in weights] == list(model.state_dict())
    # the worker side: the extension hands the weights to the worker's model
    received = []
    worker = WeightLoaderExtension()
    worker.model_runner = SimpleNamespace(get_model=lambda: SimpleNamespace(load_weights=lambda weights: received.append(weights)))
    worker.agentenv_load_weights(weights)
    assert received == [weights]
    # an in-process engine (TRL's colocate path) is updated directly
    loaded = []
    llm.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=SimpleNamespace(
        model_runner=SimpleNamespace(model=SimpleNamespace(load_weights=lambda items: loaded.append(items))))))
    policy.load_weights({"w": torch.ones(2)})
    assert loaded and loaded[0][0][0] == "w" and len(llm.rpc) == 1 and llm.resets == 2


# -- the real engine ---------------------------------------------------------------------------------


def _sharp_model(seed: int):
    """A tiny random model whose logits are spread out (final norm ×30), so log-prob checks are decisive."""
    from agentenv.policies.tiny import tiny_model

    model = tiny_model("tiny", seed=seed)
    with torch.no_grad():
        model.model.norm.weight.mul_(30.0)
    return model


def _hf_logprobs(model, prompt, ids, temperature, top_p):
    """log-probs of `ids` after `prompt` under the sampling distribution (temperature, then top-p), as HFPolicy draws."""
    with torch.no_grad():
        logits = model(torch.tensor([list(prompt) + list(ids)])).logits[0, len(prompt) - 1 : -1].float() / temperature
    if top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        sorted_logits = sorted_logits.masked_fill(probs.cumsum(-1) - probs > top_p, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    return logits.log_softmax(-1).gather(-1, torch.tensor(ids)[:, None]).squeeze(-1)


@pytest.fixture(scope="module")
def engine():
    pytest.importorskip("vllm", reason="vLLM is not installed (extra `vllm`; Linux + CUDA GPU)")
    if not torch.cuda.is_available():
        pytest.skip("vLLM is installed but no CUDA GPU is visible")
    from agentenv.policies.vllm import VLLMPolicy

    model = _sharp_model(0)
    policy = VLLMPolicy(model, temperature=1.0, max_new_tokens=12, seed=0, dtype="float32",
                        gpu_memory_utilization=0.2, max_model_len=1024, enforce_eager=True)
    yield policy, model
    policy.close()


def _prompts(policy):
    import gymnasium as gym

    import agentenv  # noqa: F401

    env = gym.make("agentenv/ToolReasoning-v0")
    prompts = [policy.render_prompt(env.reset(seed=seed)[0]) for seed in range(3)]
    env.close()
    return prompts


def test_vllm_generates_token_ids_with_the_sampling_logprobs(engine):
    policy, model = engine
    policy.temperature, policy.top_p = 1.0, 1.0
    prompts = _prompts(policy)
    out = policy.generate_ids(prompts, max_new_tokens=[12, 5, 1])
    for generation, prompt, limit in zip(out, prompts, [12, 5, 1]):
        assert generation.prompt_ids == prompt and 1 <= len(generation.token_ids) <= limit
        assert len(generation.logprobs) == len(generation.token_ids)
        stopped = generation.token_ids[-1] == policy.chat.end_id
        assert generation.finish_reason == ("stop" if stopped else "length")
        assert generation.text == policy.chat.decode(generation.token_ids[:-1] if stopped else generation.token_ids)
        reference = _hf_logprobs(model, prompt, generation.token_ids, 1.0, 1.0)
        assert torch.allclose(torch.tensor(generation.logprobs), reference, atol=2e-2), (generation.logprobs, reference)


def test_vllm_logprobs_follow_temperature_and_top_p(engine):
    policy, model = engine
    if policy.logprobs_mode != "processed_logprobs":
        pytest.skip(f"this vLLM returns {policy.logprobs_mode}")
    policy.temperature, policy.top_p = 0.7, 0.8
    try:
        prompts = _prompts(policy)
        for generation, prompt in zip(policy.generate_ids(prompts), prompts):
            reference = _hf_logprobs(model, prompt, generation.token_ids, 0.7, 0.8)
            assert torch.allclose(torch.tensor(generation.logprobs), reference, atol=2e-2)
    finally:
        policy.temperature, policy.top_p = 1.0, 1.0


def test_vllm_sampling_is_seeded(engine):
    import random

    policy, _ = engine
    prompts = _prompts(policy)
    policy._seeds = random.Random(5)
    first = [g.token_ids for g in policy.generate_ids(prompts)]
    policy._seeds = random.Random(5)
    assert [g.token_ids for g in policy.generate_ids(prompts)] == first


def test_vllm_load_weights_updates_the_engine_in_place(engine):
    policy, model = engine
    other = _sharp_model(1)
    prompts = _prompts(policy)
    try:
        policy.sync_from(other)
        for generation, prompt in zip(policy.generate_ids(prompts), prompts):
            new = _hf_logprobs(other, prompt, generation.token_ids, 1.0, 1.0)
            old = _hf_logprobs(model, prompt, generation.token_ids, 1.0, 1.0)
            assert torch.allclose(torch.tensor(generation.logprobs), new, atol=2e-2)
            assert not torch.allclose(torch.tensor(generation.logprobs), old, atol=2e-2)
    finally:
        policy.sync_from(model)
