"""Tools an agent can call: the `Tool` record, the `@tool` decorator and guarded invocation.

A tool is a Python callable plus an OpenAI function-calling schema derived from its type hints and
docstring. `Tool.invoke(arguments)` is the only way an environment runs a tool: it validates the
arguments against the schema, enforces the per-call timeout and turns every failure (bad arguments,
an exception, a hang, an unserialisable result) into a `ToolResult` with `ok=False`; it never raises
for anything an agent wrote.
"""

from __future__ import annotations

import inspect
import json
import re
import signal
import threading
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

from agentenv.types import ToolCall, ToolResult

__all__ = ["Tool", "ToolCall", "ToolResult", "ToolTimeout", "tool", "call_with_timeout"]

DEFAULT_TIMEOUT_S = 10.0
MAX_RESULT_CHARS = 16_384

_JSON_TYPES: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    tuple: "array",
    dict: "object",
}


class ToolTimeout(Exception):
    """Raised inside `call_with_timeout` when a call runs past its budget."""


def _alarm_handler(signum, frame):  # noqa: ARG001 - signal handler signature
    raise ToolTimeout


def _run_in_daemon_thread(fn: Callable[..., Any], kwargs: dict[str, Any], timeout_s: float) -> Any:
    """Run `fn` on a daemon thread (an abandoned call must not keep the interpreter from exiting)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn(**kwargs)
        except BaseException as exc:  # re-raised on the calling thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="agentenv-tool", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise ToolTimeout
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def call_with_timeout(fn: Callable[..., Any], kwargs: dict[str, Any], timeout_s: float | None) -> Any:
    """Run `fn(**kwargs)`, raising `ToolTimeout` after `timeout_s` seconds.

    On the main thread a SIGALRM interval timer interrupts pure-Python code at ~2 µs of overhead. Off the
    main thread (signals are main-thread only) the call runs on a worker thread and is abandoned on
    timeout: CPython cannot kill a thread, so a tool that must be killable belongs in a subprocess, as
    the python tool does.
    """
    if not timeout_s or timeout_s <= 0:
        return fn(**kwargs)
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        previous = signal.signal(signal.SIGALRM, _alarm_handler)
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            return fn(**kwargs)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    return _run_in_daemon_thread(fn, kwargs, timeout_s)


def _json_schema(annotation: Any) -> dict[str, Any]:
    """JSON schema of one parameter annotation (the subset function calling needs)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return {}
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _json_schema(options[0])
        return {"anyOf": [_json_schema(a) for a in options]}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (list, tuple, set, frozenset):
        schema: dict[str, Any] = {"type": "array"}
        if args and args[0] is not Ellipsis:
            schema["items"] = _json_schema(args[0])
        return schema
    if origin is dict:
        return {"type": "object"}
    if annotation in _JSON_TYPES:
        return {"type": _JSON_TYPES[annotation]}
    return {}


