"""Errors the library raises for a user's mistake (a bad config key, an unknown policy, a missing file):
`agentenv.cli` prints them as one line and exits 2; anything else is a bug and keeps its traceback."""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(ValueError):
    """A mistake in what the user asked for; the message says what to do instead."""
