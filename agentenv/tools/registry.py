"""Tools by name: built-ins (`"python"`, `"calculator"`) and whatever users register."""

from __future__ import annotations

from typing import Callable, Iterable, Union

from agentenv.tools.base import Tool

__all__ = ["register_tool", "make_tool", "resolve_tools", "registered_tools"]

ToolSpec = Union[Tool, str]

_FACTORIES: dict[str, Callable[[], Tool]] = {}


def register_tool(name: str, factory: Callable[[], Tool] | Tool) -> None:
    """Make `name` usable in `tools=[...]`; `factory` builds a fresh tool (or is the tool itself)."""
    _FACTORIES[name] = factory if callable(factory) and not isinstance(factory, Tool) else (lambda t=factory: t)


def registered_tools() -> list[str]:
    return sorted(_FACTORIES)


def make_tool(spec: ToolSpec) -> Tool:
    """A `Tool` from a Tool (returned as is) or a registered name."""
    if isinstance(spec, Tool):
        return spec
    if isinstance(spec, str) and spec in _FACTORIES:
        return _FACTORIES[spec]()
    raise ValueError(f"unknown tool {spec!r}: pass a @agentenv.tool function or one of {registered_tools()}")


def resolve_tools(specs: Iterable[ToolSpec]) -> dict[str, Tool]:
    """Name → Tool for an env's `tools=[...]` argument; duplicate names are a user error."""
    tools: dict[str, Tool] = {}
    for spec in specs:
        built = make_tool(spec)
        if built.name in tools:
            raise ValueError(f"two tools are named {built.name!r}; give one another name with @agentenv.tool(name=...)")
        tools[built.name] = built
    return tools


def _python_tool() -> Tool:
    from agentenv.tools.python_tool import PythonTool

    return PythonTool()


def _calculator() -> Tool:
    from agentenv.tools.calculator import calculator

    return calculator


register_tool("python", _python_tool)
register_tool("calculator", _calculator)
