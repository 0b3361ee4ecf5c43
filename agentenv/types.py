"""The records every stage passes on, defined once: chat messages, tool calls and results, generations,
the policy protocol, and the rollout's token records (`Sample`, `Episode`) that the learner trains on. Everything else in agentenv imports these from here; this module imports nothing
of agentenv's (the bottom of the one import direction, checked by tests/test_import_direction.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, TypedDict, runtime_checkable

__all__ = ["Message", "Messages", "ToolCall", "ToolResult", "StepInfo", "TurnRecord", "Generation", "Policy", "Sample", "Episode"]


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


class StepInfo(TypedDict, total=False):
    """The `info` of every `ChatEnv.step` (and `reset`): the keys an env always sets, then the optional ones."""

    turn: int
    tools: list[dict[str, Any]]  # OpenAI function-calling schemas of the env's tools
    tool_calls: list[dict[str, Any]]  # calls parsed from the last action (`ToolCall.as_dict`)
    tool_results: list[dict[str, Any]]  # results delivered this step (`ToolResult.as_dict`)
    error: str | None  # what was wrong with the last action, else None
    pending: int  # calls queued (delayed execution)
    delay_call_rate: float  # IH-GRPO's metric
    control_spans: list[tuple[int, int, str]]  # (start, end, kind) character ranges of control decisions
    reward_components: dict[str, float]  # on the final step; "success" among them
    compression: dict[str, Any]  # with a compressor: budget, tokens kept, q_com, …


class TurnRecord(StepInfo, total=False):
    """One entry of `Episode.turns`: the step's `info` (without the repeated `tools`) plus where the turn's
    generated tokens are: `sample` (index into `Episode.samples`), `start`/`end` (token range in it, the
    end-of-turn id included), `control_positions` (token ranges of the control spans); and `finish_reason`,
    `reward` (of that step). A rollout without token records has no positions."""

    sample: int
    start: int
    end: int
    control_positions: list[tuple[int, int, str]]
    finish_reason: str
    reward: float


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


@dataclass
class Sample:
    """One contiguous token sequence: `[T]` lists, aligned with `token_ids`.

    `loss_mask` is 1 on policy-generated tokens (the end-of-turn id included), 0 on prompt, env and tool
    tokens; `old_logprobs` are the sampling log-probs (0.0 where the mask is 0); `control_mask` is 1 on
    generated tokens that overlap a control span (`<tool_call>…</tool_call>`, a python block, `<execute/>`,
    `<answer>…</answer>`); `prompt_len` is the number of ids before the first generated one.

    `inputs` are the model inputs beside the ids: one dict per non-text item of the sequence (an audio
    chunk), in the order of the item's placeholder ids in `token_ids` (never in the loss), each holding the
    arrays the model's forward takes for it under their keyword names (for Qwen2-Audio `input_features`
    `[M, F]`, `feature_attention_mask` `[F]`). The sampler conditioned on exactly these; the learner
    forwards them again. Empty for text.
    """

    token_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    old_logprobs: list[float] = field(default_factory=list)
    control_mask: list[int] = field(default_factory=list)
    prompt_len: int = 0
    inputs: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.token_ids)

    def extend(self, ids: Sequence[int], generated: bool, logprobs: Sequence[float] | None = None, control: Sequence[int] | None = None) -> None:
        self.token_ids.extend(ids)
        self.loss_mask.extend([int(generated)] * len(ids))
        self.old_logprobs.extend(logprobs if logprobs is not None else [0.0] * len(ids))
        self.control_mask.extend(control if control is not None else [0] * len(ids))


@dataclass
class Episode:
    """One episode of one task: its samples, outcome and per-turn records.

    `reward` is the sum of the step rewards (for the shipped envs: the final reward); `turns[k]` is turn
    k's `TurnRecord`.
    """

    group_id: int
    seed: int
    samples: list[Sample] = field(default_factory=list)
    reward: float = 0.0
    reward_components: dict[str, float] = field(default_factory=dict)
    turns: list[TurnRecord] = field(default_factory=list)
    terminated: bool = False
    truncated: bool = False
    messages: Messages = field(default_factory=list)
    index: int = 0  # place in the rollout's (group, sample) order

    @property
    def success(self) -> bool:
        return bool(self.reward_components.get("success", 0.0))


@runtime_checkable
class Policy(Protocol):
    def generate(self, contexts: Sequence[Messages]) -> list[Generation]:
        """One generation per context, in order."""
        ...
