"""Rollout: N tasks × G samples of any agentenv environment → token-in/token-out `Episode` records.

Every turn, the token sequences of all live episodes go to the policy in one batched `generate_ids` call;
each env then steps with its generation's text. The sequence of an episode grows by appending, never by
re-tokenizing: prompt ids, generated ids (loss mask 1), the ids of the messages the env added rendered as a
continuation (`ChatTokens.delta`, loss mask 0), the next generated ids, … If the env rewrites earlier
history (a compressor), the turn starts a new `Sample` from a fresh prompt; the episode's reward applies to
all its samples.

Policies:
* token policies (`HFPolicy`, anything with `generate_ids(prompts, max_new_tokens)` and a `chat`
  `ChatTokens`): the stored ids and `old_logprobs` are exactly what the model sampled.
* text-only policies (`ScriptedPolicy`, anything with just `generate(contexts)`): with `tokenizer=` (or a
  `ChatTokens`), each turn's text is tokenized (plus the end-of-turn id) and `old_logprobs` are 0.0 — how
  `demonstrations` records scripted episodes for warm-start SFT; without one, episodes carry messages, turns
  and rewards only — how `agentenv run` (`runner.py`, a summary view of these episodes) runs any policy.

Non-text observations (AudioReasoning-v0's waveforms): the chat renders them as placeholder ids plus model
inputs (`ChatTokens.prompt_and_inputs`), stored beside the ids in `Sample.inputs` and handed to the policy's
`generate_ids(..., inputs=)`. A text chat renders none; before any episode, `input_path` asks the env whether
the policy can still reach them (its tools) and fails with a `UserError` if not, so nothing is dropped silently.

This is the one rollout loop: training, evaluation, demonstrations and `agentenv run` all go through it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, Sequence

import gymnasium as gym

from agentenv.core import qualified_env_id
from agentenv.errors import UserError
from agentenv.policies.chat_tokens import ChatTokens
from agentenv.types import Episode, Generation, Messages, Policy, Sample

__all__ = ["Sample", "Episode", "collect", "iter_episodes", "demonstrations", "drive", "input_path", "EnvPool", "LocalEnvs",
           "Slot"]

StepResult = tuple[Messages, float, bool, bool, dict[str, Any]]


@dataclass
class _Live:
    env: Slot  # its place in the pool; `env.step` hands back the pool's result for this turn
    episode: Episode
    obs: Messages


def collect(env: str | Callable[[], gym.Env], policy: Policy, tasks: Sequence[int], group_size: int = 1,
            **options: Any) -> list[Episode]:
    """Run `group_size` episodes of every task and return them ordered by (group, sample).

    `options` are `iter_episodes`'s: env_kwargs, tokenizer, max_turns, max_seq_len, batch_size.
    """
    return sorted(iter_episodes(env, policy, tasks, group_size, **options), key=lambda e: e.index)


def iter_episodes(
    env: str | Callable[[], gym.Env],
    policy: Policy,
    tasks: Sequence[int],
    group_size: int = 1,
    *,
    env_kwargs: dict[str, Any] | None = None,
    tokenizer: Any = None,
    max_turns: int | None = None,
    max_seq_len: int = 4096,
    batch_size: int | None = None,
) -> Iterator[Episode]:
    """Run `group_size` episodes of every task, yielding each as soon as it ends (`episode.index` is its place
    in the (group, sample) order `collect` returns).

    Args:
        env: an env id (`"agentenv/ToolReasoning-v0"`, the `agentenv/` prefix optional) or a function that
            builds an env.
        policy: a token policy (`generate_ids`) or a text-only one (`generate`).
        tasks: one reset seed per task; task i is group i and its G episodes all reset with `tasks[i]`.
        env_kwargs: keyword arguments of `gym.make` when `env` is an id.
        tokenizer: tokenizes a text-only policy's turns into token records (ignored for token policies); a
            `ChatTokens` is used as it is (an audio one records the waveforms beside the ids); without it a
            text-only policy's episodes have messages, turns and rewards but no samples.
        max_turns: stop an episode (truncated) after this many turns, on top of the env's own limit.
        max_seq_len: a sample never grows past this many ids: a turn gets at most the room left, and an
            episode whose next env delta would not leave room for one generated token ends truncated.
        batch_size: at most this many episodes live at once (each needs its own env); default all.
    """
    if isinstance(env, str):
        env_id = qualified_env_id(env)
        build: Callable[[], gym.Env] = lambda: gym.make(env_id, **(env_kwargs or {}))
    else:
        build = env
    envs = LocalEnvs(build)
    try:
        input_path(envs.env(0), policy, _chat_of(policy, tokenizer))
        yield from drive(envs, policy, tasks, group_size, tokenizer=tokenizer, max_turns=max_turns,
                         max_seq_len=max_seq_len, batch_size=batch_size)
    finally:
        envs.close()


def input_path(env: gym.Env, policy: Any, chat: ChatTokens | None = None) -> str | None:
    """How `policy` reaches the non-text part of `env`'s observations, as the env states it (its
    `input_path(hears_audio)`, e.g. "audio input" or "tools only: …"); None for a text env. The env raises a
    `UserError` when the policy cannot reach it (an audio-only task for a policy that reads text only).

    A policy hears audio when it says so (`hears_audio`) and, when its turns are recorded as tokens, the chat
    that records them keeps the audio too (a listening teacher recorded by a text chat would be dropped)."""
    decide = getattr(env.unwrapped, "input_path", None)
    if decide is None:
        return None
    hears = bool(getattr(policy, "hears_audio", False))
    if hears and chat is not None and not getattr(chat, "hears_audio", False):
        raise UserError(f"{type(policy).__name__} hears the audio, but its turns are recorded by a text chat that would drop "
                        "it: record them with the audio policy's chat (demonstrations(..., tokenizer=policy.chat))")
    return decide(hears_audio=hears)


def _chat_of(policy: Any, tokenizer: Any) -> ChatTokens | None:
    """The renderer of the token records: a token policy's own, else one over `tokenizer` (None: text records only)."""
    if hasattr(policy, "generate_ids"):
        return policy.chat
    if tokenizer is None or isinstance(tokenizer, ChatTokens):
        return tokenizer
    return ChatTokens(tokenizer)


