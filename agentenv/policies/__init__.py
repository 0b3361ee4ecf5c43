"""Policies that act in agentenv environments: model-backed (HF, vLLM); `ScriptedPolicy`, ToolReasoning's
deterministic agent, lives with its env (`agentenv.envs.tool_reasoning.scripted`) and is re-exported here.

`HFPolicy`, `VLLMPolicy`, `collect`, `demonstrations`, `Episode` and `Sample` are imported lazily (they need torch;
`VLLMPolicy` needs the `vllm` extra only when one is constructed).
"""

from agentenv.types import Generation, Policy

__all__ = ["Generation", "Policy", "ScriptedPolicy", "HFPolicy", "VLLMPolicy", "collect", "demonstrations", "Episode", "Sample"]

_LAZY = {"ScriptedPolicy": "agentenv.envs.tool_reasoning.scripted", "HFPolicy": "agentenv.policies.hf", "VLLMPolicy": "agentenv.policies.vllm", "collect": "agentenv.policies.rollout", "demonstrations": "agentenv.policies.rollout",
         "Episode": "agentenv.policies.rollout", "Sample": "agentenv.policies.rollout"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'agentenv.policies' has no attribute {name!r}")
