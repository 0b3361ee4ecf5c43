"""The action grammar, in one place: what an assistant turn can ask for.

Conventions (docs/design.md): `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (Hermes/Qwen, several
per turn), fenced ```` ```python ```` blocks as calls of the `python` tool, `<execute/>` to run queued calls,
`<answer>...</answer>` or `\\boxed{...}` for the final answer (`parse_action`), and `<zip level=N/>` (the turn
just before this one) or `<zip turn=K level=N/>` to choose the compression level of an earlier turn (`zip_tags`,
read by `compression/context.py`). Parsing is a
single pass of compiled regular expressions; it never raises, and reports what it could not read as
`ParseError`s.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from agentenv.tools.base import ToolCall

__all__ = ["ParseError", "ParsedAction", "parse_action", "extract_boxed", "final_answer", "zip_tags", "ZIP_TAG"]

MAX_CALLS_PER_TURN = 16

_TOOL_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|(?=<tool_call>)|\Z)", re.DOTALL)
_PYTHON_FENCE = re.compile(r"```(?:python|py)[ \t]*\n")
_EXECUTE = re.compile(r"<execute\s*/>")
ZIP_TAG = re.compile(r"<zip(?:\s+turn\s*=\s*\"?(\d{1,6})\"?)?\s+level\s*=\s*\"?(\d{1,2})\"?\s*/>")
_ZIP_LIKE = re.compile(r"<zip\b[^<>]{0,200}>?")  # anything that starts like a zip tag: the malformed ones are reported


@dataclass(frozen=True)
class ParseError:
    """Something in the action that looks like a call but cannot be used; `span` as in `ToolCall`."""

    message: str
    span: tuple[int, int] = (0, 0)


class ParsedAction:
    """Everything an environment needs from one assistant turn.

    `control_spans` lists `(start, end, kind)` character ranges of control decisions (`"tool_call"`,
    `"python"`, `"execute"`, `"answer"`) so that the rollout can map them to token positions.
    A plain slotted class, not a dataclass: it is built on every `step`, where microseconds count.
    """

    __slots__ = ("calls", "errors", "execute", "answer", "control_spans")

    def __init__(self) -> None:
        self.calls: list[ToolCall] = []
        self.errors: list[ParseError] = []
        self.execute = False
        self.answer: str | None = None
        self.control_spans: list[tuple[int, int, str]] = []


def extract_boxed(text: str) -> tuple[str, tuple[int, int]] | None:
    r"""Content of the last `\boxed{...}` with balanced braces, and its span; None if absent or unclosed."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth = 0
    begin = start + len("\\boxed{")
    for i in range(begin - 1, len(text)):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[begin:i], (start, i + 1)
    return None


def _decode_call(body: str, span: tuple[int, int]) -> ToolCall | ParseError:
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:
        return ParseError(f"malformed JSON in <tool_call>: {exc}", span)
    if not isinstance(payload, dict):
        return ParseError("a <tool_call> must hold a JSON object with 'name' and 'arguments'", span)
    name = payload.get("name")
    if not isinstance(name, str) or not name:
        return ParseError("a <tool_call> needs a string 'name'", span)
    arguments = payload.get("arguments", {})
    if isinstance(arguments, str):  # some models emit arguments as a JSON string
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except (ValueError, RecursionError) as exc:
            return ParseError(f"arguments of '{name}' are not valid JSON: {exc}", span)
    if not isinstance(arguments, dict):
        return ParseError(f"arguments of '{name}' must be a JSON object", span)
    return ToolCall(name, arguments, span)


