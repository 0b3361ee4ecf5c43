"""What every policy provides: `generate(contexts) → generations`, one per chat context."""

from __future__ import annotations

from typing import Any, Sequence

from agentenv.types import Generation, Messages, Policy

__all__ = ["Generation", "Policy", "TokenPolicy", "Messages"]


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
