"""What every policy provides: `generate(contexts) → generations`, one per chat context."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

__all__ = ["Generation", "Policy", "TokenPolicy"]

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


class TokenPolicy:
    """Shared by model policies that render chats with `self.chat` (a `ChatTokens`) and sample with
    `generate_ids(prompt ids)`: the token-in/token-out rollout asks them for prompts and deltas."""

    chat: Any

    def render_prompt(self, messages: Messages) -> list[int]:
        """Ids of a whole chat plus the assistant generation prompt."""
        return self.chat.prompt(messages)

    def render_delta(self, messages: Messages) -> list[int]:
        """Ids of new env messages continuing a chat whose last assistant turn ended with `<|im_end|>`."""
        return self.chat.delta(messages)

    def generate(self, contexts: Sequence[Messages]) -> list[Generation]:
        """One sampled assistant turn per chat context."""
        return self.generate_ids([self.chat.prompt(messages) for messages in contexts])

    def generate_ids(self, prompts: Sequence[Sequence[int]], max_new_tokens: Any = None) -> list[Generation]:
        raise NotImplementedError
