"""GRPO with an LLM-judge reward on ToolReasoning-v0: `python benchmarks/judge_reward_train.py`.

1. The judge: a tiny model SFT'd in-process on the judge tasks (`judge_models.train_judge`, seed 0), saved
   to `<out>/judge`; the env builds it from the spec `judge:hf:<out>/judge;rubric=correctness` (log-prob
   scoring: the expected score over "Score: 1" … "Score: 10", mapped to [0, 1]).
2. The policy: a tiny model warm-started by SFT to answer "What is a + b?" as `<answer>N</answer>`
   (demonstrations with the right sum; a 0.65 M model does not learn two-digit addition in this budget, so
   it learns the format and number-like answers).
3. `agentenv.learn.train.train` (the `agentenv train` loop: GRPO, 8 tasks × 8 samples) on ToolReasoning-v0
   with `tasks=` the synthetic questions (no tools, one turn) and `reward=` the judge spec. The reward is
   0.9 · judge score + 0.1 · format; "success" stays the exact check.

Reports the judge reward and the exact success on 200 held-out seeds (episodes the run never trains on; their
questions are drawn from the same 2,000) before and after GRPO, and wall time, in
`benchmarks/judge_reward_train.md`. Flags: --steps, --out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]  # this checkout's agentenv
from judge_models import train_judge  # noqa: E402

from agentenv.learn.learner import LearnerConfig, make_batch, sft_update  # noqa: E402
from agentenv.learn.train import TrainConfig, held_out_seeds, train  # noqa: E402
from agentenv.rewards.judge.probes import arithmetic_items  # noqa: E402
from agentenv.rollout import collect, demonstrations  # noqa: E402
from agentenv.types import Generation  # noqa: E402

ENV_ID = "agentenv/ToolReasoning-v0"
SYSTEM = "Answer with the number only, inside <answer></answer>."


class SumWriter:
    """The demonstrator for the warm start: writes the right sum (reads the two numbers of the question)."""

    def generate(self, contexts):
        out = []
        for chat in contexts:
            a, b = map(int, re.findall(r"\d+", chat[-1]["content"]))
            out.append(Generation(f"<answer>{a + b}</answer>"))
        return out


def env_kwargs(tasks, reward: str | None = None) -> dict:
    kwargs = {"tasks": tasks, "tools": [], "system_prompt": SYSTEM, "max_turns": 1}
    return kwargs | ({"reward": reward} if reward else {})


def held_out(policy, kwargs, n: int) -> dict:
    episodes = collect(ENV_ID, policy, held_out_seeds(n), group_size=1, env_kwargs=kwargs, max_seq_len=512)
    return {"judge_reward": float(np.mean([e.reward for e in episodes])),
            "judge_score": float(np.mean([e.reward_components.get("judge", 0.0) for e in episodes])),
            "success": float(np.mean([e.success for e in episodes])),
            "unparsed": float(np.mean([e.reward_components.get("judge_unparsed", 0.0) for e in episodes])),
            "even": float(np.mean([bool(re.search(r"<answer>\s*-?\d*[02468]\s*</answer>", e.messages[-1]["content"]))
                                   for e in episodes]))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--sft-steps", type=int, default=150)
    parser.add_argument("--judge-steps", type=int, default=150)
    parser.add_argument("--eval", type=int, default=200)
    parser.add_argument("--out", default="runs/judge-reward")
    parser.add_argument("--report", default=str(Path(__file__).with_name("judge_reward_train.md")))
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    started = time.perf_counter()

    judge = train_judge(0, steps=args.judge_steps)
    judge.model.save_pretrained(out / "judge")
    judge.tokenizer.save_pretrained(out / "judge")
    spec = f"judge:hf:{out / 'judge'};rubric=correctness"
    judge_s = time.perf_counter() - started

    tasks = [{"question": i.question, "answer": i.right} for i in arithmetic_items(2000, seed=20_000)]
    from agentenv.policies.hf import HFPolicy
    from agentenv.policies.tiny import tiny_model

    policy = HFPolicy(tiny_model("tiny", seed=1).train(), temperature=1.0, max_new_tokens=12, seed=1)
    demos = demonstrations(ENV_ID, 1024, policy.tokenizer, env_kwargs=env_kwargs(tasks), policy=SumWriter(), seed=7_000_000)
    optimizer = torch.optim.AdamW(policy.model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for step in range(args.sft_steps):
        pick = torch.randperm(len(demos), generator=generator)[:32].tolist()
        sft_update(policy.model, optimizer, make_batch([demos[i] for i in pick], torch.zeros(32), policy.chat.pad_id),
                   LearnerConfig(micro_batch_size=32))
    policy.model.eval()
    policy.model.save_pretrained(out / "warm_start")
    policy.tokenizer.save_pretrained(out / "warm_start")
    warm_s = time.perf_counter() - started - judge_s

    kwargs = env_kwargs(tasks, spec)
    policy.clear_cache()
    before = held_out(policy, kwargs, args.eval)
    print("before", before, flush=True)
    cfg = TrainConfig(env_id=ENV_ID, env_kwargs=kwargs, model=str(out / "warm_start"), device="cpu", seed=0, steps=args.steps,
                      max_new_tokens=12, max_seq_len=512, sft_steps=0, eval_tasks=0, checkpoint_every=args.steps,
                      out_dir=str(out / "grpo"), learner=LearnerConfig(lr=3e-4, micro_batch_size=64))
    t0 = time.perf_counter()
    train(cfg)
    grpo_s = time.perf_counter() - t0
    state = torch.load(out / "grpo" / "checkpoint" / "state.pt", weights_only=False)
    policy.model.load_state_dict(state["model"])
    policy.clear_cache()
    after = held_out(policy, kwargs, args.eval)
    print("after", after, flush=True)
    rows = [json.loads(line) for line in (out / "grpo" / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[:5], rows[-5:]
    wall = time.perf_counter() - started
    report = f"""# GRPO with an LLM-judge reward (ToolReasoning-v0)

