"""ToolReasoning-v0: multi-step math and logic word problems solved with tools, scored by a verifiable reward.

Tasks come from seeded generators (`tasks.py`) or from a user JSONL file of
`{"question", "answer"}` rows (GSM8K/MATH style). The reward is
`(1 − format_weight)·correct + format_weight·well_formed`, where `correct` is an exact numeric or symbolic
match of the answer and `well_formed` says the final turn held one clean answer and no broken tool call.
With `reward="judge:..."` an LLM judge's score of the answer takes the place of `correct` in the reward
(`agentenv.rewards.judge`); success is still the verifiable match.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from agentenv.core import ChatEnv, Message, Score
from agentenv.envs.tool_reasoning.tasks import GENERATORS, Task, generate_task, load_jsonl_tasks
from agentenv.rewards.judge.reward import JUDGE_PREFIX, judge_reward
from agentenv.rewards.math_match import match_answer
from agentenv.tools.parsing import parse_action
from agentenv.tools.registry import ToolSpec

__all__ = ["ToolReasoningEnv"]

MAX_ANSWER_CHARS = 200

INSTRUCTIONS = (
    "Solve the problem step by step. Use the tools for every computation instead of calculating in your head; "
    "when you know the result, reply with the final answer only, as a number, inside <answer></answer>."
)


class ToolReasoningEnv(ChatEnv):
    """Math/logic word problems with python and calculator tools.

    Args:
        tools: tools offered to the agent (default: python and calculator); user `@agentenv.tool`s welcome.
        execution: "immediate" or "delayed" (IH-GRPO; see `ChatEnv`).
        difficulty: 1–3, or None to draw it per episode.
        kinds: restrict the generated task kinds (see `GENERATORS`); None for all.
        tasks: a JSONL path or a list of `{"question", "answer"}` dicts to use instead of generated tasks.
        format_weight: weight of the format term in the reward.
        system_prompt: replaces the default system prompt (instructions + every tool's JSON schema), e.g. a
            one-line prompt for a tiny model whose cost and difficulty grow with the context length.
        reward: "match" (default: the verifiable check), a judge spec `"judge:<policy>;rubric=...;..."`
            (`agentenv.rewards.judge.reward`), or a callable `(question, answer, reference) -> Judgement` (e.g. a
            `JudgeReward` over an in-memory policy). A judge's value in [0, 1] replaces `correct` in the reward;
            `info["reward_components"]` keeps "correct" (which still decides success) and adds "judge" and
            "judge_unparsed" (1.0 when the judge's reply could not be read and the judge's fallback was used).
        max_turns, seed, render_mode: as in `ChatEnv`.

    `reset(options={"task_index": i})` picks task `i` of a loaded task list.
    """

    def __init__(
        self,
        tools: Iterable[ToolSpec] = ("python", "calculator"),
        execution: str = "immediate",
        difficulty: int | None = None,
        kinds: Sequence[str] | None = None,
        tasks: str | Path | Sequence[dict[str, Any]] | None = None,
        format_weight: float = 0.1,
        system_prompt: str | None = None,
        reward: str | Callable[[str, str, str], Any] = "match",
        max_turns: int = 6,
        seed: int | None = None,
        render_mode: str | None = None,
        **chat_env_kwargs: Any,
    ):
        super().__init__(tools=tools, execution=execution, max_turns=max_turns, seed=seed, render_mode=render_mode,
                         **chat_env_kwargs)
        if difficulty is not None and difficulty not in (1, 2, 3):
            raise ValueError("difficulty must be 1, 2, 3 or None")
        unknown = set(kinds or ()) - set(GENERATORS)
        if unknown:
            raise ValueError(f"unknown task kinds {sorted(unknown)}; choose from {sorted(GENERATORS)}")
        if not 0.0 <= format_weight <= 1.0:
            raise ValueError("format_weight must be in [0, 1]")
        self.difficulty = difficulty
        self.kinds = tuple(kinds) if kinds else None
        self.format_weight = format_weight
        self.dataset = self._load(tasks)
        self.judge = self._judge(reward)
        self.task: Task | None = None
        self._system = system_prompt if system_prompt is not None else f"{INSTRUCTIONS}\n\n{self.tools_prompt()}"

    @staticmethod
    def _load(tasks: str | Path | Sequence[dict[str, Any]] | None) -> list[Task] | None:
        if tasks is None:
            return None
        if isinstance(tasks, (str, Path)):
            return load_jsonl_tasks(tasks)
        return [Task(str(t["question"]), str(t["answer"]), str(t.get("kind", "custom")), int(t.get("difficulty", 0))) for t in tasks]

    @staticmethod
    def _judge(reward: str | Callable[[str, str, str], Any]) -> Callable[[str, str, str], Any] | None:
        if callable(reward):
            return reward
        if reward == "match":
            return None
        if isinstance(reward, str) and reward.startswith(JUDGE_PREFIX):
            return judge_reward(reward)
        raise ValueError(f"reward must be 'match', a judge spec 'judge:<policy>;...' or a callable, got {reward!r}")

    def _new_episode(self) -> list[Message]:
        if self.dataset is not None:
            self.task = self._pick_task(self.dataset)
        else:
            self.task = generate_task(self.np_random, self.kinds, self.difficulty)
        return [{"role": "system", "content": self._system}, {"role": "user", "content": self.task.question}]

    def _score_answer(self, answer: str, action: str) -> Score:
        assert self.task is not None
        match = match_answer(answer, self.task.answer) if len(answer) <= MAX_ANSWER_CHARS else None
        correct = match is not None and match.equal
        parsed = parse_action(action, python_blocks="python" in self.tools)
        well_formed = bool(answer) and len(answer) <= MAX_ANSWER_CHARS and not parsed.errors
        components = {"correct": float(correct), "format": float(well_formed)}
        quality = float(correct)
        if self.judge is not None:
            judgement = self.judge(self.task.question, answer, self.task.answer)
            quality = components["judge"] = float(judgement.value)
            components["judge_unparsed"] = float(not judgement.parsed)
        reward = (1.0 - self.format_weight) * quality + self.format_weight * well_formed
        if match is not None and match.timed_out:  # a reward decided by the clock is flagged, never silent
            components["answer_check_timed_out"] = 1.0
        return Score(reward, correct, components)
