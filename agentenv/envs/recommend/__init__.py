"""Recommend-v0: recommender agents scored by RecRM-style multi-dimensional reward models.

One stage per module: `catalog` (items, search) → `users` (simulated users, behaviour model) →
`requests` (what a user asks) → `tools` (the agent's catalogue tools) → `answer` (the declared answer
format) → `scorers` (one per RecRM dimension) → `hybrid` (the gated weighted reward) → `env`.
Learned scorers: `models` (bi-encoder, click model), `data` (RecRM-style JSONL), `train` (fit, cache).
Optional real data: `movielens`. Scripted agents: `baselines`.
"""

from agentenv.envs.recommend.answer import Entry, Recommendation, parse_recommendation
from agentenv.envs.recommend.catalog import Catalog, Item, generate_catalog
from agentenv.envs.recommend.env import RecommendEnv
from agentenv.envs.recommend.hybrid import DEFAULT_WEIGHTS, HybridReward, HybridScore
from agentenv.envs.recommend.scorers import DimensionScore, EpisodeContext, Scorer, register_scorer

__all__ = ["RecommendEnv", "Catalog", "Item", "generate_catalog", "Entry", "Recommendation", "parse_recommendation",
           "HybridReward", "HybridScore", "DEFAULT_WEIGHTS", "DimensionScore", "EpisodeContext", "Scorer", "register_scorer"]
