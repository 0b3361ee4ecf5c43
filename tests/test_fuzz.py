"""Fuzz: 10,000 random and malformed actions never raise out of `step`, and the env stays usable."""

import json

import gymnasium as gym
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agentenv  # noqa: F401
from agentenv.tools import PythonTool

TAGS = ["<tool_call>", "</tool_call>", "<execute/>", "<answer>", "</answer>", "\\boxed{", "}", "```python\n", "```", "{", '"']
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@st.composite
def tool_call(draw):
    name = draw(st.sampled_from(["calculator", "python", "nope", "", "calculator\x00"]) | st.text(max_size=12))
    arguments = draw(
        st.sampled_from([{"expression": "1+2"}, {"expression": "10**10**10"}, {"code": "print(1)"}, {"code": "1/0"}, {"code": "import os"}])
        | json_values
    )
    payload = json.dumps({"name": name, "arguments": arguments}) if draw(st.booleans()) else draw(st.text(max_size=60))
    close = draw(st.sampled_from(["</tool_call>", "", "</tool_call></tool_call>", "<tool_call>"]))
    return f"<tool_call>{payload}{close}"


@st.composite
def tag_soup(draw):
    parts = draw(st.lists(st.sampled_from(TAGS) | st.text(max_size=10), max_size=30))
    return "".join(parts)


@st.composite
def huge(draw):
    unit = draw(st.sampled_from(["a", "<tool_call>", "é漢🙂", "```python\n", "{", "\\boxed{"]))
    return unit * (draw(st.integers(1, 1 << 20)) // len(unit))


actions = st.one_of(
    st.text(max_size=300),
    tool_call(),
    st.lists(tool_call(), min_size=2, max_size=20).map("".join),
    tag_soup(),
    st.builds(lambda a, b: a + "<execute/>" + b, st.text(max_size=40), st.text(max_size=40)),
    st.builds(lambda a: f"<answer>{a}</answer>", st.text(max_size=40)),
    st.builds(lambda c: f"```python\n{c}\n```", st.sampled_from(["print(1)", "1/0", "import os", "().__class__", "x" * 100])),
    huge(),
)


@pytest.fixture(scope="module")
def fuzz_env():
    env = gym.make("agentenv/ToolReasoning-v0", tools=["calculator", PythonTool(timeout_s=0.3)], execution="delayed", max_turns=5)
    env.reset(seed=0)
    yield env
    env.close()


def _step_never_raises(env, action):
    obs, reward, terminated, truncated, info = env.step(action)
    assert env.observation_space.contains(obs)
    assert isinstance(reward, float) and {"turn", "tools", "tool_calls", "tool_results", "error"} <= info.keys()
    if terminated or truncated:
        env.reset()


_SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)


@settings(max_examples=int(__import__("os").environ.get("FUZZ_EXAMPLES", 1_000)), **_SETTINGS)
@given(action=actions)
def test_step_never_raises(fuzz_env, action):
    _step_never_raises(fuzz_env, action)


@pytest.mark.slow
@settings(max_examples=10_000, **_SETTINGS)
@given(action=actions)
def test_step_never_raises_10k(fuzz_env, action):
    _step_never_raises(fuzz_env, action)
