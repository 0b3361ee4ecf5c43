"""ToolReasoning-v0 end to end: task labels, the scripted policy over 1,000 seeded episodes, the CLI."""

import json
import re
from fractions import Fraction

import gymnasium as gym
import numpy as np
import pytest

import agentenv  # noqa: F401 - registers the envs
from agentenv.cli import main
from agentenv.envs.tool_reasoning.tasks import GENERATORS, format_exact, generate_task
from agentenv.policies import ScriptedPolicy
from agentenv.runner import run_episodes, summarize


@pytest.mark.parametrize("execution", ["immediate", "delayed"])
def test_scripted_policy_solves_1000_seeded_episodes_reproducibly(execution):
    def run():
        return list(run_episodes("agentenv/ToolReasoning-v0", ScriptedPolicy(), 1000, seed=10_000, batch_size=32,
                                 env_kwargs={"execution": execution}))

    logs = run()
    stats = summarize(logs)
    assert stats["success_rate"] >= 0.99, stats
    assert stats["mean_tool_calls"] >= 1.0
    if execution == "delayed":
        assert all(log.turns == 3 for log in logs if log.success)  # call, <execute/>, answer
    again = run()
    assert [json.dumps(l.as_dict()) for l in again] == [json.dumps(l.as_dict()) for l in logs]


def test_imperfect_demonstrator_calls_another_formula_on_the_same_numbers():
    kwargs = {"kinds": ["counting"], "difficulty": 1}

    def run(policy):
        return list(run_episodes("agentenv/ToolReasoning-v0", policy, 300, seed=5, env_kwargs=kwargs))

    def call(log):  # the calculator expression of the first assistant turn
        first = next(m["content"] for m in log.messages if m["role"] == "assistant")
        return json.loads(first.split("<tool_call>")[1].split("</tool_call>")[0])["arguments"]["expression"]

    def numbers(expression):
        return sorted(int(x) for x in re.findall(r"\d+", expression))

    right, mixed = run(ScriptedPolicy()), run(ScriptedPolicy(wrong_formula=2 / 3, seed=1))
    assert [json.dumps(l.as_dict()) for l in run(ScriptedPolicy(wrong_formula=2 / 3, seed=1))] == \
        [json.dumps(l.as_dict()) for l in mixed]  # the choices depend on the question and seed, not on call order
    assert all(l.success for l in right)
    changed = [call(a) != call(b) for a, b in zip(right, mixed)]
    assert all(numbers(call(a)) == numbers(call(b)) for a, b in zip(right, mixed))  # the numbers stay right
    assert all(b.success for b, c in zip(mixed, changed) if not c)
    assert 0.55 < sum(changed) / len(changed) < 0.78  # 2/3 of the calls use one of the two other formulas
    with pytest.raises(ValueError):
        ScriptedPolicy(wrong_formula=1.5)
    # every_formula: three demonstrators, each question shown with the right formula and each of the two others
    variants = ScriptedPolicy(every_formula=True).variants()
    shown = [run(v) for v in variants]
    assert all(l.success for l in shown[0]) and not any(l.success for v in shown[1:] for l in v)
    for logs in zip(right, *shown):
        calls = [call(log) for log in logs]
        assert calls[0] == calls[1] and len(set(calls[1:])) == 3  # the right one, and all three formulas
        assert len({tuple(numbers(c)) for c in calls}) == 1  # always on the right numbers
    assert ScriptedPolicy().variants()[0].every_formula is False


def test_every_task_kind_and_difficulty_is_generated():
    rng = np.random.default_rng(0)
    seen = {(t.kind, t.difficulty) for t in (generate_task(rng) for _ in range(600))}
    assert seen == {(kind, level) for kind in GENERATORS for level in (1, 2, 3)}


def test_difficulty_raises_problem_size():
    def mean_question_digits(level):
        rng = np.random.default_rng(1)
        tasks = [generate_task(rng, ("arithmetic_chain",), level) for _ in range(50)]
        return np.mean([sum(ch.isdigit() for ch in t.question) for t in tasks])

    assert mean_question_digits(1) < mean_question_digits(2) < mean_question_digits(3)


def test_labels_recomputed_independently():
    rng = np.random.default_rng(2)
    for _ in range(200):
        task = generate_task(rng, ("arithmetic_chain",))
        body = task.question.removeprefix("Start with ").removesuffix(". What is the result?")
        start, *ops = body.split("; ")
        value = Fraction(start)
        for op in ops:
            verb, _, amount = op.rpartition(" ")
            value = {"add": value + int(amount), "subtract": value - int(amount),
                     "multiply by": value * int(amount), "divide by": value / int(amount)}[verb]
        assert format_exact(value) == task.answer


def test_format_exact():
    assert [format_exact(Fraction(x)) for x in ("3", "-7/4", "1/3", "1/1024")] == ["3", "-1.75", "1/3", "0.0009765625"]


def test_cli_run_prints_summary_and_writes_jsonl(tmp_path, capsys):
    out = tmp_path / "episodes.jsonl"
    assert main(["run", "ToolReasoning-v0", "--episodes", "20", "--execution", "delayed", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "success rate" in printed and "1.000" in printed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 20 and rows[0]["seed"] == 0 and rows[0]["messages"][0]["role"] == "system"
    assert not (tmp_path / "episodes.jsonl.partial").exists()


def test_system_prompt_override_replaces_the_default_and_keeps_the_tools():
    env = gym.make("agentenv/ToolReasoning-v0", tools=["calculator"], system_prompt="Use the calculator.")
    obs, info = env.reset(seed=0)
    assert obs[0] == {"role": "system", "content": "Use the calculator."}
    obs, *_ = env.step('<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call>')
    assert obs[-1]["content"] == "42"