`python benchmarks/judge_reward_train.py` (1 torch thread, shared 2-core machine). Wall time {wall / 60:.1f} min:
judge SFT {judge_s:.0f} s, policy warm start {warm_s:.0f} s, {args.steps} GRPO steps {grpo_s:.0f} s (8 tasks × 8 samples,
lr 3e-4, the judge scoring every episode).

Env: `gym.make("agentenv/ToolReasoning-v0", tasks=<"What is a + b?" questions>, tools=[], max_turns=1,
reward="{spec}")`. The judge is a tiny model SFT'd {args.judge_steps} steps (`benchmarks/judge_models.py`), scoring
by log-probs (expected score over "Score: 1" … "Score: 10"). Reward = 0.9 · judge score + 0.1 · format;
success = the exact check (the sum), which the judge never sees.

| {args.eval} held-out seeds (sampling at T = 1) | after warm start | after GRPO |
|---|---|---|
| reward (judge) | {before['judge_reward']:.3f} | {after['judge_reward']:.3f} |
| judge score | {before['judge_score']:.3f} | {after['judge_score']:.3f} |
| exact success | {before['success']:.3f} | {after['success']:.3f} |
| unparsed judge replies | {before['unparsed']:.3f} | {after['unparsed']:.3f} |
| answers ending in an even digit | {before['even']:.3f} | {after['even']:.3f} |

Training rollouts: mean reward {np.mean([r['reward_mean'] for r in first]):.3f} over the first 5 steps, {np.mean([r['reward_mean'] for r in last]):.3f}
over the last 5; exact success {np.mean([r['success_rate'] for r in first]):.3f} → {np.mean([r['success_rate'] for r in last]):.3f}.

The reading below is written by hand from this run (deterministic: seeded data, init and sampling, one thread).
"""
    Path(args.report).write_text(report, encoding="utf-8")
    print(report)


if __name__ == "__main__":
    main()
