"""AudioReasoning-v0: SoundMind/ALR-style reasoning over real waveforms, with audio analysis tools.

Each episode is one task (see `tasks.py`): the user message carries the clip as
`{"role": "user", "content": text, "audio": {"array": float32 [N], "sampling_rate": 16000}}`. A multimodal
policy reads the array; a text-only one calls the audio tools (`spectrum`, `pitch_track`, `count_onsets`,
`loudness`), which analyse the episode's clip. `input_path` states which of the two a policy uses, and
refuses a text-only policy when no audio tool is offered (the task would be audio-only). The episode ends at
the first final answer, scored by the corrected SoundMind rule (`reward.py`): `info["reward_components"]`
holds format, answer, length, success.

SoundMind's audio-output terms (audio format 0.5 for a `<speak>` block, audio length 0.75 × spoken seconds /
reference seconds) score a model that answers in speech. No policy here speaks (they emit text tokens only),
so those terms are out of scope: the reward is the text part, format + answer + length.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

from agentenv.core import ChatEnv, Message, Score
from agentenv.errors import UserError
from agentenv.envs.audio.alr import load_alr
from agentenv.envs.audio.reward import RewardWeights, score_response
from agentenv.envs.audio.signals import SAMPLE_RATE
from agentenv.envs.audio.speech import INSTALL_HINT, speech_available
from agentenv.envs.audio.tasks import (
    ANSWER_FORMATS, KINDS, LEVELS, SPEECH_KINDS, TONE_KINDS, AudioTask, Difficulty, generate_task, resolve_difficulty,
)
from agentenv.envs.audio.tools import AUDIO_TOOL_NAMES, AudioToolbox
from agentenv.tools.registry import ToolSpec

__all__ = ["AudioReasoningEnv"]


def _instructions(require_think: bool, audio_tools: bool) -> str:
    think = "Reason inside <think>...</think>, then give" if require_think else "Give"
    listen = "Listen to the clip, or analyse it with the audio tools." if audio_tools else "Listen to the clip."
    return (f"You are given an audio clip and a question about it. {listen} {think} the final answer inside "
            "<answer></answer>, in the form the question asks for.")


class AudioReasoningEnv(ChatEnv):
    """Audio reasoning tasks on 16 kHz waveforms, synthesised from the seed or loaded from ALR.

    Args:
        tools: tools offered to the agent: names in `AUDIO_TOOL_NAMES` (bound to the episode's clip), other
            registered names ("python", ...) or `@agentenv.tool`s. Default: the four audio tools.
        execution: "immediate" or "delayed" (IH-GRPO; see `ChatEnv`).
        kinds: task kinds to draw from (`TONE_KINDS` + `SPEECH_KINDS`). Default: every kind this machine can
            make (the speech kinds need espeak-ng; without it they are left out with a warning). Not used
            with `tasks`.
        difficulty: 1–3, a `Difficulty`, a dict of its fields, or None to draw a level per episode.
        answer_format: "nli" (claims answered entailed / not-entailed, as ALR) or "open" (numbers and words).
        tasks: an ALR folder (see `alr.py`) or a list of `AudioTask`s to use instead of generated tasks.
        reward_weights: a `RewardWeights` or a dict of its fields (format, answer, length).
        require_think: whether the format term needs a `<think>` block before the answer.
        length_target_words: think-block words that earn the full length term, when a task has no reference.
        max_turns, seed, render_mode: as in `ChatEnv`.

    `reset(options={"task_index": i})` picks task `i` of a loaded task list.
    """

    def __init__(
        self,
        tools: Iterable[ToolSpec] = AUDIO_TOOL_NAMES,
        execution: str = "immediate",
        kinds: Sequence[str] | None = None,
        difficulty: int | Difficulty | dict | None = 1,
        answer_format: str = "nli",
        tasks: str | Path | Sequence[AudioTask] | None = None,
        reward_weights: RewardWeights | dict | None = None,
        require_think: bool = True,
        length_target_words: int = 50,
        max_turns: int = 6,
        seed: int | None = None,
        render_mode: str | None = None,
        **chat_env_kwargs: Any,
    ):
        self.toolbox = AudioToolbox(SAMPLE_RATE)
        bound = [self.toolbox.tools[t] if isinstance(t, str) and t in AUDIO_TOOL_NAMES else t for t in tools]
        super().__init__(tools=bound, execution=execution, max_turns=max_turns, seed=seed, render_mode=render_mode,
                         **chat_env_kwargs)
        if answer_format not in ANSWER_FORMATS:
            raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got {answer_format!r}")
        if length_target_words < 1:
            raise ValueError("length_target_words must be at least 1")
        self.dataset = (load_alr(tasks) if isinstance(tasks, (str, Path)) else list(tasks)) if tasks is not None else None
        self.kinds = self._check_kinds(kinds) if self.dataset is None else ()
        self.difficulty = resolve_difficulty(difficulty)
        self.answer_format = answer_format
        self.weights = RewardWeights(**reward_weights) if isinstance(reward_weights, dict) else (reward_weights or RewardWeights())
        self.require_think = require_think
        self.length_target_words = length_target_words
        self.task: AudioTask | None = None
        instructions = _instructions(require_think, bool(self.audio_tools))
        self._system = f"{instructions}\n\n{self.tools_prompt()}" if self.tools else instructions

    @property
    def audio_tools(self) -> list[str]:
        """The offered tools that analyse the episode's clip."""
        return [name for name in self.tools if name in AUDIO_TOOL_NAMES]

    def input_path(self, hears_audio: bool) -> str:
        """How a policy reaches the clip: "audio input" (it takes the waveform in), else "tools only: …" (the audio
        tools offered). A policy that cannot hear, with no audio tool offered, would answer without the clip:
        `UserError`."""
        if hears_audio:
            return "audio input"
        if self.audio_tools:
            return f"tools only: {', '.join(self.audio_tools)} (the policy reads text; the waveform reaches it through these tools)"
        raise UserError(
            "AudioReasoning-v0 with no audio tool is audio-only, and this policy reads text only: the waveform would "
            "never reach it. Use an audio-language policy (`AudioLMPolicy`: `agentenv train --model=audio-tiny`, "
            f"`agentenv run --policy hf:audio-tiny`) or offer the audio tools (env_kwargs tools: {list(AUDIO_TOOL_NAMES)}).")

    @staticmethod
    def _check_kinds(kinds: Sequence[str] | None) -> tuple[str, ...]:
        if kinds is None:
            if speech_available():
                return KINDS
            warnings.warn(f"AudioReasoning-v0: generating tone tasks only; {INSTALL_HINT}", stacklevel=3)
            return TONE_KINDS
        kinds = tuple(kinds)
        unknown = set(kinds) - set(KINDS)
        if unknown or not kinds:
            raise ValueError(f"unknown task kinds {sorted(unknown)}; choose from {list(KINDS)}")
        if set(kinds) & set(SPEECH_KINDS) and not speech_available():
            raise RuntimeError(f"kinds {sorted(set(kinds) & set(SPEECH_KINDS))} need espeak-ng: {INSTALL_HINT}")
        return kinds

    def _new_episode(self) -> list[Message]:
        if self.dataset is not None:
            self.task = self._pick_task(self.dataset)
        else:
            kind = self.kinds[int(self.np_random.integers(len(self.kinds)))]
            difficulty = self.difficulty or LEVELS[int(self.np_random.integers(1, 4))]
            self.task = generate_task(self.np_random, kind, difficulty, self.answer_format)
        self.toolbox.load(self.task.audio)
        text = f"[audio clip: {self.task.duration:.2f} s]\n{self.task.question}"
        audio = {"array": self.task.audio, "sampling_rate": SAMPLE_RATE}
        return [{"role": "system", "content": self._system}, {"role": "user", "content": text, "audio": audio}]

    def _score_answer(self, answer: str, action: str) -> Score:
        assert self.task is not None
        # score_response finds the answer in `action` as the core did (last <answer>, else \boxed{})
        return score_response(
            action, self.task.label, self.task.answer_type, choices=self.task.choices, weights=self.weights,
            ref_words=self.task.ref_words or self.length_target_words, require_think=self.require_think,
        )
