"""IH-GRPO's python turn semantics (`ChatEnv(python_semantics="session")`): a turn's code blocks run as one
program, in a namespace that lives for one episode inside that episode's sandbox worker and nowhere else;
and the paper's reward-hacking check on delayed-call counts (`repeated_code_blocks`)."""

import pytest

from agentenv.core import repeated_code_blocks
from agentenv.envs.tool_reasoning.env import ToolReasoningEnv
from agentenv.tools.base import ToolCall, tool
from agentenv.tools.parsing import parse_action
from agentenv.tools.python_tool import PythonTool


def block(code: str) -> str:
    return f"```python\n{code}\n```"


def contents(info):
    return [r["content"] for r in info["tool_results"]]


@pytest.fixture
def env():
    env = ToolReasoningEnv(tools=["python", "calculator"], python_semantics="session")
    env.reset(seed=0)
    yield env
    env.close()


def test_a_turns_blocks_run_as_one_program_and_names_persist_across_turns(env):
    _, _, _, _, info = env.step("Set up.\n" + block("x = 21") + "\nThen use it:\n" + block("y = x * 2\nprint(y)"))
    assert contents(info) == ["42"]  # one program, one result: the second block sees the first's x
    _, _, _, _, info = env.step(block("print(x + y)"))
    assert contents(info) == ["63"]


def test_a_failed_program_leaves_the_names_as_they_were(env):
    env.step(block("x = 1"))
    _, _, _, _, info = env.step(block("x = 2\nz = 3\nraise ValueError('boom')"))
    assert info["tool_results"][0]["error"] == "ValueError: boom"
    _, _, _, _, info = env.step(block("try:\n    z\nexcept NameError:\n    print('no z')\nprint(x)"))
    assert contents(info) == ["no z\n1"]


def test_classes_stay_writable_for_later_programs(env):
    env.step(block("class Box:\n    def __init__(self):\n        self.v = 1\nb = Box()"))
    _, _, _, _, info = env.step(block("b.v = 5\nBox.k = 2\nprint(b.v + Box.k)"))
    assert contents(info) == ["7"]
    _, _, _, _, info = env.step(block("import math\nmath.pi = 3"))  # the guards still hold in a session
    assert "read-only" in info["tool_results"][0]["error"]


def test_reset_wipes_the_namespace_with_the_worker():
    env = ToolReasoningEnv(tools=["python"], python_semantics="session")
    env.reset(seed=0)
    env.step(block("secret = 41"))
    first = env.tools["python"].worker_pids
    env.reset(seed=1)
    assert env.tools["python"].worker_pids == ()  # the worker that held the namespace is gone
    _, _, _, _, info = env.step(block("print(secret)"))
    assert "NameError" in info["tool_results"][0]["error"] and env.tools["python"].worker_pids != first
    env.close()


def test_no_episode_sees_another_episodes_namespace():
    a = ToolReasoningEnv(tools=["python"], python_semantics="session")
    b = ToolReasoningEnv(tools=["python"], python_semantics="session")
    a.reset(seed=0)
    b.reset(seed=0)
    a.step(block("shared = 'a'"))
    _, _, _, _, info = b.step(block("print(shared)"))
    assert "NameError" in info["tool_results"][0]["error"]
    _, _, _, _, info = a.step(block("print(shared)"))
    assert contents(info) == ["a"]
    assert set(a.tools["python"].worker_pids).isdisjoint(b.tools["python"].worker_pids)
    a.close()
    b.close()


def test_fresh_semantics_are_unchanged():
    env = ToolReasoningEnv(tools=["python"])
    env.reset(seed=0)
    _, _, _, _, info = env.step(block("x = 1") + "\nand\n" + block("print(x)"))
    assert len(info["tool_results"]) == 2 and "NameError" in info["tool_results"][1]["error"]
    env.close()


