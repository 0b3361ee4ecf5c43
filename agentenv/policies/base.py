"""What every policy provides: `generate(contexts) → generations`, one per chat context."""

from __future__ import annotations

from typing import Any, Sequence

from agentenv.types import Generation, Messages, Policy

__all__ = ["Generation", "Policy", "TokenPolicy", "Messages", "stack_inputs"]


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
        """One sampled assistant turn per chat context (with the model inputs its chat renders beside the ids)."""
        prompts, inputs = zip(*(self.chat.prompt_and_inputs(messages) for messages in contexts)) if contexts else ((), ())
        return self.generate_ids(list(prompts), **({"inputs": list(inputs)} if any(inputs) else {}))

    def generate_ids(self, prompts: Sequence[Sequence[int]], max_new_tokens: Any = None, inputs: Any = None) -> list[Generation]:
        raise NotImplementedError


def stack_inputs(rows: Sequence[Sequence[dict[str, Any]]]) -> tuple[dict[str, Any], list[int]]:
    """The non-text items of B rows (`Sample.inputs` of each), in row order then in their order in the row, stacked
    per key — the order a multimodal forward fills placeholder ids in (row-major) — and the row of each item:
    `({key: tensor [A, ...]}, [A] rows)`. `({}, [])` when no row has any."""
    import torch

    items = [(row, item) for row, row_items in enumerate(rows) for item in row_items]
    if not items:
        return {}, []
    keys = set(items[0][1])
    if any(set(item) != keys for _, item in items):
        raise ValueError(f"every non-text item needs the same keys; got {sorted({tuple(sorted(item)) for _, item in items})}")
    stacked = {key: torch.stack([torch.as_tensor(item[key]) for _, item in items]) for key in sorted(keys)}
    return stacked, [row for row, _ in items]
