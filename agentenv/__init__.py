"""agentenv: Gymnasium multi-turn environments for LLM agents with tools, and one GRPO-family learner.

Importing the package registers every environment with gymnasium under the `agentenv/` namespace:

    import gymnasium as gym
    import agentenv

    env = gym.make("agentenv/ToolReasoning-v0", execution="delayed")
    obs, info = env.reset(seed=0)
"""

from agentenv.core import ChatEnv, ChatHistory, Score, Utterance
from agentenv.registration import list_envs, register_envs
from agentenv.tools import Tool, tool

__version__ = "0.1.0"
__all__ = ["ChatEnv", "ChatHistory", "Utterance", "Score", "Tool", "tool", "list_envs", "register_envs", "__version__"]

register_envs()
