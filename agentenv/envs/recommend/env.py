"""Recommend-v0: a simulated user asks for items under constraints; the agent searches and recommends a list.

Each episode draws a user (new simulated one, or one of the loaded real users) and a request from their
tastes. The agent calls `search_items`, `get_item` and `user_history`, then answers with a JSON list
(`answer.py`). The answer is scored by the hybrid of RecRM-style reward dimensions (`hybrid.py`), and the
simulated user reacts to the list (click / buy / ignore) from the ground-truth behaviour model.

`info["reward_components"]` at the end holds every dimension by name, `"hybrid"` (= the reward),
`"success"` (format ok, all constraints met, all claims true) and the simulator's outcome:
`"sim_expected_ctr"` (mean true click probability over the k slots), `"sim_clicks"` and
`"sim_purchases"` (sampled counts). `env.unwrapped.last_score.details` says what each scorer found.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from agentenv.core import ChatEnv, Message, Score
from agentenv.envs.recommend.answer import FORMAT_HELP, parse_recommendation
from agentenv.envs.recommend.catalog import Catalog, generate_catalog
from agentenv.envs.recommend.hybrid import DEFAULT_SCORERS, HybridReward, HybridScore
from agentenv.envs.recommend.requests import PLURALS, draw_request
from agentenv.envs.recommend.scorers import EpisodeContext, Scorer
from agentenv.envs.recommend.tools import EpisodeTools
from agentenv.envs.recommend.users import User, click_probabilities, react, sample_user
from agentenv.tools.registry import ToolSpec

__all__ = ["RecommendEnv"]

INSTRUCTIONS = (
    "You are the recommendation assistant of an online store that sells {categories}. A customer will ask for items. "
    "Use the tools to search the catalogue and to read the customer's history, and respect every constraint they state: "
    "the category, a price limit, genres to avoid, a minimum rating, nothing they already have, and not the very item "
    "they name as an example. Recommend items that fit what they are in the mood for and that they are likely to buy."
)


class RecommendEnv(ChatEnv):
    """Conversational recommendation scored by RecRM-style reward models.

    Args:
        catalog: None for the synthetic catalogue; a `Catalog`; or the path of a MovieLens-100k directory
            (real movies and users, see `movielens.py`).
        users: users to draw episodes from (default: a new simulated user per episode, or the ML users).
        n_items, catalog_seed: size and seed of the synthetic catalogue.
        scorers: reward dimensions, by registered name or as scorer objects (see `scorers.py`).
        weights: name → weight of each non-gate scorer (default `hybrid.DEFAULT_WEIGHTS`).
        gate: the scorer that multiplies the weighted sum (default "format"; None for no gate).
        tools: extra tools offered besides the three catalogue tools.
        execution, max_turns, seed, render_mode: as in `ChatEnv`.
    """

    def __init__(
        self,
        catalog: Catalog | str | Path | None = None,
        users: Sequence[User] | None = None,
        n_items: int = 600,
        catalog_seed: int = 0,
        scorers: Sequence[str | Scorer] = DEFAULT_SCORERS,
        weights: Mapping[str, float] | None = None,
        gate: str | None = "format",
        tools: Iterable[ToolSpec] = (),
        execution: str = "immediate",
        max_turns: int = 8,
        seed: int | None = None,
        render_mode: str | None = None,
        **chat_env_kwargs: Any,
    ):
        if isinstance(catalog, (str, Path)):
            from agentenv.envs.recommend.movielens import load_movielens

            catalog, loaded = load_movielens(catalog, seed=catalog_seed)
            users = users if users is not None else loaded
        self.catalog = catalog if catalog is not None else generate_catalog(n_items, catalog_seed)
        self.users = list(users) if users is not None else None
        self.reward = HybridReward(scorers, weights, gate)
        self._episode_tools = EpisodeTools(self.catalog)
        super().__init__(tools=[*self._episode_tools.tools(), *tools], execution=execution, max_turns=max_turns,
                         seed=seed, render_mode=render_mode, **chat_env_kwargs)
        categories = ", ".join(PLURALS.get(c, c) for c in self.catalog.categories)
        self._system = f"{INSTRUCTIONS.format(categories=categories)}\n\n{FORMAT_HELP}\n\n{self.tools_prompt()}"
        self.context: EpisodeContext | None = None
        self.last_score: HybridScore | None = None

    def _new_episode(self) -> list[Message]:
        rng = self.np_random
        if self.users:
            user = self.users[int(rng.integers(len(self.users)))]
        else:
            user = sample_user(rng, self.catalog, f"U{int(rng.integers(10**6)):06d}")
        self.context = EpisodeContext(self.catalog, user, draw_request(rng, user, self.catalog))
        self._episode_tools.user = user
        self.last_score = None
        return [{"role": "system", "content": self._system}, {"role": "user", "content": self.context.request.text}]

    def _score_answer(self, answer: str, action: str) -> Score:
        context = self.context
        assert context is not None
        recommendation = parse_recommendation(answer)
        self.last_score = result = self.reward.score(context, recommendation)
        components = dict(result.components)
        rows = list(dict.fromkeys(context.catalog.index[e.id] for e in recommendation.entries if e.id in context.catalog.index))
        reactions = react(context.user, context.catalog, rows, self.np_random) if rows else []
        slots = max(context.request.k, len(recommendation.entries))
        components["sim_expected_ctr"] = float(click_probabilities(context.user, context.catalog, rows).sum()) / slots if rows else 0.0
        components["sim_clicks"] = float(sum(r != "ignore" for r in reactions))
        components["sim_purchases"] = float(sum(r == "buy" for r in reactions))
        success = recommendation.well_formed and all(components.get(n, 1.0) == 1.0 for n in ("if", "fc"))
        return Score(result.reward, success, components)
