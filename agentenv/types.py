"""The records every stage passes on, defined once: chat messages, tool calls and results, generations,
and the policy protocol. Everything else in agentenv imports these from here; this module imports nothing
of agentenv's (the bottom of the one import direction, checked by tests/test_import_direction.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, TypedDict, runtime_checkable

__all__ = ["Message", "Messages", "ToolCall", "ToolResult", "Generation", "Policy"]


class Message(TypedDict, total=False):
    """One chat message (OpenAI convention). Extra keys are allowed (e.g. `"audio"` for a waveform)."""

    role: str  # "system" | "user" | "assistant" | "tool"
    content: str
    name: str  # the tool's name, on "tool" messages


Messages = list[Message]


@dataclass(frozen=True)
class ToolCall:
    """One call parsed from an action. `span` is the character range `[start, end)` in the action."""

    name: str
    arguments: dict[str, Any]
    span: tuple[int, int] = (0, 0)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": self.arguments}


@dataclass(frozen=True)
class ToolResult:
    """What a call produced: `content` is the text the agent sees; `error` is set when `ok` is False."""

    name: str
    ok: bool
    content: str
    error: str | None = None
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "content": self.content, "error": self.error}


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
