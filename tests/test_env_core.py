"""The Gymnasium contract of ToolReasoning-v0 and the ChatEnv base: spaces, seeding, turns, info, execution modes."""

import json

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import agentenv

INFO_KEYS = {"turn", "tools", "tool_calls", "tool_results", "error", "pending", "delay_call_rate"}


def calc(expression: str) -> str:
    return f'<tool_call>{json.dumps({"name": "calculator", "arguments": {"expression": expression}})}</tool_call>'


@pytest.fixture(params=["immediate", "delayed"])
def env(request):
    env = gym.make("agentenv/ToolReasoning-v0", tools=["calculator"], execution=request.param)
    yield env
    env.close()


def test_registration_and_list_envs():
    assert "agentenv/ToolReasoning-v0" in agentenv.list_envs()
    agentenv.register_envs()  # idempotent
    assert agentenv.list_envs().count("agentenv/ToolReasoning-v0") == 1


@pytest.mark.parametrize("execution", ["immediate", "delayed"])
def test_check_env_passes(execution):
    check_env(gym.make("agentenv/ToolReasoning-v0", execution=execution).unwrapped)


def test_reset_is_reproducible_byte_for_byte(env):
    first = json.dumps(env.reset(seed=123)[0])
    env.reset(seed=7)
    assert json.dumps(env.reset(seed=123)[0]) == first
    other = gym.make("agentenv/ToolReasoning-v0", tools=["calculator"], execution=env.unwrapped.execution)
    assert json.dumps(other.reset(seed=123)[0]) == first
    assert json.dumps(env.reset(seed=124)[0]) != first


def test_seed_kwarg_seeds_the_first_reset():
    a = gym.make("agentenv/ToolReasoning-v0", seed=5).reset()[0]
    b = gym.make("agentenv/ToolReasoning-v0").reset(seed=5)[0]
    assert a == b


def test_observation_and_info_contract(env):
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert [m["role"] for m in obs] == ["system", "user"]
    assert INFO_KEYS <= info.keys() and info["turn"] == 0 and info["error"] is None
    obs, reward, terminated, truncated, info = env.step("thinking out loud")
    assert env.observation_space.contains(obs) and env.action_space.contains("thinking out loud")
    assert INFO_KEYS <= info.keys() and info["turn"] == 1
    assert "no tool call" in info["error"] and obs[-1]["content"].startswith("Error:")
    assert (reward, terminated, truncated) == (0.0, False, False)