class LocalEnvs:
    """The local backend's envs: one per slot index, built on first use, in this process."""

    def __init__(self, build: Callable[[], gym.Env]):
        self.build = build
        self.envs: dict[int, gym.Env] = {}

    def env(self, index: int) -> gym.Env:
        if index not in self.envs:
            self.envs[index] = self.build()
        return self.envs[index]

    def reset(self, slots: Sequence[Slot], seeds: Sequence[int]) -> list[Messages]:
        return [self.env(slot.index).reset(seed=seed)[0] for slot, seed in zip(slots, seeds)]

    def step(self, slots: Sequence[Slot], actions: Sequence[str]) -> list[StepResult]:
        return [self.env(slot.index).step(action) for slot, action in zip(slots, actions)]

    def close(self) -> None:
        for env in self.envs.values():
            env.close()
        self.envs.clear()


@dataclass(eq=False)
class Slot:
    """One env place of a pool, and what the driver knows of the episode in it: its seed and the actions it
    has taken (enough to rebuild the env's state anywhere). It stands in for the env in `rollout._step`:
    `step` hands back the result the pool already returned for this turn."""

    index: int
    seed: int | None = None  # None: no live episode here
    actions: list[str] = field(default_factory=list)
    result: StepResult | None = None

    def step(self, action: str) -> StepResult:
        result, self.result = self.result, None
        assert result is not None and action == self.actions[-1]
        return result


class EnvPool(Protocol):
    """Envs addressed by slot: many resets, or many steps, in one call (one result per slot, in order)."""

    def reset(self, slots: Sequence[Slot], seeds: Sequence[int]) -> list[Messages]: ...

    def step(self, slots: Sequence[Slot], actions: Sequence[str]) -> list[StepResult]: ...


