"""One GRPO update side by side: agentenv's learner vs TRL's GRPOTrainer loss/update path, same run.

Workload (the peer anchor's, `shared/bench/trl_cpu_anchor.py`): a random-init Qwen2-shaped model (hidden 256,
4 layers, 4 heads, 2 KV heads, MLP 1024, untied head, the shipped 1,250-token tiny tokenizer), 4 prompts × 8
completions = 32 rows, completions of 32–64 tokens (64 = max_completion_length; shorter ones end with
`<|im_end|>`), binary rewards → GRPO advantages. Two prompt sets:

* `toolreasoning`: the real ToolReasoning-v0 prompts (system prompt with tool schemas + question, ~405
  tokens each), i.e. what `agentenv train` feeds the learner;
* `short`: one-line "What is a + b?" user turns (~15 tokens), the anchor's prompts.

One update = forward + backward + grad clip (1.0) + AdamW step (lr 1e-4, no weight decay), DAPO-style loss
(token-level PPO clip, ε_low 0.2, ε_high 0.28, token-mean over the batch, β = 0, on-policy: π_old = π_θ
detached), all 32 rows in one micro-batch on both sides. Both sides load the same saved weights and get the
same token ids, masks and advantages; each starts from those weights with a fresh optimizer, so the first
update's loss and grad norm must agree (printed as a check).

* ours: `agentenv.learn.learner.update` on the `Batch` from `make_batch` (built once, untimed);
* TRL: `benchmarks/trl_learner.py` in the TRL venv (`bash benchmarks/setup_trl.sh` builds `.venv-trl`), a
  persistent subprocess that runs `GRPOTrainer.training_step` (TRL's `_compute_loss` with its fused chunked
  LM head) + `_clip_grad_norm` + optimizer/scheduler step + `zero_grad` per `step` command.

A third side, `ours_noshare`, is our learner with the shared-prompt forward off (`share_prefix=0`): the 8
completions of a prompt then each run the prompt through the model again, as TRL does, so that column shows
how much of the gap that one optimisation accounts for.

Every side uses ONE torch thread (`torch.set_num_threads(1)`, `OMP_NUM_THREADS=1`) and only one runs at a
time: the updates are interleaved, the order rotating every round (warm-up rounds first, untimed), and the
table reports medians. tokens/s counts the real (unpadded) prompt + completion tokens of the batch per update.

    python benchmarks/bench_learner.py [--quick] [--repeats N] [--workloads toolreasoning,short] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
TRL_PYTHON = ROOT / ".venv-trl" / "bin" / "python"
DEFAULT_JSON = ROOT / "benchmarks" / "results_learner.json"

PROMPTS, GROUP, MAX_NEW, MIN_NEW = 4, 8, 64, 32
MODEL = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=1024)
LR, EPS_LOW, EPS_HIGH, MAX_GRAD_NORM, TEMPERATURE = 1e-4, 0.2, 0.28, 1.0, 1.0


def _threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


def build_model(path: Path):
    """The random-init model, saved to `path` (both sides load it from there)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from agentenv.policies.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    config = Qwen2Config(vocab_size=len(tok), max_position_embeddings=1024, tie_word_embeddings=False,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, use_cache=False, **MODEL)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(str(path))
    return sum(p.numel() for p in model.parameters())


def build_prompts(kind: str) -> list[list[int]]:
    import gymnasium as gym

    import agentenv  # noqa: F401 - registers the envs
    from agentenv.policies.chat_tokens import ChatTokens
    from agentenv.policies.tiny import tiny_tokenizer

    chat = ChatTokens(tiny_tokenizer())
    if kind == "toolreasoning":
        env = gym.make("agentenv/ToolReasoning-v0")
        prompts = [chat.prompt(env.reset(seed=seed)[0]) for seed in range(PROMPTS)]
        env.close()
        return prompts
    if kind == "short":
        return [chat.prompt([{"role": "user", "content": f"What is {a} + {b}?"}]) for a, b in [(3, 4), (17, 25), (40, 2), (9, 58)]]
    raise ValueError(f"unknown workload {kind!r}: toolreasoning | short")


def build_workload(kind: str, seed: int = 0) -> dict:
    """Prompt ids, completion ids, rewards and GRPO advantages for 4 prompts × 8 completions."""
    import torch

    from agentenv.learn import objectives as F
    from agentenv.policies.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    end_id, pad_id = tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id
    special = set(tok.all_special_ids) | {end_id, pad_id}
    ordinary = torch.tensor([i for i in range(len(tok)) if i not in special])
    g = torch.Generator().manual_seed(seed)
    prompts = build_prompts(kind)
    rows = []
    for p, prompt in enumerate(prompts):
        for _ in range(GROUP):
            n = int(torch.randint(MIN_NEW, MAX_NEW + 1, (1,), generator=g))
            ids = ordinary[torch.randint(len(ordinary), (n,), generator=g)].tolist()
            if n < MAX_NEW:
                ids[-1] = end_id  # finished turns end with the end-of-turn id; full-length ones are truncated
            rows.append((p, prompt, ids))
    rewards = torch.bernoulli(torch.full((len(rows),), 0.5), generator=g)
    groups = torch.tensor([p for p, _, _ in rows])
    advantages = F.grpo_advantages(rewards, groups, scale="group", std="unbiased", eps=1e-4).float()  # TRL's eps
    return {"rows": rows, "rewards": rewards, "advantages": advantages, "pad_id": pad_id}


