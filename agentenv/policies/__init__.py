"""Policies that act in agentenv environments: the model-backed ones (`HFPolicy`, `VLLMPolicy`, and
`AudioLMPolicy`, which hears audio), the tiny random models they are tested with, and chat-token rendering. `ScriptedPolicy`, ToolReasoning's
deterministic agent, lives with its env (`agentenv.envs.tool_reasoning.scripted`) and is re-exported here.

`HFPolicy` and `VLLMPolicy` are imported lazily (they need torch; `VLLMPolicy` needs the `vllm` extra only
when one is constructed). The rollout loop that runs them is `agentenv.rollout`.
"""

from agentenv.types import Generation, Policy

__all__ = ["Generation", "Policy", "ScriptedPolicy", "HFPolicy", "VLLMPolicy", "AudioLMPolicy"]

_LAZY = {"ScriptedPolicy": "agentenv.envs.tool_reasoning.scripted", "HFPolicy": "agentenv.policies.hf",
         "VLLMPolicy": "agentenv.policies.vllm", "AudioLMPolicy": "agentenv.policies.audio_lm"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'agentenv.policies' has no attribute {name!r}")