def drive(pool: EnvPool, policy: Policy, tasks: Sequence[int], group_size: int = 1, *, tokenizer: Any = None,
          max_turns: int | None = None, max_seq_len: int = 4096, batch_size: int | None = None) -> Iterator[Episode]:
    """The rollout loop, over the envs behind `pool` (`LocalEnvs` in this process, or Ray actors:
    `agentenv.distributed.RayRollout`): each turn, one batched generation for all live episodes, one pool
    `step` for all of them, then `_step` records each turn, in batch order. Arguments as `iter_episodes`'s
    (`pool` replaces `env`/`env_kwargs`); any pool gives the same episodes and the same policy batches."""
    if group_size < 1:
        raise ValueError("group_size must be at least 1")
    token_policy = hasattr(policy, "generate_ids")
    chat = _chat_of(policy, tokenizer)
    jobs = [(group, seed) for group, seed in enumerate(tasks) for _ in range(group_size)]
    episodes = [Episode(group, int(seed), index=i) for i, (group, seed) in enumerate(jobs)]
    next_job, done = 0, []

    def start(free: list[Slot]) -> list[_Live | None]:
        """Start the next jobs in these freed places, as the local `start` does place by place (a job whose
        prompt leaves no room ends at once and the place takes the next job), with one pool reset per round."""
        nonlocal next_job
        started: list[_Live | None] = [None] * len(free)
        waiting = list(range(len(free)))  # places still without an episode, in batch order
        while waiting and next_job < len(episodes):
            batch, next_job = episodes[next_job : next_job + len(waiting)], next_job + len(waiting)
            slots, free = free[: len(batch)], free[len(batch) :]
            for slot, episode, obs in zip(slots, batch, pool.reset(slots, [e.seed for e in batch])):
                episode.messages = obs
                if chat is None or _new_sample(episode, *chat.prompt_and_inputs(obs), max_seq_len):
                    slot.seed, slot.actions = episode.seed, []
                    started[waiting.pop(0)] = _Live(slot, episode, obs)
                else:
                    done.append(episode)
                    free.append(slot)
        return started

    live = [item for item in start([Slot(i) for i in range(min(batch_size or len(jobs), len(jobs)))]) if item is not None]
    while live or done:
        yield from done
        done.clear()
        if not live:
            break
        budgets = [max_seq_len - len(item.episode.samples[-1]) if chat is not None else max_seq_len for item in live]
        generations = _generate(policy, chat, token_policy, live, budgets)
        slots = [item.env for item in live]
        texts = [g.text for g in generations]
        for slot, text, result in zip(slots, texts, pool.step(slots, texts)):
            slot.actions.append(text)
            slot.result = result
        batch: list[_Live | Slot] = []
        for item, generation in zip(live, generations):
            if _step(item, generation, chat, max_turns, max_seq_len):
                batch.append(item)
            else:
                done.append(item.episode)
                item.env.seed = None
                batch.append(item.env)  # its place in the batch, for the next job
        freed = [x for x in batch if isinstance(x, Slot)]
        if freed:
            fills = iter(start(freed))
            batch = [next(fills) if isinstance(x, Slot) else x for x in batch]
        live = [x for x in batch if x is not None]


def demonstrations(
    env: str | Callable[[], gym.Env],
    n: int,
    tokenizer: Any,
    *,
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    policy: Policy | None = None,
    max_seq_len: int = 4096,
) -> list[Episode]:
    """`n` scripted episodes (seeds `seed … seed+n-1`) as token records for supervised warm-start.

    The scripted text of every turn is tokenized with `tokenizer` and masked 1 (the end-of-turn id
    included); `old_logprobs` are 0.0. Filter on `episode.success` / `episode.reward` as needed.
    """
    if policy is None:
        from agentenv.envs.tool_reasoning.scripted import ScriptedPolicy

        policy = ScriptedPolicy()
    return collect(env, policy, list(range(seed, seed + n)), 1, env_kwargs=env_kwargs, tokenizer=tokenizer, max_seq_len=max_seq_len)


def _new_sample(episode: Episode, prompt: list[int], inputs: list[dict[str, Any]], max_seq_len: int) -> bool:
    """Start a sample with `prompt` (and the model inputs beside it); False (episode truncated) when it leaves
    no room to generate."""
    if len(prompt) >= max_seq_len:
        episode.truncated = True
        return False
    sample = Sample(prompt_len=len(prompt), inputs=list(inputs))
    sample.extend(prompt, generated=False)
    episode.samples.append(sample)
    return True