def test_turn_limit_truncates():
    env = gym.make("agentenv/ToolReasoning-v0", tools=["calculator"], max_turns=3)
    env.reset(seed=0)
    flags = [env.step("hmm")[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]
    obs, reward, terminated, truncated, info = env.step("after the end")
    assert terminated and "episode is over" in info["error"]


def test_answer_terminates_with_reward_components():
    env = gym.make("agentenv/ToolReasoning-v0", tasks=[{"question": "What is 6 times 7?", "answer": "42"}], tools=["calculator"])
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step("<answer>42</answer>")
    assert terminated and reward == pytest.approx(1.0)
    assert info["reward_components"] == {"correct": 1.0, "format": 1.0, "success": 1.0}
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step(r"The answer is \boxed{41}")
    assert terminated and reward == pytest.approx(0.1) and info["reward_components"]["correct"] == 0.0


def test_immediate_mode_runs_every_call_now():
    env = gym.make("agentenv/ToolReasoning-v0", tools=["calculator"], execution="immediate")
    env.reset(seed=0)
    obs, _, _, _, info = env.step(calc("2+3") + calc("7*6"))
    assert [r["content"] for r in info["tool_results"]] == ["5", "42"]
    assert [m["content"] for m in obs[-2:]] == ["5", "42"] and info["pending"] == 0


def test_delayed_mode_queues_until_execute_in_order():
    env = gym.make("agentenv/ToolReasoning-v0", tools=["calculator"], execution="delayed")
    env.reset(seed=0)
    obs, _, _, _, info = env.step(calc("2+3"))
    assert info["pending"] == 1 and info["tool_results"] == [] and obs[-1]["content"].startswith("queued #1")
    obs, _, _, _, info = env.step(calc("7*6"))
    assert info["pending"] == 2 and obs[-1]["content"].startswith("queued #2")
    obs, _, _, _, info = env.step("now run them <execute/>")
    assert [r["content"] for r in info["tool_results"]] == ["5", "42"] and info["pending"] == 0
    # IH-GRPO metric: one batch of 2 calls → 1 delayed call; turns = 3 → 1 / (2 + 1)
    assert info["delay_call_rate"] == pytest.approx(1 / 3)
    kinds = [kind for *_, kind in info["control_spans"]]
    assert kinds == ["execute"]


def test_delayed_mode_runs_pending_calls_at_the_answer():
    env = gym.make("agentenv/ToolReasoning-v0", tools=["calculator"], execution="delayed",
                   tasks=[{"question": "q", "answer": "5"}])
    env.reset(seed=0)
    env.step(calc("2+3"))
    _, reward, terminated, _, info = env.step("<answer>5</answer>")
    assert terminated and info["tool_results"][0]["content"] == "5" and info["pending"] == 0


def test_delayed_mode_rejects_unknown_tools_at_once_and_empty_execute():
    env = gym.make("agentenv/ToolReasoning-v0", tools=["calculator"], execution="delayed")
    env.reset(seed=0)
    _, _, _, _, info = env.step('<tool_call>{"name": "nope", "arguments": {}}</tool_call>')
    assert info["pending"] == 0 and "unknown tool 'nope'" in info["error"]
    _, _, _, _, info = env.step("<execute/>")
    assert "no queued tool calls" in info["error"]


def test_control_spans_mark_tags_in_the_action():
    env = gym.make("agentenv/ToolReasoning-v0", tools=["calculator"], execution="delayed")
    env.reset(seed=0)
    action = "first " + calc("1+1") + " then <execute/>"
    _, _, _, _, info = env.step(action)
    spans = [(action[s:e], kind) for s, e, kind in info["control_spans"]]
    assert spans == [(calc("1+1"), "tool_call"), ("<execute/>", "execute")]


@pytest.mark.parametrize("bad", [None, 42, b"bytes", ["list"], {"role": "assistant"}])
def test_non_string_actions_become_error_observations(bad):
    env = gym.make("agentenv/ToolReasoning-v0", tools=["calculator"])
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.unwrapped.step(bad)
    assert "must be a string" in info["error"] and not terminated and reward == 0.0
    _, _, _, _, info = env.step(calc("1+1"))
    assert info["tool_results"][0]["content"] == "2"


def test_step_before_reset_is_a_user_error():
    env = gym.make("agentenv/ToolReasoning-v0", tools=["calculator"]).unwrapped
    with pytest.raises(gym.error.ResetNeeded):
        env.step("hi")


def test_jsonl_tasks_and_gsm8k_answers(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text('{"question": "Q1?", "answer": "so 3 + 4 = 7\\n#### 7"}\n\n{"question": "Q2?", "answer": "\\\\frac{1}{2}"}\n')
    env = gym.make("agentenv/ToolReasoning-v0", tasks=str(path), tools=["calculator"])
    obs, _ = env.reset(seed=0, options={"task_index": 0})
    assert obs[1]["content"] == "Q1?"
    assert env.step("<answer>7</answer>")[1] == pytest.approx(1.0)
    env.reset(options={"task_index": 1})
    assert env.step("<answer>0.5</answer>")[1] == pytest.approx(1.0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"q": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        gym.make("agentenv/ToolReasoning-v0", tasks=str(bad))


def test_render_ansi():
    env = gym.make("agentenv/ToolReasoning-v0", tools=["calculator"], render_mode="ansi")
    env.reset(seed=0)
    env.step(calc("1+2"))
    text = env.render()
    assert text.startswith("[system]") and "[tool] 3" in text


@pytest.mark.parametrize("execution", ["immediate", "delayed"])
def test_action_problems_go_to_info_error_and_tool_failures_to_their_result(execution):
    @agentenv.tool
    def boom(x: int) -> int:
        """Always fails."""
        raise RuntimeError("kaput")

    env = gym.make("agentenv/ToolReasoning-v0", tools=[boom], execution=execution).unwrapped
    env.reset(seed=0)
    run = "<execute/>" if execution == "delayed" else ""
    cases = {
        '<tool_call>{"name": "nope", "arguments": {}}</tool_call>': "unknown tool 'nope'",
        '<tool_call>{"name": "boom", "arguments": {"x": "one"}}</tool_call>' + run: "argument 'x' of tool 'boom' must be integer",
        '<tool_call>{"name": "boom", "arguments": {}}</tool_call>' + run: "missing required argument(s) x",
    }
    for action, needle in cases.items():
        env.reset(seed=0)
        info = env.step(action)[4]
        assert needle in (info["error"] or ""), (action, info)
    env.reset(seed=0)
    info = env.step('<tool_call>{"name": "boom", "arguments": {"x": 1}}</tool_call>' + run)[4]
    assert info["error"] is None and "kaput" in info["tool_results"][0]["error"]