def parse_action(text: str, *, python_blocks: bool = True) -> ParsedAction:
    """Parse one assistant turn. Calls are returned in the order they appear in `text`."""
    parsed = ParsedAction()
    if not isinstance(text, str):
        parsed.errors.append(ParseError(f"an action must be a string, got {type(text).__name__}"))
        return parsed
    found: list[tuple[int, ToolCall | ParseError]] = []
    too_many = False
    if "<tool_call>" in text:
        for match in _TOOL_CALL.finditer(text):
            if len(found) == MAX_CALLS_PER_TURN:
                too_many = True
                break
            span = match.span()
            if not match.group(0).endswith("</tool_call>"):
                found.append((span[0], ParseError("<tool_call> is not closed by </tool_call>", span)))
                continue
            found.append((span[0], _decode_call(match.group(1).strip(), span)))
    if python_blocks and "```" in text:
        tagged = [item.span for _, item in found]
        blocks = 0
        for start, end, code in _python_blocks(text):
            if any(a <= start < b for a, b in tagged):  # a fenced block inside a <tool_call>
                continue
            if blocks == MAX_CALLS_PER_TURN:
                too_many = True
                break
            blocks += 1
            found.append((start, ToolCall("python", {"code": code}, (start, end))))
    found.sort(key=lambda item: item[0])
    for _, item in found[:MAX_CALLS_PER_TURN]:
        if isinstance(item, ToolCall):
            kind = "python" if text.startswith("```", item.span[0]) else "tool_call"
            parsed.control_spans.append((item.span[0], item.span[1], kind))
            parsed.calls.append(item)
        else:
            parsed.errors.append(item)
    if too_many or len(found) > MAX_CALLS_PER_TURN:
        parsed.errors.append(ParseError(f"more than {MAX_CALLS_PER_TURN} tool calls in one turn; the rest were ignored"))
    if "<execute" in text:
        for match in _EXECUTE.finditer(text):
            parsed.execute = True
            parsed.control_spans.append((match.start(), match.end(), "execute"))
    answer = _find_answer(text)
    if answer is not None:
        parsed.answer, span = answer
        parsed.control_spans.append((span[0], span[1], "answer"))
    parsed.control_spans.sort()
    return parsed


def _python_blocks(text: str):
    """`(start, end, code)` of each ```` ```python ```` block, as a lazy regex would find them, in linear time.

    A regex `(.*?)```` rescans to the end of the text from every unclosed fence (quadratic on a 1 MB
    action); once one fence has no closing ```` ``` ```` no later fence can have one either, so stop there.
    """
    pos = 0
    while (i := text.find("```", pos)) >= 0:
        header = _PYTHON_FENCE.match(text, i)
        if header is None:
            pos = i + 1
            continue
        close = text.find("```", header.end())
        if close < 0:
            return
        yield i, close + 3, text[header.end() : close]
        pos = close + 3


def _find_answer(text: str) -> tuple[str, tuple[int, int]] | None:
    if "<answer>" in text:  # the last closed <answer>...</answer>, scanned like a lazy regex but linear
        last = None
        pos = 0
        while (start := text.find("<answer>", pos)) >= 0:
            close = text.find("</answer>", start + 8)
            if close < 0:
                break
            last = (text[start + 8 : close].strip(), (start, close + 9))
            pos = close + 9
        if last is not None:
            return last
    if "\\boxed{" in text:
        return extract_boxed(text)
    return None


def final_answer(messages: Sequence[dict]) -> str | None:
    """The answer in the last assistant message of a chat (`<answer>…</answer>` or `\\boxed{…}`), or None."""
    for message in reversed(messages):
        if message.get("role") == "assistant":
            return parse_action(message.get("content", "")).answer
    return None


def zip_tags(text: str) -> list[tuple[int | None, int | None, tuple[int, int], str]]:
    """The zip tags of `text`, in order: (turn K, level N, character span, tag text) each. K is None for
    `<zip level=N/>` (the turn before the one the text is in); K and N are both None for something that starts
    like a zip tag but is not one (`<zip level=high/>`, `<zip turn=3>`), so a caller can report it instead
    of silently acting on half of it."""
    if "<zip" not in text:
        return []
    out: list[tuple[int | None, int | None, tuple[int, int], str]] = []
    for m in _ZIP_LIKE.finditer(text):
        tag = ZIP_TAG.match(text, m.start())
        if tag is not None:
            out.append((int(tag.group(1)) if tag.group(1) else None, int(tag.group(2)), tag.span(), tag.group(0)))
        else:
            out.append((None, None, m.span(), m.group(0)))
    return out