def test_delayed_blocks_run_together_at_execute_and_keep_the_session():
    env = ToolReasoningEnv(tools=["python", "calculator"], python_semantics="session", execution="delayed")
    env.reset(seed=0)
    env.step(block("a = 6"))
    env.step("more\n" + block("b = a * 7"))
    _, _, _, _, info = env.step(block("print(b)") + "\n<execute/>")
    assert contents(info) == ["42"] and info["pending"] == 0
    _, _, _, _, info = env.step(block("print(a + b)") + " <execute/>")
    assert contents(info) == ["48"]
    env.close()


def test_a_lost_worker_is_reported_and_its_names_are_gone():
    env = ToolReasoningEnv(tools=[PythonTool(timeout_s=0.5)], python_semantics="session")
    env.reset(seed=0)
    env.step(block("kept = 1"))
    _, _, _, _, info = env.step(block("while True:\n    pass"))
    assert "TimeoutError" in info["tool_results"][0]["error"]
    assert "variables from earlier calls are gone" in info["tool_results"][0]["content"]
    _, _, _, _, info = env.step(block("print(kept)"))
    assert "NameError" in info["tool_results"][0]["error"]
    env.close()


def test_a_session_needs_the_sandboxed_tool_without_worker_reuse():
    with pytest.raises(ValueError, match="keep_worker"):
        ToolReasoningEnv(tools=[PythonTool(keep_worker=True)], python_semantics="session")
    fake = tool(lambda code: code, name="python")  # a user's own "python", not the sandbox
    with pytest.raises(ValueError, match="PythonTool"):
        ToolReasoningEnv(tools=[fake], python_semantics="session")
    with pytest.raises(ValueError, match="python_semantics"):
        ToolReasoningEnv(python_semantics="persistent")
    assert ToolReasoningEnv(tools=["calculator"], python_semantics="session").tools.keys() == {"calculator"}
    assert "Variables persist" in PythonTool(session=True).description


# -- the paper's reward-hacking check (its SimpleTIR `check_reward_hacking`) -------------------------------


def hacking(text: str) -> bool:
    return repeated_code_blocks(text, [c for c in parse_action(text).calls if c.name == "python"])


@pytest.mark.parametrize("text,expected", [
    (block("x = 1"), False),  # one block: nothing is delayed
    ("a\n" + block("x = 1") + "\nb\n" + block("y = x + 1\nprint(y)"), False),  # two steps, new logic
    (block("x = 1") + "\n \n" + block("y = 2"), True),  # nothing but whitespace between two blocks
    ("a\n" + block("x = 1") + "\nb\n" + block("x = 1\nprint(x)"), True),  # the second repeats the first
    ("a\n" + block("x = 1") + "\nb\n" + block("x = 1\ny = 2"), True),  # the second holds all of the first
    ("a\n" + block("x = 1") + "\nb\n" + block("print(x)"), True),  # no logic after blocks that had some
    ("a\n" + block("x = 1") + "\nb\n" + block("x") + "\nc\n" + block("y = 2"), True),  # `x` is only shown
    ("a\n" + block("x = 1  # set") + "\nb\n" + block("y=2\nf(a=1)"), False),  # comments cut; f(a=1) is logic
])
def test_repeated_code_blocks_by_hand(text, expected):
    assert hacking(text) is expected


def test_an_empty_block_counts_as_hacking():
    calls = [ToolCall("python", {"code": "x = 1"}, (0, 5)), ToolCall("python", {"code": "  "}, (10, 15))]
    assert repeated_code_blocks("x = 1 then   ", calls)


def test_delayed_calls_that_repeat_themselves_count_no_delay():
    def rate(first: str, second: str) -> float:
        env = ToolReasoningEnv(tools=["python"], python_semantics="session", execution="delayed")
        env.reset(seed=0)
        _, _, _, _, info = env.step("step one\n" + block(first) + "\nstep two\n" + block(second) + "\n<execute/>")
        env.close()
        return info["delay_call_rate"]

    # one turn, two blocks run at once: one delayed call over (1 − 1) turns + 1 delayed call
    assert rate("x = 1", "print(x + 1)") == 0.0  # the second block has no logic: the check fires
    assert rate("x = 1", "y = x + 1\nprint(y)") == 1.0
