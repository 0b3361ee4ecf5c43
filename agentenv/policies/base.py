"""What every policy provides: `generate(contexts) → generations`, one per chat context."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

__all__ = ["Generation", "Policy"]

Messages = list[dict[str, Any]]


@dataclass
class Generation:
    """One assistant turn: its text and, for model policies, the sampled token ids and their log-probs.

    `prompt_ids` are the ids the model was conditioned on (the rendered context), so a rollout can store
    token-in/token-out records without re-tokenizing anything.
    """

    text: str
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    prompt_ids: list[int] = field(default_factory=list)
    finish_reason: str = "stop"


@runtime_checkable
class Policy(Protocol):
    def generate(self, contexts: Sequence[Messages]) -> list[Generation]:
        """One generation per context, in order."""
        ...