def trl_inputs(work: dict):
    """TRL's batch dict: left-padded prompts, right-padded completions (what `_generate_and_score_completions` returns)."""
    import torch

    rows, pad = work["rows"], work["pad_id"]
    width_p = max(len(prompt) for _, prompt, _ in rows)
    b = len(rows)
    prompt_ids = torch.full((b, width_p), pad, dtype=torch.long)
    prompt_mask = torch.zeros((b, width_p), dtype=torch.long)
    completion_ids = torch.full((b, MAX_NEW), pad, dtype=torch.long)
    completion_mask = torch.zeros((b, MAX_NEW), dtype=torch.long)
    for i, (_, prompt, ids) in enumerate(rows):
        prompt_ids[i, width_p - len(prompt):] = torch.tensor(prompt)
        prompt_mask[i, width_p - len(prompt):] = 1
        completion_ids[i, : len(ids)] = torch.tensor(ids)
        completion_mask[i, : len(ids)] = 1
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
            "completion_mask": completion_mask, "advantages": work["advantages"].clone(),
            "num_items_in_batch": completion_mask.sum().float()}


def our_batch(work: dict):
    """Our `Batch`, through the same `make_batch` the trainer uses (one Episode per completion)."""
    from agentenv.learn.learner import make_batch

    episodes = []
    for p, prompt, ids in work["rows"]:
        sample = SimpleNamespace(token_ids=prompt + ids, loss_mask=[0] * len(prompt) + [1] * len(ids),
                                 old_logprobs=[0.0] * (len(prompt) + len(ids)), control_mask=None)
        episodes.append(SimpleNamespace(samples=[sample], group_id=p))
    return make_batch(episodes, work["advantages"], work["pad_id"])


class TRLWorker:
    """The persistent TRL subprocess: `step()` runs one timed update there and returns its JSON reply."""

    def __init__(self, workdir: Path, threads: int):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
                   PYTHONWARNINGS="ignore")
        self.proc = subprocess.Popen([str(TRL_PYTHON), str(ROOT / "benchmarks" / "trl_learner.py"), str(workdir),
                                      "--threads", str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.info = self._read()

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"TRL worker exited: {self.proc.stderr.read()[-3000:]}")
            if line.startswith("{"):
                return json.loads(line)

    def step(self) -> dict:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=30)
        except Exception:
            self.proc.kill()


