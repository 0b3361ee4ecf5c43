"""Generation speed of HFPolicy's sampling loop vs `model.generate(output_scores=True)`, tiny models, CPU.

    python benchmarks/bench_generation.py [--threads 1] [--batch 16] [--new-tokens 128] [--turns 3]

Prompts are ToolReasoning-v0 opening chats (~225 tokens). Both paths sample at temperature 1 with the same
limits; the model is random, so nearly every row runs to the token limit. Reports generated tokens/s
(best of `--repeats`).

Multi-turn (`--turns`): `--batch` episodes (`--group` samples of each prompt) continue for `--turns` turns, each
turn's prompt = the last one + its generation + a fixed 30-id env message, as `rollout.collect` resubmits them:
HFPolicy with the prefix cache (default) vs `prefix_cache=False` (every turn re-runs every whole sequence).
Reports tokens/s and the prompt ids each ran through the model (`HFPolicy.stats`).

On a 2-vCPU sandbox, torch's default two OpenMP threads can stall for ~16 ms per small matmul (spinning
threads descheduled); run with `--threads 1` or with `OMP_WAIT_POLICY=passive` in the environment.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's agentenv

import gymnasium as gym
import torch

import agentenv  # noqa: F401 - registers the envs
from agentenv.policies.hf import HFPolicy


def own_loop(policy: HFPolicy, prompts: list[list[int]], new_tokens: int) -> int:
    return sum(len(g.token_ids) for g in policy.generate_ids(prompts, max_new_tokens=new_tokens))


def hf_generate(policy: HFPolicy, prompts: list[list[int]], new_tokens: int, full_length: bool = False) -> int:
    """`model.generate` with the sampled tokens' log-probs; `full_length`: every row makes exactly `new_tokens`
    (no end-of-turn stop), as an engine that ignores EOS does."""
    pad, width = policy.chat.pad_id, max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    attention = (ids != pad).long()
    out = policy.model.generate(
        input_ids=ids, attention_mask=attention, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
        max_new_tokens=new_tokens, min_new_tokens=new_tokens if full_length else None, output_scores=True,
        return_dict_in_generate=True, pad_token_id=pad, eos_token_id=None if full_length else policy.chat.end_id,
    )
    new = out.sequences[:, width:]
    scores = torch.stack(out.scores, dim=1).log_softmax(-1)  # the logprob of each sampled token needs this pass
    scores.gather(-1, new[..., None])
    return int(new.numel()) if full_length else int((new != pad).sum())


def multi_turn(policy: HFPolicy, prompts: list[list[int]], new_tokens: int, turns: int, group: int) -> int:
    """`turns` rounds of generation, each continuing every episode's whole sequence (+ an env message)."""
    env_message = policy.render_delta([{"role": "user", "content": "Error: no tool call found. " * 2}])[:30]
    sequences = [p for p in prompts for _ in range(group)]
    generated = 0
    for _ in range(turns):
        gens = policy.generate_ids(sequences, max_new_tokens=new_tokens)
        generated += sum(len(g.token_ids) for g in gens)
        sequences = [s + g.token_ids + ([] if g.finish_reason == "stop" else [policy.chat.end_id]) + env_message
                     for s, g in zip(sequences, gens)]
    return generated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    parser.add_argument("--turns", type=int, default=3, help="multi-turn section: turns per episode (0 skips it)")
    parser.add_argument("--group", type=int, default=4, help="multi-turn section: samples per prompt")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    env = gym.make("agentenv/ToolReasoning-v0", tools=["calculator"])
    contexts = [env.reset(seed=i)[0] for i in range(args.batch)]
    print(f"torch threads {torch.get_num_threads()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, batch {args.batch}, {args.new_tokens} new tokens")
    for size in args.sizes:
        policy = HFPolicy(size, max_new_tokens=args.new_tokens)
        prompts = [policy.render_prompt(c) for c in contexts]
        for name, run in (("HFPolicy loop", own_loop), ("model.generate", hf_generate)):
            torch.manual_seed(0)
            run(policy, prompts, 4)  # warm-up
            best = 0.0
            for _ in range(args.repeats):
                start = time.perf_counter()
                tokens = run(policy, prompts, args.new_tokens)
                best = max(best, tokens / (time.perf_counter() - start))
            print(f"{size:6s} {name:15s} {best:8.0f} tokens/s")
    if args.turns <= 0:
        return
    unique = max(1, args.batch // args.group)
    print(f"\nmulti-turn: {unique} prompts × {args.group} samples, {args.turns} turns of up to {args.new_tokens // 2} tokens")
    for size in args.sizes:
        for cache in (False, True):
            policy = HFPolicy(size, max_new_tokens=args.new_tokens, prefix_cache=cache)
            prompts = [policy.render_prompt(c) for c in contexts[:unique]]
            multi_turn(policy, prompts, 4, 2, args.group)  # warm-up
            best, stats = 0.0, {}
            for _ in range(args.repeats):
                policy.reset_stats()
                start = time.perf_counter()
                tokens = multi_turn(policy, prompts, args.new_tokens // 2, args.turns, args.group)
                rate = tokens / (time.perf_counter() - start)
                if rate > best:
                    best, stats = rate, dict(policy.stats)
            name = "prefix cache" if cache else "no prefix cache"
            print(f"{size:6s} {name:15s} {best:8.0f} tokens/s  prompt ids run {stats['prefill_tokens']:>6} of "
                  f"{stats['prompt_tokens']:>6} submitted, {stats['generated_tokens']} generated")


if __name__ == "__main__":
    main()
