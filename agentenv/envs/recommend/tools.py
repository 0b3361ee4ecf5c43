"""The agent's tools in Recommend-v0, bound to one env's catalogue and the current episode's user.

`EpisodeTools` owns three `Tool`s built from its bound methods; the env sets `.user` at every reset, so
the tools read the episode they serve, never module-level state. Bad arguments raise `ValueError` with
a message that says what to pass; `Tool.invoke` turns that into the agent's error observation.
"""

from __future__ import annotations

from typing import Any, Literal

from agentenv.envs.recommend.catalog import Catalog
from agentenv.envs.recommend.users import User
from agentenv.tools.base import Tool

__all__ = ["EpisodeTools"]

MAX_LIMIT = 50
TOOL_TIMEOUT_S = 5.0


class EpisodeTools:
    """`search_items`, `get_item` and `user_history` over `catalog`, for the user in `.user`."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.user: User | None = None

    def tools(self) -> list[Tool]:
        return [Tool.from_function(f, timeout_s=TOOL_TIMEOUT_S) for f in (self.search_items, self.get_item, self.user_history)]

    def search_items(self, query: str = "", filters: dict = {}, sort: Literal["relevance", "popularity", "rating", "price"] = "relevance",  # noqa: B006 - read only
                     limit: int = 10, offset: int = 0) -> dict[str, Any]:
        """Search the catalogue by keywords and filters. Returns the number of matches and one page of items.

        Args:
            query: keywords matched against titles, genres and descriptions ("" matches everything).
            filters: any of {"category": str, "max_price": number, "min_price": number, "min_rating": number, "genres": [str] (any of), "exclude_genres": [str]}.
            sort: "relevance" (keyword score), "popularity", "rating" (high first) or "price" (cheap first).
            limit: page size, at most 50.
            offset: index of the first match to return, for paging.
        """
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")
        total, items = self.catalog.search(query, filters, sort=sort, limit=limit, offset=offset)
        return {"total": total, "offset": offset, "results": [item.summary() for item in items]}

    def get_item(self, id: str) -> dict[str, Any]:  # noqa: A002 - the agent-facing argument name
        """Everything the catalogue knows about one item.

        Args:
            id: the item id, e.g. "I0042".
        """
        item = self.catalog.by_id.get(id)
        if item is None:
            raise ValueError(f"no item with id {id[:40]!r}; ids come from search_items")
        return item.public()

    def user_history(self) -> dict[str, Any]:
        """The current user's profile and the items they clicked or bought, oldest first."""
        if self.user is None:
            raise ValueError("no episode is running")
        history = [{**self.catalog.by_id[h.item_id].summary(), "action": h.action} for h in self.user.history]
        return {**self.user.profile(), "history": history}