def _generate(policy: Any, chat: ChatTokens | None, token_policy: bool, live: list[_Live], budgets: list[int]) -> list[Generation]:
    """One generation per live episode, in one batched policy call."""
    if token_policy:
        limits = [min(getattr(policy, "max_new_tokens", b), b) for b in budgets]
        samples = [item.episode.samples[-1] for item in live]
        inputs = [s.inputs for s in samples]  # only a policy whose chat rendered them gets any
        return policy.generate_ids([s.token_ids for s in samples], max_new_tokens=limits, **({"inputs": inputs} if any(inputs) else {}))
    if chat is None:  # a text-only policy without a tokenizer: text records only
        return policy.generate([item.obs for item in live])
    generations = []
    for generation, budget in zip(policy.generate([item.obs for item in live]), budgets):
        ids = chat.turn(generation.text)
        if len(ids) > budget:
            ids = ids[:budget]
            generation = Generation(chat.decode(ids), ids, [0.0] * len(ids), finish_reason="length")
        else:
            generation = Generation(generation.text, ids, [0.0] * len(ids), finish_reason="stop")
        generations.append(generation)
    return generations


def _control_mask(chat: ChatTokens, generated: list[int], spans: Sequence[tuple[int, int, str]]) -> tuple[list[int], list[tuple[int, int, str]]]:
    """Per-token control flags `[T]` and the token range of each control span (positions within `generated`)."""
    mask = [0] * len(generated)
    ranges: list[tuple[int, int, str]] = []
    if not spans:
        return mask, ranges
    offsets = chat.char_offsets(generated)
    for start, end, kind in spans:
        hits = [i for i, (a, b) in enumerate(offsets) if a < end and b > start]
        for i in hits:
            mask[i] = 1
        if hits:
            ranges.append((hits[0], hits[-1] + 1, kind))
    return mask, ranges


def _continues(previous: Messages, obs: Messages) -> bool:
    """True when `obs` is `previous` + the assistant turn + new messages (history was not rewritten)."""
    if len(obs) <= len(previous) or obs[len(previous)].get("role") != "assistant":
        return False
    return all(a is b or (a["role"], a["content"]) == (b["role"], b["content"]) for a, b in zip(previous, obs))


def _step(item: _Live, generation: Generation, chat: ChatTokens | None, max_turns: int | None, max_seq_len: int) -> bool:
    """Record the generation, step the env, append the env's delta. Returns whether the episode goes on."""
    episode = item.episode
    obs, reward, terminated, truncated, info = item.env.step(generation.text)
    ended = generation.finish_reason == "stop"
    turn = {k: v for k, v in info.items() if k != "tools"}
    turn.update(finish_reason=generation.finish_reason, reward=float(reward))
    if chat is not None:
        sample = episode.samples[-1]
        text_ids = generation.token_ids[:-1] if ended else generation.token_ids
        control, ranges = _control_mask(chat, text_ids, info.get("control_spans", []))
        start = len(sample)
        sample.extend(generation.token_ids, generated=True, logprobs=generation.logprobs, control=control + [0] * ended)
        turn.update(sample=len(episode.samples) - 1, start=start, end=len(sample),
                    control_positions=[(start + a, start + b, kind) for a, b, kind in ranges])
    episode.turns.append(turn)
    episode.reward += float(reward)
    episode.messages = obs
    if terminated or truncated:
        episode.terminated, episode.truncated = terminated, truncated
        episode.reward_components = dict(info.get("reward_components", {}))
        return False
    if max_turns is not None and len(episode.turns) >= max_turns:
        episode.truncated = True
        return False
    previous, item.obs = item.obs, obs
    if chat is None:
        return True
    sample = episode.samples[-1]
    if not _continues(previous, obs):
        return _new_sample(episode, *chat.prompt_and_inputs(obs), max_seq_len)
    delta, inputs = chat.delta_and_inputs(obs[len(previous) + 1 :])
    delta = ([] if ended else [chat.end_id]) + delta
    if len(sample) + len(delta) >= max_seq_len:
        episode.truncated = True
        return False
    sample.extend(delta, generated=False)
    sample.inputs.extend(inputs)
    return True
