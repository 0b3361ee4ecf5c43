"""The multi-turn chat environment base: a `gymnasium.Env` whose observation is the chat history and
whose action is the assistant's next message.

`ChatEnv` owns everything that is the same in every agentenv environment: the chat spaces, seeding, the
turn limit, parsing tool calls out of the action, running them now or queueing them (IH-GRPO delayed
execution), and the `info` keys of the public contract. A subclass says only what its task is
(`_new_episode`) and how an answer is scored (`_score_answer`); it may add per-turn behaviour
(`_env_turn`).

Nothing an agent writes makes `step` raise. What is wrong with the action itself (malformed calls, an
unknown tool, arguments that do not fit the tool's schema, a step's tool budget spent) comes back in the
observation and in `info["error"]`; what goes wrong while a tool runs (it raises, hangs, or the program
errors) comes back in the observation and in that call's `info["tool_results"][i]["error"]`.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Collection, Iterable, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from agentenv.tools.base import Tool, ToolCall, ToolResult
from agentenv.tools.parsing import ParsedAction, parse_action
from agentenv.tools.registry import ToolSpec, resolve_tools
from agentenv.types import Message, StepInfo

__all__ = ["qualified_env_id", "repeated_code_blocks", "ChatEnv", "ChatHistory", "Utterance", "Message", "Score", "ROLES"]

ROLES = ("system", "user", "assistant", "tool")
MAX_ACTION_CHARS = 1 << 22  # 4 MiB of text: anything longer is cut (and said so) before parsing

EXECUTION_MODES = ("immediate", "delayed")
PYTHON_SEMANTICS = ("fresh", "session")
DEFAULT_STEP_TIMEOUT_S = 30.0


def qualified_env_id(name: str) -> str:
    """`"ToolReasoning-v0"` → `"agentenv/ToolReasoning-v0"`; ids with a namespace are returned as they are."""
    return name if "/" in name else f"agentenv/{name}"


class Utterance(spaces.Text):
    """Action space: any `str` up to `max_length` characters (any Unicode; `sample()` draws printable ASCII)."""

    def __init__(self, max_length: int = MAX_ACTION_CHARS, seed: int | np.random.Generator | None = None):
        charset = "".join(chr(c) for c in range(32, 127)) + "\n"
        super().__init__(max_length=max_length, min_length=0, charset=charset, seed=seed)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and len(x) <= self.max_length

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        length = int(self.np_random.integers(0, min(self.max_length, 256) + 1))
        return super().sample(mask=(length, None)) if mask is None and probability is None else super().sample(mask, probability)

    def __repr__(self) -> str:
        return f"Utterance(max_length={self.max_length})"


class ChatHistory(gym.Space[list]):
    """Observation space: a list of chat messages `{"role": ..., "content": str, ...}` (extra keys allowed)."""

    def __init__(self, max_messages: int = 100_000, seed: int | np.random.Generator | None = None):
        super().__init__(shape=None, dtype=None, seed=seed)
        self.max_messages = max_messages

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def contains(self, x: Any) -> bool:
        if not isinstance(x, list) or len(x) > self.max_messages:
            return False
        return all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in x
        )

    def sample(self, mask: Any = None, probability: Any = None) -> list:
        n = int(self.np_random.integers(1, 5))
        roles = self.np_random.choice(ROLES, size=n)
        return [{"role": str(r), "content": f"message {i}"} for i, r in enumerate(roles)]

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, ChatHistory) and other.max_messages == self.max_messages

    def __repr__(self) -> str:
        return f"ChatHistory(max_messages={self.max_messages})"


@dataclass
class Score:
    """How an answer scored: `reward`, `success` (for success rates) and the named reward components."""

    reward: float
    success: bool
    components: dict[str, float] = field(default_factory=dict)


class ChatEnv(gym.Env[list, str]):
    """Base class of every agentenv environment.

    Args:
        tools: tools the agent may call: `@agentenv.tool` functions or registered names ("python", ...).
        execution: "immediate" runs calls when `step` returns; "delayed" queues them until the action holds
            `<execute/>` or an answer (IH-GRPO).
        python_semantics: "fresh" runs each python call in fresh globals; "session" is IH-GRPO's turn semantics
            (its SimpleTIR code): the python calls run together (those of a turn, or under delayed execution
            those of one `<execute/>`) are joined with newlines into one program, run in a namespace that lives
            for the episode (in the episode's own sandbox worker: `reset()` kills it, no other episode sees it);
            a program that fails leaves the names bound as they were. Under delayed execution a run whose
            queued code trips the paper's reward-hacking check (`repeated_code_blocks`) adds no delayed calls
            to `delay_call_rate`.
        max_turns: `step` returns `truncated=True` after this many assistant turns without an answer.
        seed: seed used by the first `reset()` that is given none.
        render_mode: None or "ansi" (the transcript as text).
        compressor, budget_tokens: context compression ("zip", "window", ... or a `Compressor`; see
            `agentenv.compression`): observations are the compressor's view of the history, at most
            `budget_tokens` tokens, described in `info["compression"]`.
        compressor_options: keyword arguments for a compressor given by name (zip: `{"mode": "agent"}` for
            levels chosen by the agent's `<zip level=N/>` tags, `{"mode": "uniform", "level": 3}`).
        keep_full_history: with a compressor, also keep every message of the episode (`full_history`) and let
            the compressor rewrite the whole history each time. Default False: the env keeps no copy and the
            compressor releases the turns it drops for good, so an episode's memory follows the budget, not
            its length. (Without a compressor the observation is the full history anyway.)
            Subclasses pass these (and `step_timeout_s`) through: their `__init__` takes `**chat_env_kwargs`
            and hands them to `ChatEnv.__init__`, so `gym.make(id, compressor="zip", budget_tokens=...)` works
            for every env.
        step_timeout_s: wall-time budget of all tool calls of one `step` together (queued calls run by
            `<execute/>` included); a call gets what is left of it, and calls past it are not run and
            come back as errors. None: no step budget (each call keeps its own timeout).

    Each env owns its tools (`Tool.fresh`): a tool with state, like the python sandbox, is never shared
    with another env, and `reset()` calls `tool.reset()` so no episode sees what the last one left.

    Subclasses implement `_new_episode()` and `_score_answer(answer)`.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}
    system_prompt = "You are a helpful assistant."

    def __init__(
        self,
        tools: Iterable[ToolSpec] = (),
        execution: str = "immediate",
        python_semantics: str = "fresh",
        max_turns: int = 8,
        seed: int | None = None,
        render_mode: str | None = None,
        compressor: Any = None,
        budget_tokens: int | None = None,
        keep_full_history: bool = False,
        step_timeout_s: float | None = DEFAULT_STEP_TIMEOUT_S,
        compressor_options: dict[str, Any] | None = None,
    ):
        if step_timeout_s is not None and not step_timeout_s > 0:
            raise ValueError("step_timeout_s must be > 0 or None")
        if execution not in EXECUTION_MODES:
            raise ValueError(f"execution must be one of {EXECUTION_MODES}, got {execution!r}")
        if python_semantics not in PYTHON_SEMANTICS:
            raise ValueError(f"python_semantics must be one of {PYTHON_SEMANTICS}, got {python_semantics!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}")
        if max_turns < 1:
            raise ValueError("max_turns must be at least 1")
        self.python_semantics = python_semantics
        session = python_semantics == "session"
        self.tools: dict[str, Tool] = {name: _own_tool(name, t, session) for name, t in resolve_tools(tools).items()}
        self.step_timeout_s = step_timeout_s
        self.context_window = _context_window(compressor, budget_tokens, compressor_options)
        if self.context_window is not None and type(self)._needed_lines is not ChatEnv._needed_lines:
            self.context_window.needed = self._needed_lines  # Q_com judged in hindsight
        self.keep_full_history = bool(keep_full_history)
        self.tool_schemas: list[dict[str, Any]] = [t.schema for t in self.tools.values()]
        self.execution = execution
        self.max_turns = max_turns
        self.render_mode = render_mode
        self.observation_space = ChatHistory()
        self.action_space = Utterance()
        self._initial_seed = seed
        self._messages: list[Message] | None = None
        self._pending: list[ToolCall] = []
        self._turn = 0
        self._delayed_calls = 0
        self._pending_repeats = False  # a queued turn tripped the reward-hacking check (session semantics)
        self._done = False
        self._python_blocks = "python" in self.tools
        self._has_env_turn = type(self)._env_turn is not ChatEnv._env_turn  # skip a no-op call per step
        run = " (then <execute/> to run queued calls)" if execution == "delayed" else ""
        self._usage_hint = (
            f'Call a tool with <tool_call>{{"name": ..., "arguments": {{...}}}}</tool_call>{run}, '
            "or answer with <answer>...</answer>."
        )

    # -- what a subclass provides ------------------------------------------------------------------

    def _new_episode(self) -> list[Message]:
        """Draw a task with `self.np_random` and return the opening messages (system first)."""
        raise NotImplementedError

    def _score_answer(self, answer: str, action: str) -> Score:
        """Score a final answer; `action` is the whole assistant turn that holds it."""
        raise NotImplementedError

    def _pick_task(self, dataset: Sequence[Any]) -> Any:
        """Item `options["task_index"]` of `dataset` when `reset` was given one, else one drawn with `self.np_random`."""
        index = self._options.get("task_index")
        if index is None:
            index = int(self.np_random.integers(len(dataset)))
        return dataset[int(index) % len(dataset)]

    def _env_turn(self, parsed: ParsedAction) -> list[Message]:
        """Messages the environment adds after a turn without an answer (default: none)."""
        return []

    def _needed_lines(self) -> Collection[str]:
        """The exact lines of the history so far that later turns of the episode will need (an env that knows,
        like Ledger's probes, overrides this): with a compressor, Q_com's retention is judged against them.
        Never shown to the agent. The base class does not know (not called)."""
        raise NotImplementedError

    # -- Gymnasium API -----------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[list, dict]:
        """Start an episode. The same `seed` gives the same task and the same observation, byte for byte."""
        if seed is None and self._initial_seed is not None:
            seed, self._initial_seed = self._initial_seed, None
        super().reset(seed=seed)
        self._options = options or {}
        self._pending = []
        self._turn = 0
        self._delayed_calls = 0
        self._pending_repeats = False
        self._done = False
        for t in self.tools.values():
            t.reset()
        self._messages = self._new_episode()
        if self.context_window is not None:
            self.context_window.reset(self.keep_full_history)
        info = self._info()
        return self._observe(info), info

    def step(self, action: str) -> tuple[list, float, bool, bool, dict]:
        """Take one assistant turn. Returns `(messages, reward, terminated, truncated, info)`."""
        if self._messages is None:
            raise gym.error.ResetNeeded("call env.reset() before env.step()")
        if self._done:
            note = {"role": "user", "content": "Error: the episode is over; call reset() to start a new one."}
            info = self._info(error=note["content"][7:])
            return self._observe(info) + [note], 0.0, True, False, info
        self._turn += 1
        if type(action) is str and len(action) <= MAX_ACTION_CHARS:
            errors: list[str] = []
        else:
            action, errors = self._coerce_action(action)
        messages = self._messages
        messages.append({"role": "assistant", "content": action})
        parsed = parse_action(action, python_blocks=self._python_blocks)
        if parsed.errors:
            errors.extend(e.message for e in parsed.errors)

        results: list[ToolResult] = []
        if parsed.calls or parsed.execute or parsed.answer is not None:
            results = self._handle_calls(parsed, errors, messages, action)

        reward, terminated, components = 0.0, False, {}
        if parsed.answer is not None:
            score = self._score_answer(parsed.answer, action)
            reward, terminated, components = float(score.reward), True, dict(score.components)
            components["success"] = float(score.success)
        else:
            if self._has_env_turn:
                messages.extend(self._env_turn(parsed))
            if not parsed.calls and not parsed.execute and not parsed.errors:
                errors.append("no tool call, <execute/> or answer found in the action")
        error = "; ".join(errors) if errors else None
        if error and not terminated:
            messages.append({"role": "user", "content": f"Error: {error}. {self._usage_hint}"})
        truncated = not terminated and self._turn >= self.max_turns
        self._done = terminated or truncated
        info = self._info(parsed, results, error)
        if terminated:
            info["reward_components"] = components
        return self._observe(info), reward, terminated, truncated, info

    @property
    def full_history(self) -> list[Message]:
        """The full history of the current episode (what observations show, before any compression).

        With a compressor it is kept only when the env was made with `keep_full_history=True`."""
        if self.context_window is not None and not self.keep_full_history:
            raise RuntimeError("this env streams its history through the compressor and keeps no full copy; "
                               "make it with keep_full_history=True to keep one")
        return list(self._messages or [])

    def _observe(self, info: dict[str, Any]) -> list[Message]:
        """The observation: the history, or the compressor's view of it (which writes `info["compression"]`)."""
        if self.context_window is None:
            return list(self._messages)
        obs = self.context_window.observe(self._messages, info)
        if not self.keep_full_history:
            self._messages.clear()  # the window took them in; step() appends the next ones to the same list
        return obs

    def render(self) -> str | None:
        if self.render_mode != "ansi" or self._messages is None:
            return None
        shown = self._messages if self.context_window is None or self.keep_full_history else self.context_window.view
        return "\n".join(f"[{m['role']}] {m['content']}" for m in shown)

    def close(self) -> None:
        for t in self.tools.values():
            closer = getattr(t, "close", None)
            if callable(closer):
                closer()

    # -- tool calls --------------------------------------------------------------------------------

    def _handle_calls(self, parsed: ParsedAction, errors: list[str], messages: list[Message], action: str = "") -> list[ToolResult]:
        """Run or queue this turn's calls, appending acknowledgements and results to `messages`.

        Returns the results delivered this step.
        """
        deadline = None if self.step_timeout_s is None else time.monotonic() + self.step_timeout_s
        session = self.python_semantics == "session" and "python" in self.tools
        if self.execution == "immediate":
            calls = self._session_programs(parsed.calls) if session else parsed.calls
            results = [self._run(call, deadline, errors) for call in calls]
        else:
            if session and parsed.calls:
                self._pending_repeats |= repeated_code_blocks(action, [c for c in parsed.calls if c.name == "python"])
            for call in parsed.calls:
                if call.name not in self.tools:  # rejected at once: queueing a call that can never run helps no one
                    errors.append(self._unknown_tool(call.name))
                    continue
                self._pending.append(call)
                messages.append({"role": "tool", "name": call.name,
                                 "content": f"queued #{len(self._pending)} ({call.name}); run queued calls with <execute/>"})
            results = []
            if (parsed.execute or parsed.answer is not None) and self._pending:
                batch, self._pending = self._pending, []
                if not self._pending_repeats:  # IH-GRPO counts no delay for code that repeats itself
                    self._delayed_calls += len(batch) - 1
                self._pending_repeats = False
                if session:
                    batch = self._session_programs(batch)
                results = [self._run(call, deadline, errors) for call in batch]
            elif parsed.execute and not parsed.calls:
                errors.append("<execute/> with no queued tool calls")
        messages.extend({"role": "tool", "name": r.name, "content": r.content} for r in results)
        return results

    def _session_programs(self, calls: Sequence[ToolCall]) -> list[ToolCall]:
        """The calls to run under session semantics: every well-formed python call joined with newlines (empty
        blocks dropped, as the paper's code does) into one program, in the first one's place; other calls
        as they are."""
        python = self.tools["python"]
        code_calls = [i for i, c in enumerate(calls) if c.name == "python" and python.check_arguments(c.arguments) is None]
        if len(code_calls) < 2:
            return list(calls)
        program = "\n".join(calls[i].arguments["code"] for i in code_calls if calls[i].arguments["code"])
        first = calls[code_calls[0]]
        joined = ToolCall("python", {"code": program}, first.span)
        return [joined if i == code_calls[0] else c for i, c in enumerate(calls) if i == code_calls[0] or i not in code_calls]

    def _run(self, call: ToolCall, deadline: float | None, errors: list[str]) -> ToolResult:
        """Run one call. What is wrong with the call as written (an unknown tool, arguments that do not fit
        the schema, a step budget already spent) goes to `errors` (`info["error"]`) as well as to its result;
        what goes wrong while the tool runs (an exception, a timeout, a program's error) only to its result."""
        tool = self.tools.get(call.name)
        problem = self._unknown_tool(call.name) if tool is None else tool.check_arguments(call.arguments)
        if problem is not None:
            errors.append(problem)
            return ToolResult(call.name, False, f"Error: {problem}", problem)
        if deadline is None:
            return tool.invoke(call.arguments)
        left = deadline - time.monotonic()
        if left <= 0:
            error = f"not run: this step's tool budget of {self.step_timeout_s:g} s is used up"
            if error not in errors:
                errors.append(error)
            return ToolResult(call.name, False, f"Error: {error}", error)
        return tool.invoke(call.arguments, timeout_s=left)

    def _unknown_tool(self, name: str) -> str:
        return f"unknown tool {name[:80]!r}; available tools: {', '.join(self.tools) or 'none'}"

    @staticmethod
    def _coerce_action(action: Any) -> tuple[str, list[str]]:
        if not isinstance(action, str):
            return repr(action)[:1000], [f"the action must be a string, got {type(action).__name__}"]
        if len(action) > MAX_ACTION_CHARS:
            return action[:MAX_ACTION_CHARS], [f"the action was longer than {MAX_ACTION_CHARS} characters and was cut"]
        return action, []

    def tools_prompt(self) -> str:
        """The system-prompt paragraph that lists the tools and the calling conventions."""
        lines = ["You can call these tools:", *(json.dumps(s, ensure_ascii=False) for s in self.tool_schemas)]
        lines.append('To call one, write <tool_call>{"name": "<tool>", "arguments": {...}}</tool_call>.')
        if "python" in self.tools:
            lines.append("A fenced ```python block is a call of the python tool; print what you need to see.")
        if self.execution == "delayed":
            lines.append("Calls are queued, not run: write <execute/> to run every queued call in order.")
        lines.append("Give the final answer as <answer>...</answer>.")
        return "\n".join(lines)

    # -- info --------------------------------------------------------------------------------------

    @property
    def delay_call_rate(self) -> float:
        """IH-GRPO's metric: delayed calls / (turns − 1 + delayed calls); 0 before any delay."""
        denominator = max(self._turn - 1, 0) + self._delayed_calls
        return self._delayed_calls / denominator if denominator else 0.0

    def _info(self, parsed: ParsedAction | None = None, results: Sequence[ToolResult] = (), error: str | None = None) -> StepInfo:
        if parsed is None:
            calls, spans = [], []
        else:
            calls = [c.as_dict() for c in parsed.calls] if parsed.calls else []
            spans = parsed.control_spans
        return {
            "turn": self._turn,
            "tools": self.tool_schemas,
            "tool_calls": calls,
            "tool_results": [r.as_dict() for r in results] if results else [],
            "error": error,
            "pending": len(self._pending),
            "delay_call_rate": self.delay_call_rate if self._delayed_calls else 0.0,
            "control_spans": spans,
        }


def _own_tool(name: str, tool: Tool, python_session: bool) -> Tool:
    """The env's own instance of `tool` (`Tool.fresh`); the python tool runs a session when asked to."""
    if name != "python" or not python_session:
        return tool.fresh()
    from agentenv.tools.python_tool import PythonTool

    if not isinstance(tool, PythonTool):
        raise ValueError("python_semantics='session' needs agentenv's sandboxed python tool (PythonTool), "
                         f"got {type(tool).__name__}")
    return tool.fresh(session=True)


_PRINT_LINE = ("print(", "display(", "pprint(")
_ASSIGNMENT_LOOKALIKES = ("==", "!=", "<=", ">=", "+=", "-=", "*=", "/=", "//=", "%=", "**=", "&=", "|=", "^=", ">>=", "<<=", "@=")


def _shown_by_auto_print(line: str) -> bool:
    """Whether the paper's sandbox would wrap this last line in print(): a bare expression, not an assignment."""
    import ast

    line = line.strip()
    if "=" in line and not any(op in line for op in _ASSIGNMENT_LOOKALIKES):
        return False
    try:
        ast.parse(line, mode="eval")
    except SyntaxError:
        return False
    return True


def _code_logic(code: str) -> set[str]:
    """A block's logic lines: comments cut, all whitespace removed, print lines and the auto-printed last
    expression left out (they show values; they compute nothing new)."""
    lines = [line for line in code.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if lines and _shown_by_auto_print(lines[-1]):
        lines = lines[:-1]
    logic = set()
    for line in lines:
        clean = "".join(re.sub(r"#.*", "", line).split())
        if clean and not clean.startswith(_PRINT_LINE):
            logic.add(clean)
    return logic


def repeated_code_blocks(action: str, calls: Sequence[ToolCall]) -> bool:
    """IH-GRPO's reward-hacking check on one turn's python calls (its SimpleTIR `check_reward_hacking`): a
    turn that splits code into several blocks only to look like delayed calls. True when, with two or
    more blocks: two blocks have nothing but whitespace between them; a block is empty; a block's logic
    lines (`_code_logic`) are all in earlier blocks; or they hold every logic line of the earlier blocks;
    or a block with no logic line follows blocks that had some."""
    if len(calls) < 2:
        return False
    for before, after in zip(calls, calls[1:]):
        if not action[before.span[1] : after.span[0]].strip():
            return True
    seen: set[str] = set()
    for call in calls:
        code = call.arguments.get("code")
        if not isinstance(code, str) or not code.strip():
            return True
        logic = _code_logic(code)
        if not logic:
            if seen:
                return True
            continue
        if logic <= seen or (seen and seen <= logic):
            return True
        seen |= logic
    return False


def _context_window(compressor: Any, budget_tokens: int | None, options: dict[str, Any] | None = None) -> Any:
    if compressor is None and budget_tokens is None and not options:
        return None
    from agentenv.compression.context import make_window  # imported on use: most envs run uncompressed

    return make_window(compressor, budget_tokens, options)
