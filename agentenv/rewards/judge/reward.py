"""A judge as an env's reward: `JudgeReward` scores a final answer, `judge_reward(spec)` builds one from a string.

Spec: `"judge:<policy>[;key=value]..."`, e.g.

    judge:hf:runs/judge;rubric=reference             a saved HF model directory (or hf:tiny, a random tiny model)
    judge:vllm:runs/judge;rubric=correctness;method=text
    judge:openai:http://127.0.0.1:8000/v1;model=Qwen2.5-7B-Instruct;rubric=pairwise_reference;mitigation=swap

Keys: `rubric` (a registered rubric, default "reference"), `method` ("auto", "text", "logprob"), `mitigation`
("none", or "swap" for a pairwise rubric), `fallback` (the value of an unreadable reply, default 0.5),
`model` (the served model's name, for openai:URL). Judges are greedy (temperature 0).

A pointwise rubric's judgement is the reward. A pairwise rubric compares the answer with the reference
answer shown as the other response: its reward is P(answer preferred over the reference), about 0.5 for an
answer as good as the reference and about 0 for a worse one under a fair judge (advantages normalised per
group make the scale irrelevant); "swap" judges both orders.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from agentenv.rewards.judge.judges import Judgement, PairItem, PairwiseJudge, PointItem, PointwiseJudge, SwapAveraged
from agentenv.rewards.judge.rubrics import get_rubric

__all__ = ["JudgeReward", "judge_reward", "parse_spec", "JUDGE_PREFIX"]

JUDGE_PREFIX = "judge:"
_KEYS = ("rubric", "method", "mitigation", "fallback", "model")


@dataclass
class JudgeReward:
    """Scores `(question, response, reference)` with a pointwise judge, or with a pairwise judge against the
    reference answer (see the module doc). Returns a `Judgement` (`value` in [0, 1], `parsed`)."""

    judge: Any  # a PointwiseJudge, or a pairwise judge / mitigation (anything with `compare`)

    def __call__(self, question: str, response: str, reference: str = "") -> Judgement:
        if hasattr(self.judge, "score"):
            return self.judge.score([PointItem(question, response, reference)])[0]
        return self.judge.compare([PairItem(question, response, reference, reference)])[0]


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """`"judge:hf:DIR;rubric=reference"` → `("hf:DIR", {"rubric": "reference"})`."""
    if not spec.startswith(JUDGE_PREFIX):
        raise ValueError(f"a judge spec starts with {JUDGE_PREFIX!r}, got {spec!r}")
    policy, *pairs = spec[len(JUDGE_PREFIX):].split(";")
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key.strip() not in _KEYS:
            raise ValueError(f"judge spec option {pair!r}: expected KEY=VALUE with KEY in {', '.join(_KEYS)}")
        options[key.strip()] = value.strip()
    if not policy:
        raise ValueError(f"judge spec {spec!r} names no policy: judge:hf:DIR, judge:vllm:DIR or judge:openai:URL;model=NAME")
    return policy, options


def judge_reward(spec: str) -> JudgeReward:
    """The `JudgeReward` a spec string describes (module doc). Judges of the same spec share one policy
    (a model is loaded once per process, however many envs use it)."""
    policy_spec, options = parse_spec(spec)
    rubric = get_rubric(options.get("rubric", "reference"))
    method = options.get("method", "auto")
    fallback = float(options.get("fallback", 0.5))
    mitigation = options.get("mitigation", "none")
    if mitigation not in ("none", "swap"):
        raise ValueError(f"mitigation must be 'none' or 'swap', got {mitigation!r}")
    if mitigation == "swap" and rubric.mode != "pairwise":
        raise ValueError("mitigation=swap needs a pairwise rubric (there is no order to swap in a pointwise one)")
    policy = _judge_policy(policy_spec, options.get("model"))
    if rubric.mode == "pointwise":
        return JudgeReward(PointwiseJudge(policy, rubric, method, fallback))
    judge = PairwiseJudge(policy, rubric, method, fallback)
    return JudgeReward(SwapAveraged(judge) if mitigation == "swap" else judge)


@lru_cache(maxsize=8)
def _judge_policy(spec: str, model: str | None):
    """A greedy policy for `spec`. Imported here, on use: rewards sit below policies in the import order, and
    only a spec string (not a policy object) needs to build one."""
    kind, _, target = spec.partition(":")
    if kind == "hf" and target:
        from agentenv.policies.hf import HFPolicy

        return HFPolicy(target, temperature=0.0, max_new_tokens=32)
    if kind == "vllm" and target:
        from agentenv.policies.vllm import VLLMPolicy

        return VLLMPolicy(target, temperature=0.0, max_new_tokens=32)
    if kind == "openai" and target:
        from agentenv.policies.endpoint import EndpointPolicy

        if not model:
            raise ValueError(f"judge policy {spec!r} needs ;model=NAME (the name the server serves the model under)")
        return EndpointPolicy(target, model, temperature=0.0, max_tokens=64)
    raise ValueError(f"unknown judge policy {spec!r}: use hf:DIR (or hf:tiny), vllm:DIR or openai:URL with ;model=NAME")
