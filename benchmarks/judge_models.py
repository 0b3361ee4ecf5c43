"""Tiny judge models trained in-process for the judge benchmarks (no weights are downloaded).

`train_judge` SFTs a random-init tiny Qwen2-shaped model (`agentenv.policies.tiny`) on a mixture of four
chat tasks built from `arithmetic_items` (a seed disjoint from the probe set's):

* pairwise verdicts with the "pairwise" rubric (right vs wrong, terse, random order) → "[[A]]" / "[[B]]";
* the same with two or three other judges' verdicts shown (each right with probability 0.7), so the model
  can sit on a 3-judge debate panel (it sees 2) or act as its meta-judge (it sees 3);
* pointwise scores with the "correctness" rubric: right → "Score: 10", wrong → "Score: 1";
* answering the question itself (the right sum), so the judge has its own answers for self-preference.

Every example is one chat; only the reply tokens are trained (token-mean NLL, the learner's `sft_update`).
"""

from __future__ import annotations

import random
import time

import torch

from agentenv.learn.learner import LearnerConfig, make_batch, sft_update
from agentenv.rewards.judge import PairItem, get_rubric
from agentenv.rewards.judge.probes import ProbeItem, arithmetic_items
from agentenv.types import Episode, Messages, Sample

__all__ = ["train_judge", "judge_examples", "solver_chat"]

TRAIN_SEED = 10_000  # training questions; the probe set uses seed 0 (overlap of single questions is possible)


def solver_chat(question: str) -> Messages:
    return [{"role": "user", "content": question}]


def judge_examples(items: list[ProbeItem], rng: random.Random, n: int) -> list[tuple[Messages, str]]:
    """`n` (chat, reply) examples of the four tasks, mixed 4 : 2 : 2 : 1 (pairwise, with opinions, pointwise, solver)."""
    pairwise, pointwise = get_rubric("pairwise"), get_rubric("correctness")
    out = []
    for _ in range(n):
        item = rng.choice(items)
        task = rng.choices(("pairwise", "opinions", "pointwise", "solver"), weights=(4, 2, 2, 1))[0]
        if task == "solver":
            out.append((solver_chat(item.question), item.right))
        elif task == "pointwise":
            right = rng.random() < 0.5
            chat = pointwise.messages(question=item.question, response=item.right if right else item.wrong, reference="")
            out.append((chat, "Score: 10" if right else "Score: 1"))
        else:
            first = rng.random() < 0.5
            pair = PairItem(item.question, item.right, item.wrong)
            pair = pair if first else pair.swapped()
            truth = "A" if first else "B"
            opinions = ""
            if task == "opinions":
                opinions = ", ".join(truth if rng.random() < 0.7 else {"A": "B", "B": "A"}[truth] for _ in range(rng.choice((2, 3))))
            chat = pairwise.messages(opinions, question=pair.question, response_a=pair.response_a,
                                     response_b=pair.response_b, reference="")
            out.append((chat, f"[[{truth}]]"))
    return out


def _episode(chat, prompt: list[int], reply_ids: list[int]) -> Episode:
    sample = Sample(prompt_len=len(prompt))
    sample.extend(prompt, generated=False)
    sample.extend(reply_ids, generated=True)
    return Episode(0, 0, samples=[sample])


def train_judge(seed: int, steps: int = 400, batch_size: int = 32, lr: float = 3e-3, log=print):
    """A tiny model SFT'd on `judge_examples` (`steps` × `batch_size`), returned as a greedy `HFPolicy`."""
    from agentenv.policies.hf import HFPolicy
    from agentenv.policies.tiny import tiny_model

    policy = HFPolicy(tiny_model("tiny", seed=seed).train(), temperature=0.0, max_new_tokens=12, seed=seed)
    rng = random.Random(seed)
    items = arithmetic_items(2000, seed=TRAIN_SEED)
    optimizer = torch.optim.AdamW(policy.model.parameters(), lr=lr)
    cfg = LearnerConfig(micro_batch_size=64)
    start = time.perf_counter()
    for step in range(steps):
        episodes = [_episode(chat, policy.chat.prompt(chat), policy.chat.encode(reply) + [policy.chat.end_id])
                    for chat, reply in judge_examples(items, rng, batch_size)]
        loss = sft_update(policy.model, optimizer, make_batch(episodes, torch.zeros(len(episodes)), policy.chat.pad_id), cfg)
        if (step + 1) % 100 == 0 or step + 1 == steps:
            log(f"  judge seed {seed}: sft step {step + 1}/{steps} loss {loss:.3f} ({time.perf_counter() - start:.0f} s)")
    policy.model.eval()
    policy.clear_cache()
    return policy