def run_workload(kind: str, model_dir: Path, workdir: Path, threads: int, warmup: int, repeats: int) -> dict:
    import torch
    from transformers import Qwen2ForCausalLM

    from agentenv.learn.learner import LearnerConfig, update

    work = build_workload(kind)
    torch.save(trl_inputs(work), workdir / "trl_inputs.pt")
    batch = our_batch(work)
    prompt_tokens = sum(len(prompt) for _, prompt, _ in work["rows"])
    completion_tokens = sum(len(ids) for _, _, ids in work["rows"])
    tokens = prompt_tokens + completion_tokens

    trl = TRLWorker(workdir, threads)

    def learner(share_prefix: int):
        """One of our sides: its own copy of the weights and optimizer, so every side's updates start alike."""
        model = Qwen2ForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, local_files_only=True)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
        cfg = LearnerConfig(eps_low=EPS_LOW, eps_high=EPS_HIGH, aggregation="token-mean", lr=LR, max_grad_norm=MAX_GRAD_NORM,
                            micro_batch_size=len(batch), temperature=TEMPERATURE, share_prefix=share_prefix)

        def step() -> dict:
            t0 = time.perf_counter()
            metrics = update(model, optimizer, batch, cfg)
            return {"seconds": time.perf_counter() - t0, "loss": metrics["loss"], "grad_norm": metrics["grad_norm"]}

        return step

    # "ours": the learner as `agentenv train` runs it; "ours_noshare": the same with the shared-prompt forward
    # off (LearnerConfig.share_prefix=0), to show what that one optimisation accounts for.
    sides = [("ours", learner(LearnerConfig.share_prefix)), ("ours_noshare", learner(0)), ("trl", trl.step)]
    times = {name: [] for name, _ in sides}
    first = {}
    try:
        for i in range(warmup + repeats):
            order = sides[i % len(sides):] + sides[: i % len(sides)]  # rotate: no side always runs after another
            last = {}
            for name, fn in order:
                last[name] = result = fn()
                if i == 0:
                    first[name] = result
                if i >= warmup:
                    times[name].append(result["seconds"])
            print(f"  [{kind}] update {i + 1}/{warmup + repeats}: " + ", ".join(f"{n} {last[n]['seconds']:.3f} s" for n, _ in sides)
                  + (" (warm-up)" if i < warmup else ""), file=sys.stderr, flush=True)
    finally:
        trl.close()
    med = {name: statistics.median(values) for name, values in times.items()}
    rel = lambda a, b: abs(a - b) / max(abs(b), 1e-12)  # noqa: E731
    return {
        "workload": kind, "rows": len(work["rows"]), "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "tokens": tokens, **{f"{n}_seconds": times[n] for n in times}, **{f"{n}_median_s": med[n] for n in med},
        **{f"{n}_tokens_per_s": tokens / med[n] for n in med},
        **{f"{n}_completion_tokens_per_s": completion_tokens / med[n] for n in med},
        "speedup": med["trl"] / med["ours"], "speedup_noshare": med["trl"] / med["ours_noshare"],
        "first_update": {**{f"{n}_loss": first[n]["loss"] for n in first}, **{f"{n}_grad_norm": first[n]["grad_norm"] for n in first},
                         "grad_norm_rel_diff": rel(first["ours"]["grad_norm"], first["trl"]["grad_norm"]),
                         "grad_norm_rel_diff_noshare": rel(first["ours_noshare"]["grad_norm"], first["trl"]["grad_norm"])},
        "trl_info": trl.info,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 warm-up + 3 timed updates per side (smoke run)")
    parser.add_argument("--repeats", type=int, default=9, help="timed updates per side (default 9)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed updates per side first (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on both sides (default 1)")
    parser.add_argument("--workloads", default="toolreasoning,short", help="comma-separated: toolreasoning, short")
    parser.add_argument("--json", default=str(DEFAULT_JSON), help=f"write the results here (default {DEFAULT_JSON.relative_to(ROOT)}; '' to skip)")
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.repeats = 1, 3
    _threads(args.threads)
    if not TRL_PYTHON.exists():
        raise SystemExit(f"TRL is not installed: run `bash benchmarks/setup_trl.sh` to create {TRL_PYTHON.parent.parent}")

    import torch
    import transformers

    from agentenv.policies.tiny import TINY_TOKENIZER_DIR, tiny_tokenizer

    torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory(prefix="agentenv-bench-learner-") as tmp:
        workdir = Path(tmp)
        params = build_model(workdir / "model")
        (workdir / "config.json").write_text(json.dumps({
            "tokenizer_dir": str(TINY_TOKENIZER_DIR), "group_size": GROUP, "lr": LR, "eps_low": EPS_LOW,
            "eps_high": EPS_HIGH, "max_grad_norm": MAX_GRAD_NORM, "temperature": TEMPERATURE}))
        for kind in [k.strip() for k in args.workloads.split(",") if k.strip()]:
            results.append(run_workload(kind, workdir / "model", workdir, args.threads, args.warmup, args.repeats))

    trl_version = results[0]["trl_info"]["trl"] if results else None
    print(f"\nOne GRPO update (fwd+bwd+clip+AdamW), {params / 1e6:.2f} M-param Qwen2, {PROMPTS}×{GROUP} rows, "
          f"{args.threads} torch thread(s), median of {args.repeats} interleaved updates per side")
    print(f"agentenv (torch {torch.__version__}, transformers {transformers.__version__}) vs TRL {trl_version}\n")
    head = (f"{'workload':<14} {'tokens':>7} {'ours s':>8} {'TRL s':>8} {'ours tok/s':>11} {'TRL tok/s':>10} "
            f"{'ours/TRL':>9} {'no-share tok/s':>15} {'no-share/TRL':>13} {'check':>8}")
    print(head)
    print("-" * len(head))
    for r in results:
        print(f"{r['workload']:<14} {r['tokens']:>7} {r['ours_median_s']:>8.3f} {r['trl_median_s']:>8.3f} "
              f"{r['ours_tokens_per_s']:>11.0f} {r['trl_tokens_per_s']:>10.0f} {r['speedup']:>8.2f}x "
              f"{r['ours_noshare_tokens_per_s']:>15.0f} {r['speedup_noshare']:>12.2f}x "
              f"{max(r['first_update']['grad_norm_rel_diff'], r['first_update']['grad_norm_rel_diff_noshare']):>8.1e}")
    print("(tokens: real prompt+completion tokens per update; ours/TRL > 1: ours is that many times faster; no-share: ours "
          "with the shared-prompt forward off (share_prefix=0); check: relative grad-norm difference to TRL on the first "
          "update, from identical weights)")
    if args.json:
        out = {
            "what": "tokens/s of one GRPO update (forward+backward+grad clip+AdamW step), agentenv vs TRL, same run",
            "method": ("same saved weights and token tensors on every side; 1 torch thread each; updates interleaved "
                       "(order rotating every round) after untimed warm-up rounds; medians; TRL path = GRPOTrainer.training_step (dapo loss, fused "
                       "chunked LM head) + _clip_grad_norm + optimizer/scheduler step, generation bypassed, gradient "
                       "checkpointing off"),
            "model": {**MODEL, "vocab_size": len(tiny_tokenizer()), "params": params, "tie_word_embeddings": False},
            "batch": {"prompts": PROMPTS, "group": GROUP, "max_new_tokens": MAX_NEW, "min_new_tokens": MIN_NEW},
            "threads": args.threads, "warmup": args.warmup, "repeats": args.repeats,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl_version},
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
            "results": results,
        }
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
