"""Policies that act in agentenv environments: scripted (deterministic) and model-backed."""

from agentenv.policies.base import Generation, Policy
from agentenv.policies.scripted import ScriptedPolicy

__all__ = ["Generation", "Policy", "ScriptedPolicy"]
