"""The @agentenv.tool decorator, schemas, argument checking, timeouts and error results."""

import json
import threading
from typing import Literal, Optional

import gymnasium as gym
import pytest

import agentenv
from agentenv.tools import Tool, make_tool, resolve_tools
from agentenv.tools.calculator import evaluate_expression


@agentenv.tool
def population(city: str) -> int:
    """Population of a city."""
    return {"Paris": 2_100_000}[city]


@agentenv.tool(name="convert", timeout_s=0.2)
def convert_units(value: float, unit: Literal["km", "mi"] = "km", precise: Optional[bool] = None) -> float:
    """Convert a distance.

    Args:
        value: the distance.
        unit: the unit of `value`.
        precise: unused flag.
    """
    return value * (1.609344 if unit == "mi" else 1.0)


RELEASE_HANG = threading.Event()  # set when this module ends: an abandoned call (off the main thread) then stops


@pytest.fixture(scope="module", autouse=True)
def release_hung_calls():
    yield
    RELEASE_HANG.set()  # otherwise the abandoned thread spins, holding the GIL, through every later test


@agentenv.tool(timeout_s=0.1)
def hang() -> str:
    """Never returns (within a test)."""
    while not RELEASE_HANG.is_set():
        pass
    return "released"


@agentenv.tool
def unserialisable() -> object:
    """Returns something JSON cannot hold."""
    return object()


def test_bare_decorator_builds_openai_schema_and_stays_callable():
    assert isinstance(population, Tool)
    assert population.schema == {
        "type": "function",
        "function": {
            "name": "population",
            "description": "Population of a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
    assert population("Paris") == 2_100_000


def test_decorator_with_arguments_reads_docstring_args_and_defaults():
    params = convert_units.schema["function"]["parameters"]
    assert convert_units.name == "convert" and convert_units.timeout_s == 0.2
    assert params["required"] == ["value"]
    assert params["properties"]["value"] == {"type": "number", "description": "the distance."}
    assert params["properties"]["unit"] == {"enum": ["km", "mi"], "description": "the unit of `value`.", "default": "km"}
    assert params["properties"]["precise"]["type"] == "boolean"
    assert convert_units.schema["function"]["description"] == "Convert a distance."


@pytest.mark.parametrize(
    "arguments, fragment",
    [
        ({}, "missing required argument(s) value"),
        ({"value": "ten"}, "must be number"),
        ({"value": 1, "speed": 3}, "unknown argument(s) speed"),
        ({"value": 1, "unit": "parsec"}, "must be ['km', 'mi']"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_bad_arguments_become_error_results(arguments, fragment):
    result = convert_units.invoke(arguments)
    assert not result.ok and fragment in result.error and result.content.startswith("Error:")


def test_tool_exception_timeout_and_unserialisable_result_are_errors():
    raised = population.invoke({"city": "Atlantis"})
    assert not raised.ok and "KeyError" in raised.error
    hung = hang.invoke({})
    assert not hung.ok and "timed out after 0.1 s" in hung.error
    odd = unserialisable.invoke({})
    assert not odd.ok and "unserialisable object" in odd.error
    assert population.invoke({"city": "Paris"}).content == "2100000"


def test_timeout_off_the_main_thread():
    results = []
    thread = threading.Thread(target=lambda: results.append(hang.invoke({})))
    thread.start()
    thread.join(5)
    assert results and not results[0].ok and "timed out" in results[0].error


def test_registry_resolves_names_and_rejects_duplicates():
    tools = resolve_tools([population, "calculator"])
    assert list(tools) == ["population", "calculator"]
    with pytest.raises(ValueError, match="unknown tool"):
        make_tool("teleport")
    with pytest.raises(ValueError, match="two tools are named"):
        resolve_tools([population, population])


@pytest.mark.parametrize(
    "expression, expected",
    [("(17 + 5) * 3 / 4", "33/2 (= 16.5)"), ("2^10", "1024"), ("comb(10, 3)", "120"), ("1/3 + 1/6", "1/2 (= 0.5)"),
     ("sqrt(16)", "4"), ("-(3 - 5)", "2"), ("gcd(12, 18)", "6")],
)
def test_calculator_is_exact(expression, expected):
    assert evaluate_expression(expression) == expected


@pytest.mark.parametrize("expression", ["10**10**10", "factorial(10**6)", "__import__('os')", "(1).__class__", "1/0", "x + 1", "9" * 3000])
def test_calculator_refuses_bombs_and_code(expression):
    tool = make_tool("calculator")
    result = tool.invoke({"expression": expression})
    assert not result.ok and result.content.startswith("Error:")


def test_user_tool_is_callable_inside_an_episode():
    env = gym.make("agentenv/ToolReasoning-v0", tools=[population, "calculator"])
    obs, info = env.reset(seed=3)
    assert "population" in [t["function"]["name"] for t in info["tools"]]
    assert '"name": "population"' in obs[0]["content"]  # the system prompt lists the tool
    call = json.dumps({"name": "population", "arguments": {"city": "Paris"}})
    obs, reward, terminated, truncated, info = env.step(f"<tool_call>{call}</tool_call>")
    assert info["tool_results"] == [{"name": "population", "ok": True, "content": "2100000", "error": None}]
    assert obs[-1] == {"role": "tool", "name": "population", "content": "2100000"}
    assert info["error"] is None and not terminated
