"""Parsing tool calls, <execute/>, answers and control spans out of an assistant turn."""

import re

from hypothesis import given, settings, strategies as st

from agentenv.tools.parsing import extract_boxed, parse_action


def test_several_tool_calls_in_order_with_spans():
    text = 'a <tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call> b <tool_call>{"name": "g", "arguments": {}}</tool_call>'
    parsed = parse_action(text)
    assert [c.name for c in parsed.calls] == ["f", "g"]
    assert parsed.calls[0].arguments == {"x": 1}
    for call in parsed.calls:
        assert text[call.span[0] : call.span[1]].startswith("<tool_call>")
        assert text[call.span[0] : call.span[1]].endswith("</tool_call>")
    assert [kind for *_, kind in parsed.control_spans] == ["tool_call", "tool_call"]


def test_python_block_is_a_python_call_and_execute_tag_is_a_control_span():
    text = "Let me compute.\n```python\nprint(6 * 7)\n```\n<execute/>"
    parsed = parse_action(text)
    assert parsed.calls[0].name == "python" and parsed.calls[0].arguments == {"code": "print(6 * 7)\n"}
    assert parsed.execute
    spans = {kind: text[s:e] for s, e, kind in parsed.control_spans}
    assert spans["execute"] == "<execute/>" and spans["python"].startswith("```python")


def test_arguments_given_as_json_string_are_accepted():
    parsed = parse_action('<tool_call>{"name": "f", "arguments": "{\\"x\\": 2}"}</tool_call>')
    assert parsed.calls[0].arguments == {"x": 2}


def test_malformed_calls_are_errors_not_exceptions():
    cases = {
        "<tool_call>{not json}</tool_call>": "malformed JSON",
        "<tool_call>[1, 2]</tool_call>": "JSON object",
        '<tool_call>{"arguments": {}}</tool_call>': "string 'name'",
        '<tool_call>{"name": "f", "arguments": 3}</tool_call>': "must be a JSON object",
        '<tool_call>{"name": "f"}': "not closed",
    }
    for text, fragment in cases.items():
        parsed = parse_action(text)
        assert not parsed.calls and fragment in parsed.errors[0].message, text


def test_nested_and_unclosed_tags():
    parsed = parse_action('<tool_call><tool_call>{"name": "f", "arguments": {}}</tool_call>')
    assert [c.name for c in parsed.calls] == ["f"] and len(parsed.errors) == 1


def test_answer_tag_and_boxed():
    assert parse_action("so <answer> 42 </answer>").answer == "42"
    assert parse_action(r"thus \boxed{\frac{1}{2}} done").answer == r"\frac{1}{2}"
    assert parse_action("<answer>1</answer> then <answer>2</answer>").answer == "2"
    assert extract_boxed(r"\boxed{unclosed") is None
    assert parse_action("no answer here").answer is None


def test_calls_per_turn_are_capped_and_huge_actions_parse_fast():
    import time

    for unit in ('<tool_call>{"name": "f", "arguments": {}}</tool_call>', "```python\n", "<tool_call>"):
        text = unit * (1_000_000 // len(unit))
        start = time.perf_counter()
        parsed = parse_action(text)
        assert time.perf_counter() - start < 10.0  # linear: ~0.1 s; the quadratic scan it replaced took hours
        assert len(parsed.calls) + len(parsed.errors) <= 17
        assert "more than 16 tool calls" in parsed.errors[-1].message


# The scanners behind python blocks and answers must agree with the lazy regexes they replace, which
# rescan to the end of the text from every unclosed opener (quadratic on a 2 MB action).
_REFERENCE_BLOCK = re.compile(r"```(?:python|py)[ \t]*\n(.*?)```", re.DOTALL)
_REFERENCE_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_ATOMS = ["```", "```python\n", "```py \n", "````python\n", "<answer>", "</answer>", "x", "\n", " 1", "<answer></answer>"]


@settings(max_examples=2000, deadline=None, derandomize=True, database=None)
@given(st.lists(st.sampled_from(_ATOMS), max_size=12).map("".join))
def test_block_and_answer_scanners_match_the_lazy_regexes(text):
    parsed = parse_action(text)
    blocks = [(m.start(), m.end(), m.group(1)) for m in _REFERENCE_BLOCK.finditer(text)][:16]
    assert [(c.span[0], c.span[1], c.arguments["code"]) for c in parsed.calls] == blocks
    answers = list(_REFERENCE_ANSWER.finditer(text))
    assert parsed.answer == (answers[-1].group(1).strip() if answers else None)


def test_unclosed_openers_repeated_over_two_megabytes_parse():
    for text in ["<answer>[" * 233_000, "```python\n" * 200_000, "<tool_call>" * 190_000]:
        parsed = parse_action(text)
        assert parsed.answer is None
