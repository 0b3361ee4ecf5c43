"""Tools: the `@tool` decorator, the registry, action parsing, and the built-in python and calculator tools."""

from agentenv.tools.base import Tool, ToolCall, ToolResult, tool
from agentenv.tools.parsing import ParsedAction, ParseError, parse_action
from agentenv.tools.registry import make_tool, register_tool, registered_tools, resolve_tools

__all__ = [
    "Tool",
    "ToolCall",
    "ToolResult",
    "tool",
    "ParsedAction",
    "ParseError",
    "parse_action",
    "make_tool",
    "register_tool",
    "registered_tools",
    "resolve_tools",
    "PythonTool",
]


def __getattr__(name: str):
    if name == "PythonTool":  # imported lazily: the sandbox starts a worker process on first use only
        from agentenv.tools.python_tool import PythonTool

        return PythonTool
    raise AttributeError(f"module 'agentenv.tools' has no attribute {name!r}")