_PARAM_DOC = re.compile(r"^\s*(\w+)\s*(?:\([^)]*\))?\s*:\s*(.+)$")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Summary and per-argument descriptions from a Google-style docstring ("Args:" section)."""
    lines = inspect.cleandoc(doc).splitlines() if doc else []
    summary: list[str] = []
    params: dict[str, str] = {}
    in_args = False
    for line in lines:
        stripped = line.strip()
        if stripped.lower() in ("args:", "arguments:", "parameters:"):
            in_args = True
            continue
        if in_args:
            if stripped.endswith(":") and " " not in stripped:  # next section, e.g. "Returns:"
                in_args = False
                continue
            match = _PARAM_DOC.match(line)
            if match:
                params[match.group(1)] = match.group(2).strip()
        elif stripped or summary:
            if not stripped and summary:
                in_args = False
            summary.append(stripped)
    description = " ".join(s for s in summary if s).strip()
    return description, params


def _build_parameters(fn: Callable[..., Any], arg_docs: dict[str, str]) -> dict[str, Any]:
    hints = typing.get_type_hints(fn)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for pname, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        prop = _json_schema(hints.get(pname, param.annotation))
        if pname in arg_docs:
            prop["description"] = arg_docs[pname]
        if param.default is inspect.Parameter.empty:
            required.append(pname)
        else:
            prop["default"] = param.default
        properties[pname] = prop
    return {"type": "object", "properties": properties, "required": required}


def _type_matches(value: Any, schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    if "enum" in schema:
        return value in schema["enum"]
    if "anyOf" in schema:
        return any(_type_matches(value, s) for s in schema["anyOf"])
    if kind is None:
        return True
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    if kind == "array":
        return isinstance(value, list)
    if kind == "object":
        return isinstance(value, dict)
    return True


@dataclass
class Tool:
    """A callable the agent may invoke by name.

    Attributes:
        name: the name the agent writes in `{"name": ...}`.
        description: one paragraph shown to the agent.
        parameters: JSON schema (`{"type": "object", "properties": ..., "required": [...]}`).
        fn: the Python callable; it receives the validated arguments as keywords.
        timeout_s: wall-clock budget of one call; `None` or 0 disables it.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    fn: Callable[..., Any] = field(repr=False)
    timeout_s: float | None = DEFAULT_TIMEOUT_S

    @classmethod
    def from_function(
        cls,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout_s: float | None = DEFAULT_TIMEOUT_S,
    ) -> "Tool":
        summary, arg_docs = _parse_docstring(fn.__doc__ or "")
        return cls(
            name=name or fn.__name__,
            description=description if description is not None else summary,
            parameters=_build_parameters(fn, arg_docs),
            fn=fn,
            timeout_s=timeout_s,
        )

    @property
    def schema(self) -> dict[str, Any]:
        """The OpenAI function-calling schema of this tool."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the underlying function directly (a decorated function stays usable as a function)."""
        return self.fn(*args, **kwargs)

    def check_arguments(self, arguments: Any) -> str | None:
        """What is wrong with `arguments` for this tool, or None if they fit the schema."""
        if not isinstance(arguments, dict):
            return f"arguments must be a JSON object, got {type(arguments).__name__}"
        properties = self.parameters.get("properties", {})
        missing = [p for p in self.parameters.get("required", []) if p not in arguments]
        if missing:
            return f"missing required argument(s) {', '.join(missing)} for tool '{self.name}'"
        unknown = [k for k in arguments if k not in properties]
        if unknown:
            return f"unknown argument(s) {', '.join(map(str, unknown))} for tool '{self.name}'"
        for key, value in arguments.items():
            schema = properties[key]
            if not _type_matches(value, schema):
                expected = schema.get("type") or schema.get("enum") or "a different type"
                return f"argument '{key}' of tool '{self.name}' must be {expected}, got {type(value).__name__}"
        return None

    def fresh(self) -> "Tool":
        """The tool an env keeps for itself: stateless tools are shared as they are; a tool that owns a
        process or state (the python tool) returns a copy of its own, so no two envs share it."""
        return self

    def reset(self) -> None:
        """Called by the env at every `reset()`: forget whatever the last episode left (default: nothing)."""

    def invoke(self, arguments: Any, timeout_s: float | None = None) -> ToolResult:
        """Validate and run one call; every failure becomes `ToolResult(ok=False, error=...)`.

        `timeout_s` lowers this call's budget below the tool's own (an env's per-step budget uses it)."""
        problem = self.check_arguments(arguments)
        if problem is not None:
            return ToolResult(self.name, False, f"Error: {problem}", problem)
        budget = self.timeout_s if timeout_s is None else min(self.timeout_s or timeout_s, timeout_s)
        try:
            value = call_with_timeout(self.fn, arguments, budget)
        except ToolTimeout:
            error = f"tool '{self.name}' timed out after {budget:g} s"
            return ToolResult(self.name, False, f"Error: {error}", error)
        except RecursionError:
            error = f"tool '{self.name}' raised RecursionError: maximum recursion depth exceeded"
            return ToolResult(self.name, False, f"Error: {error}", error)
        except Exception as exc:  # a tool's own bug is the agent's observation, not a crash
            error = f"tool '{self.name}' raised {type(exc).__name__}: {exc}"
            return ToolResult(self.name, False, f"Error: {error}", error)
        return self._result(value)

    def _result(self, value: Any) -> ToolResult:
        if isinstance(value, ToolResult):
            return value
        if isinstance(value, str):
            text = value
        else:
            try:
                text = json.dumps(value, ensure_ascii=False)
            except (TypeError, ValueError, RecursionError) as exc:
                error = f"tool '{self.name}' returned an unserialisable {type(value).__name__}: {exc}"
                return ToolResult(self.name, False, f"Error: {error}", error)
        if len(text) > MAX_RESULT_CHARS:
            text = text[:MAX_RESULT_CHARS] + f"\n... [truncated {len(text) - MAX_RESULT_CHARS} characters]"
        return ToolResult(self.name, True, text)


def tool(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
) -> Any:
    """Turn a typed, documented function into a `Tool`. Works bare (`@tool`) or with arguments.

    Example:
        >>> @tool
        ... def population(city: str) -> int:
        ...     '''Population of a city.'''
        ...     return {"Paris": 2_100_000}[city]
        >>> population.schema["function"]["parameters"]["required"]
        ['city']
    """

    def wrap(f: Callable[..., Any]) -> Tool:
        return Tool.from_function(f, name=name, description=description, timeout_s=timeout_s)

    return wrap(fn) if fn is not None else wrap
