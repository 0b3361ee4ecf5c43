"""VLLMPolicy glue, checked everywhere against a stand-in `vllm` module: token in/out, per-row limits, `n` samples,
stop strings, log-prob extraction, the weight-update routes, and the error a missing vLLM gives. The real engine
(CPU build or GPU) is tested in tests/test_vllm_real.py, with no stand-in."""

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
        self.params = list(params)
        outputs = []
        for request, p in zip(requests, params):
            samples = []
            for index in reversed(range(p["n"])):  # vLLM may return a request's samples in any order
                ids, logprobs, reason = [], [], "length"
                for k in range(p["max_tokens"]):
                    token = request["prompt_token_ids"][-1] + 1 + k + 100 * index
                    if self.stop_at is not None and k == self.stop_at:
                        token = p["stop_token_ids"][0]
                    ids.append(token)
                    logprobs.append({token: SimpleNamespace(logprob=-0.1 * (k + 1), rank=1), 7: SimpleNamespace(logprob=-9.0, rank=2)})
                    if token in p["stop_token_ids"] or (p.get("stop") and k == 1):  # a stop string completes at token 2
                        reason = "stop"
                        break
                samples.append(SimpleNamespace(index=index, token_ids=ids, logprobs=logprobs, finish_reason=reason))
            outputs.append(SimpleNamespace(outputs=samples))
        return outputs

    def collective_rpc(self, method, args=(), kwargs=None, **options):
        self.rpc.append((method, args, kwargs))
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


def test_glue_sampling_params_n_and_stop_strings(fake_vllm):
    from agentenv.policies.vllm import VLLMPolicy

    policy = VLLMPolicy("tiny", temperature=0.5, max_new_tokens=6)
    llm = _FakeLLM.instances[-1]
    out = policy.generate_ids([[5], [9]], n=3)
    (p, _) = llm.params
    assert p["n"] == 3 and p["logprobs"] == 0 and p["ignore_eos"] and p["stop_token_ids"] == [policy.chat.end_id]
    assert p["detokenize"] is False and "stop" not in p  # no stop strings: vLLM need not detokenize
    assert len(out) == 6 and [g.prompt_ids for g in out] == [[5]] * 3 + [[9]] * 3
    assert [g.token_ids[0] for g in out] == [6, 106, 206, 10, 110, 210]  # samples in index order, prompt by prompt
    policy.stop = ["</tool_call>"]
    (g,) = policy.generate_ids([[5]])
    (p,) = llm.params
    assert p["stop"] == ["</tool_call>"] and p["include_stop_str_in_output"] and "detokenize" not in p
    assert g.token_ids == [6, 7] and g.finish_reason == "stop_string" and g.text == policy.chat.decode([6, 7])
    assert policy.generate_ids([[5]], max_new_tokens=0, n=2) == [policy.generate_ids([[5]], max_new_tokens=0)[0]] * 2


def test_glue_seeds_are_per_request_and_reproducible(fake_vllm):
    from agentenv.policies.vllm import VLLMPolicy

    seeds = []
    for _ in range(2):
        policy = VLLMPolicy("tiny", seed=11)
        policy.generate_ids([[1], [2], [3]], max_new_tokens=1)
        seeds += [p["seed"] for p in _FakeLLM.instances[-1].params]
    assert seeds[:3] == seeds[3:] and len(set(seeds[:3])) == 3


def test_glue_load_weights_legacy_routes(fake_vllm):
    """A vLLM whose workers have no reload_weights: the worker extension across processes, model.load_weights in one."""
    from agentenv.policies.tiny import tiny_model
    from agentenv.policies.vllm import VLLMPolicy, WeightLoaderExtension

    policy = VLLMPolicy("tiny")
    llm = _FakeLLM.instances[-1]
    assert not policy.reloads and not policy.inprocess
    assert llm.kwargs["worker_extension_cls"] == "agentenv.policies.vllm.WeightLoaderExtension"
    model = tiny_model("tiny", seed=1)
    policy.sync_from(model)
    (method, (weights,), _), = llm.rpc
    assert method == "agentenv_load_weights" and llm.resets == 1
    assert [name for name, _ in weights] == list(model.state_dict())
    # the worker side: the extension hands the weights to the worker's model
    received = []
    worker = WeightLoaderExtension()
    worker.model_runner = SimpleNamespace(get_model=lambda: SimpleNamespace(load_weights=lambda weights: received.append(weights)))
    worker.agentenv_load_weights(weights)
    assert received == [weights]
    # an in-process V0 engine (TRL's old colocate path) is updated directly
    loaded = []
    llm.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=SimpleNamespace(
        model_runner=SimpleNamespace(model=SimpleNamespace(load_weights=lambda items: loaded.append(items))))))
    policy.load_weights({"w": torch.ones(2)})
    assert loaded and loaded[0][0][0] == "w" and len(llm.rpc) == 1 and llm.resets == 2


def test_glue_load_weights_reload_routes(fake_vllm, tmp_path):
    """Workers with reload_weights: tensors in process, a safetensors directory across processes."""
    from safetensors.torch import load_file

    from agentenv.policies.tiny import tiny_model
    from agentenv.policies.vllm import VLLMPolicy

    policy = VLLMPolicy("tiny")
    llm = _FakeLLM.instances[-1]
    policy.reloads = True
    model = tiny_model("tiny", seed=1)
    state = model.state_dict()
    policy.inprocess = True
    policy.sync_from(model)
    (method, args, kwargs), = llm.rpc
    assert method == "reload_weights" and args == () and llm.resets == 1
    assert [name for name, _ in kwargs["weights_iterator"]] == list(state)
    assert all(tensor is not None and torch.equal(tensor, state[name]) for name, tensor in kwargs["weights_iterator"])
    policy.inprocess = False  # the engine core in another process: the tensors go through a file
    policy.sync_from(model)
    method, args, kwargs = llm.rpc[-1]
    assert method == "reload_weights" and set(kwargs) == {"weights_path"} and llm.resets == 2
    saved = load_file(f"{kwargs['weights_path']}/model.safetensors")
    assert saved.keys() == state.keys() and all(torch.equal(saved[k], v) for k, v in state.items())  # tied ones too
    path = kwargs["weights_path"]
    policy.close()
    assert not __import__("os").path.exists(path)
