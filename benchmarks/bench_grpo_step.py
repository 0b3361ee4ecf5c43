"""One whole GRPO step side by side — generation + rewards + advantages + update — agentenv vs TRL 1.16, same run.

    python benchmarks/bench_grpo_step.py [--quick] [--repeats N] [--warmup N] [--workloads anchor,tool4] [--json OUT]

TRL runs in its own venv (`bash benchmarks/setup_trl.sh` builds `.venv-trl`; this script checks that its torch
and transformers versions are the project venv's) as a persistent subprocess: this same file, run by the TRL
interpreter with `--trl-worker`. Each side has its own copy of the same saved weights and its own optimizer, one
torch thread (`OMP_NUM_THREADS=1`), and only one side runs at a time: steps are interleaved, the order rotating
every round, warm-up rounds untimed, medians reported. Step k of every side trains on the same tasks. Both wall
seconds and process CPU seconds are recorded (the box has 2 cores shared with other jobs; `os.getloadavg()` is
printed with each workload), and the ratio is TRL's time over ours (> 1: ours is faster).

Sides:
* `ours`: `HFPolicy` (prefix cache on, the default) → `rollout.collect` → `episode_advantages` → `make_batch` →
  `learner.update` (up to all 32 rows per micro-batch, like TRL's per-device batch, and the learner's default
  token budget of 4,096 padded tokens per micro-batch: tool4's ~560-token rows run 7 at a time);
* `ours_nocache`: the same with `HFPolicy(prefix_cache=False)`: every turn re-runs every whole sequence and a
  group's prompt runs G times — the engine before the prefix cache, for the before/after;
* `trl`: TRL's `GRPOTrainer.train()` loop, timed from `on_step_begin` to `on_step_end` as
  `shared/bench/trl_cpu_anchor.py` does: generation (`model.generate`), rewards, advantages, one
  forward/backward (`loss_type="dapo"`, β = 0, one iteration: no old-log-prob pass), grad clip, AdamW.
* `trl_mb8`: the same TRL step with 8 rows per forward/backward and 4 accumulated (`per_device_train_batch_size=8,
  gradient_accumulation_steps=4`: still one generation of 32 and one optimizer step), TRL's own way to bound a
  micro-batch; the fair peer for our token budget. Ratios are given against both TRL sides.

Workloads:
* `anchor` — `shared/bench/trl_cpu_anchor.py`'s: a random-init Qwen2 (hidden 256, 4 layers, 4 heads, 2 KV heads,
  MLP 1024, untied head) with the anchor's byte-level BPE tokenizer (512 ids, trained here the same way), 4
  prompts "What is a + b?" × 8 completions of up to 64 tokens (temperature 1; a random model nearly never emits
  `<eos>`), reward = the answer appears in the completion. Single turn: the prompts are ~8 tokens, so the prefix
  cache has almost nothing to save here; what differs is the sampling loop and the update.
* `tool4` — ToolReasoning-v0 with the calculator, 4 turns: the same Qwen2 shape with the project's tiny ChatML
  tokenizer (1,250 ids), `agentenv train`'s env settings (counting tasks, difficulty 1) with `max_turns=4`, 4
  tasks × 8 samples, up to 48 new tokens a turn, the env's reward. A random model never answers, so every episode
  runs 4 turns; the env appends its error/usage message after each turn (the tokens a tool result would take).
  TRL's GRPOTrainer generates single-turn; its multi-turn path (`_tool_call_loop`, and `rollout_func` for custom
  envs) re-generates each turn from the whole concatenated context `prompt + completion + tool ids` with a new
  `model.generate` call (a fresh KV cache, the full context prefilled), which is what our engine did before the
  prefix cache. So TRL's side here is TRL's `rollout_func` hook driving *our* rollout loop (`rollout.collect`
  in this process, same env, same per-turn limit, ids appended, never re-tokenized), with every turn's generation
  done by TRL's own `_generate_single_turn` in the TRL process; TRL then scores (the env's reward), computes
  advantages and runs its update on prompt + completion with the env tokens masked out (`env_mask`). TRL's time
  includes the env steps run here on its behalf (its wall clock waits for them; their CPU seconds are added).

What is *not* compared: vLLM or paged generation (neither side uses one on CPU); TRL's multi-turn tool parsing
(a random model emits no parseable tool call, so `tools=` alone would never run a second turn).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRL_PYTHON = ROOT / ".venv-trl" / "bin" / "python"

PROMPTS, GROUP, LR, EPS_LOW, EPS_HIGH, MAX_GRAD_NORM = 4, 8, 1e-4, 0.2, 0.28, 1.0
MODEL = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
ANCHOR_NEW_TOKENS = 64
TOOL_ENV = "agentenv/ToolReasoning-v0"
TOOL_ENV_KWARGS = {"tools": ["calculator"], "kinds": ["counting"], "difficulty": 1, "max_turns": 4}
TOOL_NEW_TOKENS, TOOL_MAX_SEQ_LEN = 48, 1024
TRL_MICRO = 8  # the second TRL side: 8 rows per forward/backward, 4 accumulated (one generation, one optimizer step)


def _threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def anchor_rows() -> list[dict[str, str]]:
    """The anchor's dataset, in its order (a in 0..19, b in 0..9); both sides take 4 rows per step, unshuffled."""
    return [{"prompt": f"What is {a} + {b}?", "answer": str(a + b)} for a in range(20) for b in range(10)]


def anchor_reward(completions: list[str], answer: list[str], **_: object) -> list[float]:
    return [1.0 if a in c else 0.0 for c, a in zip(completions, answer)]


# -- the parent (project venv) ----------------------------------------------------------------------


def build_anchor_tokenizer(path: Path):
    """The anchor's tokenizer (same corpus, trainer and specials), saved to `path` for both sides."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [f"What is {a} + {b}? The answer is {a + b}." for a in range(60) for b in range(60)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=512, special_tokens=["<pad>", "<eos>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    hf_tok.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    hf_tok.save_pretrained(str(path))
    return hf_tok


def build_model(path: Path, tokenizer) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("qwen2", vocab_size=len(tokenizer), max_position_embeddings=2048,
                                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **MODEL)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(str(path))
    return sum(p.numel() for p in model.parameters())


class TRLWorker:
    """This file under the TRL interpreter (`--trl-worker`): one JSON line per message each way on its stdin and
    on a dedicated stdout; everything else it prints goes to `log`."""

    def __init__(self, workdir: Path, workload: str, threads: int, micro: int):
        self.log = open(workdir / f"trl_{workload}_{micro}.log", "w")
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
                   PYTHONWARNINGS="ignore", TRL_EXPERIMENTAL_SILENCE="1", TOKENIZERS_PARALLELISM="false")
        self.proc = subprocess.Popen([str(TRL_PYTHON), str(Path(__file__).resolve()), "--trl-worker", str(workdir), workload,
                                      "--threads", str(threads), "--micro", str(micro)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, env=env)
        self.info = self.recv()

    def send(self, message) -> None:
        self.proc.stdin.write((message if isinstance(message, str) else json.dumps(message)) + "\n")
        self.proc.stdin.flush()

    def recv(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.log.flush()
            raise RuntimeError(f"TRL worker exited: {Path(self.log.name).read_text()[-3000:]}")
        return json.loads(line)

    def close(self) -> None:
        try:
            self.send("quit")
            self.proc.wait(timeout=30)
        except Exception:
            self.proc.kill()
        self.log.close()


class TRLGeneration:
    """A token policy for `rollout.collect` whose every turn is generated by TRL (`_generate_single_turn` in the
    worker, from the whole context): our rollout loop, TRL's generation."""

    def __init__(self, worker: TRLWorker, chat, max_new_tokens: int):
        self.worker, self.chat, self.max_new_tokens = worker, chat, max_new_tokens
        self.prompt_tokens = self.generated_tokens = 0

    def generate_ids(self, prompts, max_new_tokens=None):
        from agentenv.types import Generation

        prompts = [list(p) for p in prompts]
        limits = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens or self.max_new_tokens] * len(prompts)
        self.worker.send({"generate": prompts})
        out = []
        for prompt, ids, limit in zip(prompts, self.worker.recv()["ids"], limits):
            ids = ids[:limit]
            stopped = bool(ids) and ids[-1] == self.chat.end_id
            out.append(Generation(self.chat.decode(ids[:-1] if stopped else ids), ids, [0.0] * len(ids), prompt,
                                  "stop" if stopped else "length"))
        self.prompt_tokens += sum(len(p) for p in prompts)
        self.generated_tokens += sum(len(g.token_ids) for g in out)
        return out


def tool_seeds(step: int) -> list[int]:
    return [step * PROMPTS + i for i in range(PROMPTS)]


def run_workload(kind: str, workdir: Path, threads: int, warmup: int, repeats: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from agentenv.learn.learner import LearnerConfig, episode_advantages, make_batch, update
    from agentenv.policies.chat_tokens import ChatTokens
    from agentenv.policies.hf import HFPolicy
    from agentenv.policies.tiny import tiny_tokenizer
    from agentenv.rollout import collect
    from agentenv.types import Episode, Sample

    if kind == "anchor":
        tokenizer = build_anchor_tokenizer(workdir / "tokenizer_anchor")
        # ChatTokens (ours) needs a template that closes a turn with the end id; the anchor's renders only
        # "{content}\n". Nothing here renders chats (the prompts are the anchor's raw strings, tokenized as TRL
        # does), so the copy only tells HFPolicy which id ends a turn: <eos>, TRL's eos too.
        ours_tok = PreTrainedTokenizerFast.from_pretrained(str(workdir / "tokenizer_anchor"))
        ours_tok.chat_template = "{% for m in messages %}{{ m['content'] }}<eos>\n{% endfor %}"
        rows = anchor_rows()
    elif kind == "tool4":
        tokenizer = ours_tok = tiny_tokenizer()
        tokenizer.save_pretrained(str(workdir / "tokenizer_tool4"))
    else:
        raise ValueError(f"unknown workload {kind!r}: anchor | tool4")
    params = build_model(workdir / f"model_{kind}", tokenizer)
    new_tokens = ANCHOR_NEW_TOKENS if kind == "anchor" else TOOL_NEW_TOKENS
    load_before = os.getloadavg()
    trl = TRLWorker(workdir, kind, threads, PROMPTS * GROUP)
    trl_micro = TRLWorker(workdir, kind, threads, TRL_MICRO)

    def our_side(prefix_cache: bool):
        model = AutoModelForCausalLM.from_pretrained(str(workdir / f"model_{kind}"), dtype=torch.float32, local_files_only=True)
        policy = HFPolicy(model, ours_tok, temperature=1.0, top_p=1.0, max_new_tokens=new_tokens, seed=0, prefix_cache=prefix_cache)
        optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
        cfg = LearnerConfig(eps_low=EPS_LOW, eps_high=EPS_HIGH, aggregation="token-mean", lr=LR, max_grad_norm=MAX_GRAD_NORM,
                            micro_batch_size=PROMPTS * GROUP, adv_eps=1e-4)
        counter = {"step": 0}

        def step() -> dict:
            k = counter["step"]
            counter["step"] += 1
            before = dict(policy.stats)
            wall, cpu = _clock()
            if kind == "anchor":
                chosen = rows[k * PROMPTS : (k + 1) * PROMPTS]
                prompt_ids = [tokenizer(r["prompt"])["input_ids"] for r in chosen]
                gens = policy.generate_ids([p for p in prompt_ids for _ in range(GROUP)])
                texts = tokenizer.batch_decode([g.token_ids for g in gens], skip_special_tokens=True)
                rewards = anchor_reward(texts, [r["answer"] for r in chosen for _ in range(GROUP)])
                episodes = []
                for i, (g, reward) in enumerate(zip(gens, rewards)):
                    sample = Sample(prompt_len=len(g.prompt_ids))
                    sample.extend(g.prompt_ids, generated=False)
                    sample.extend(g.token_ids, generated=True, logprobs=g.logprobs)
                    episodes.append(Episode(i // GROUP, i // GROUP, index=i, samples=[sample], reward=reward))
            else:
                episodes = collect(TOOL_ENV, policy, tool_seeds(k), group_size=GROUP, env_kwargs=TOOL_ENV_KWARGS,
                                   max_seq_len=TOOL_MAX_SEQ_LEN)
            rollout_wall, rollout_cpu = time.perf_counter() - wall, time.process_time() - cpu
            adv = episode_advantages(episodes, cfg)
            batch = make_batch(episodes, adv, policy.chat.pad_id)
            update(model, optimizer, batch, cfg)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            return {"seconds": wall, "cpu": cpu, "rollout_seconds": rollout_wall, "rollout_cpu": rollout_cpu,
                    "learn_seconds": wall - rollout_wall, "prompt_tokens_run": policy.stats["prefill_tokens"] - before["prefill_tokens"],
                    "generated": policy.stats["generated_tokens"] - before["generated_tokens"],
                    "turns": sum(len(e.turns) for e in episodes) if kind == "tool4" else len(episodes)}

        return step

    def trl_side(trl: TRLWorker):
        """One GRPO step of a TRL worker (with our rollout loop serving its tool4 turns)."""
        remote = TRLGeneration(trl, ChatTokens(ours_tok), new_tokens)

        def trl_step() -> dict:
            cpu = time.process_time()
            prompt_before, generated_before = remote.prompt_tokens, remote.generated_tokens
            trl.send("step")
            turns = 0
            while True:
                message = trl.recv()
                if message.get("request") == "rollout":  # TRL's rollout_func asks us to run the env with its generation
                    seeds = message["seeds"]
                    unique = seeds[::GROUP]
                    assert seeds == [s for s in unique for _ in range(GROUP)], "TRL's sampler did not group the prompts"
                    episodes = collect(TOOL_ENV, remote, unique, group_size=GROUP, env_kwargs=TOOL_ENV_KWARGS,
                                       max_seq_len=TOOL_MAX_SEQ_LEN)
                    turns = sum(len(e.turns) for e in episodes)
                    samples = [e.samples[0] for e in episodes]  # the env never rewrites history: one sample each
                    trl.send({"prompt_ids": [s.token_ids[: s.prompt_len] for s in samples],
                              "completion_ids": [s.token_ids[s.prompt_len :] for s in samples],
                              "env_mask": [s.loss_mask[s.prompt_len :] for s in samples],
                              "env_reward": [e.reward for e in episodes]})
                elif "seconds" in message:
                    break
            if kind == "anchor":
                prompt_run, generated, turns = message["prompt_tokens_run"], message["generated"], PROMPTS * GROUP
            else:
                prompt_run, generated = remote.prompt_tokens - prompt_before, remote.generated_tokens - generated_before
            parent_cpu = time.process_time() - cpu  # the env steps and rollout loop run here on TRL's behalf
            return {"seconds": message["seconds"], "cpu": message["cpu"] + parent_cpu,
                    "rollout_seconds": message["rollout_seconds"], "rollout_cpu": message["rollout_cpu"] + parent_cpu,
                    "learn_seconds": message["seconds"] - message["rollout_seconds"],
                    "prompt_tokens_run": prompt_run, "generated": generated, "turns": turns}

        return trl_step

    sides = [("ours", our_side(True)), ("ours_nocache", our_side(False)), ("trl", trl_side(trl)),
             (f"trl_mb{TRL_MICRO}", trl_side(trl_micro))]
    results: dict[str, list[dict]] = {name: [] for name, _ in sides}
    try:
        for i in range(warmup + repeats):
            order = sides[i % len(sides):] + sides[: i % len(sides)]  # rotate: no side always runs after another
            last = {}
            for name, fn in order:
                last[name] = fn()
                if i >= warmup:
                    results[name].append(last[name])
            print(f"  [{kind}] step {i + 1}/{warmup + repeats}: " + ", ".join(
                f"{n} {last[n]['seconds']:.2f} s" for n, _ in sides) + (" (warm-up)" if i < warmup else ""),
                file=sys.stderr, flush=True)
    finally:
        trl.close()
        trl_micro.close()
    load_after = os.getloadavg()
    med = {name: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for name, rs in results.items()}
    return {
        "workload": kind, "params": params, "new_tokens_per_turn": new_tokens, "rows": PROMPTS * GROUP,
        "median": med, "steps": results,
        "speedup_wall": med["trl"]["seconds"] / med["ours"]["seconds"],
        "speedup_wall_vs_trl_micro": med[f"trl_mb{TRL_MICRO}"]["seconds"] / med["ours"]["seconds"],
        "speedup_rollout_wall": med["trl"]["rollout_seconds"] / med["ours"]["rollout_seconds"],
        "speedup_learn_wall": med["trl"]["learn_seconds"] / med["ours"]["learn_seconds"],
        "speedup_cpu": med["trl"]["cpu"] / med["ours"]["cpu"],
        "speedup_wall_nocache": med["trl"]["seconds"] / med["ours_nocache"]["seconds"],
        "speedup_cpu_nocache": med["trl"]["cpu"] / med["ours_nocache"]["cpu"],
        "cache_gain_wall": med["ours_nocache"]["seconds"] / med["ours"]["seconds"],
        "loadavg_before": load_before, "loadavg_after": load_after, "trl_info": trl.info,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1 warm-up + 2 timed steps per side")
    parser.add_argument("--workloads", default="anchor,tool4")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.repeats = 1, 2
    _threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not TRL_PYTHON.exists():
        raise SystemExit(f"TRL is not installed: run `bash benchmarks/setup_trl.sh` to create {TRL_PYTHON.parent.parent}")

    sys.path.insert(0, str(ROOT))  # benchmark this checkout's agentenv, whatever the venv has installed
    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory(prefix="agentenv-bench-grpo-") as tmp:
        for kind in [k.strip() for k in args.workloads.split(",") if k.strip()]:
            results.append(run_workload(kind, Path(tmp), args.threads, args.warmup, args.repeats))
    info = results[0]["trl_info"] if results else {}
    if info and (info["transformers"], info["torch"]) != (transformers.__version__, torch.__version__):
        print(f"WARNING: versions differ: ours torch {torch.__version__} transformers {transformers.__version__}, "
              f"TRL side torch {info['torch']} transformers {info['transformers']}", file=sys.stderr)
    print(f"\nOne GRPO step (generation + rewards + advantages + update), {PROMPTS}×{GROUP} rows, {args.threads} torch "
          f"thread(s), median of {args.repeats} interleaved steps per side after {args.warmup} warm-up")
    print(f"agentenv (torch {torch.__version__}, transformers {transformers.__version__}) vs TRL {info.get('trl')} "
          f"(torch {info.get('torch')}, transformers {info.get('transformers')})\n")
    head = (f"{'workload':<8} {'side':<13} {'wall s':>7} {'cpu s':>7} {'TRL/side wall':>14} {'TRL/side cpu':>13} "
            f"{'rollout s':>10} {'TRL/side':>9} {'learn s':>8} {'TRL/side':>9} {'prompt ids run':>15} {'generated':>10} {'turns':>6}")
    print(head)
    print("-" * len(head))
    for r in results:
        trl = r["median"]["trl"]
        for side in r["median"]:
            m = r["median"][side]
            print(f"{r['workload']:<8} {side:<13} {m['seconds']:>7.2f} {m['cpu']:>7.2f} {trl['seconds'] / m['seconds']:>13.2f}x "
                  f"{trl['cpu'] / m['cpu']:>12.2f}x {m['rollout_seconds']:>10.2f} {trl['rollout_seconds'] / m['rollout_seconds']:>8.2f}x "
                  f"{m['learn_seconds']:>8.2f} {trl['learn_seconds'] / m['learn_seconds']:>8.2f}x "
                  f"{m['prompt_tokens_run']:>15.0f} {m['generated']:>10.0f} {m['turns']:>6.0f}")
        print(f"{'':<8} load average before {', '.join(f'{x:.2f}' for x in r['loadavg_before'])}; "
              f"after {', '.join(f'{x:.2f}' for x in r['loadavg_after'])}")
    print("(TRL/side > 1: that side is that many times faster than TRL; rollout: generation (+ env steps for tool4), "
          "learn: the rest of the step — rewards, advantages, forward/backward, optimizer (all wall seconds); prompt ids "
          "run: ids through the model before sampling, per step (TRL: every turn's whole context, padding excluded); "
          "medians per column)")
    if args.json:
        out = {"what": "one GRPO step, agentenv vs TRL, same run", "threads": args.threads, "warmup": args.warmup,
               "repeats": args.repeats, "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                                                     "trl": info.get("trl"), "trl_side_transformers": info.get("transformers")},
               "cpus": os.cpu_count(), "results": results}
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")


# -- the TRL worker (TRL venv; agentenv is not importable there) --------------------------------------


def trl_worker(workdir: Path, workload: str, threads: int, micro: int) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    protocol = os.fdopen(os.dup(1), "w")  # our channel; everything else printed goes to stderr (the log)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(message: dict) -> None:
        protocol.write(json.dumps(message) + "\n")
        protocol.flush()

    def recv() -> dict:
        return json.loads(sys.stdin.readline())

    import torch

    torch.set_num_threads(threads)
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback
    from transformers.utils import logging as hf_logging
    from trl import GRPOConfig, GRPOTrainer

    hf_logging.set_verbosity_error()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(workdir / f"tokenizer_{workload}"))
    model = AutoModelForCausalLM.from_pretrained(str(workdir / f"model_{workload}"), dtype=torch.float32, local_files_only=True)
    stats = {"prompt_tokens_run": 0, "generated": 0, "rollout_seconds": 0.0, "rollout_cpu": 0.0}

    def timed(fn):
        """Adds the wall and CPU seconds of `fn` (generation, or the whole multi-turn rollout) to `stats`."""
        def wrapper(*a, **k):
            wall, cpu = _clock()
            out = fn(*a, **k)
            stats["rollout_seconds"] += time.perf_counter() - wall
            stats["rollout_cpu"] += time.process_time() - cpu
            return out
        return wrapper

    if workload == "anchor":
        dataset = Dataset.from_list(anchor_rows())
        reward_funcs, rollout_func, max_completion = anchor_reward, None, ANCHOR_NEW_TOKENS
    else:
        dataset = Dataset.from_list([{"prompt": str(seed)} for seed in range(PROMPTS * 1000)])

        def env_reward(completions, env_reward, **_):
            return [float(r) for r in env_reward]

        @timed
        def rollout_func(prompts, trainer):
            """Our rollout loop runs in the parent; every turn it sends the whole contexts to generate from."""
            send({"request": "rollout", "seeds": [int(p) for p in prompts]})
            while True:
                message = recv()
                if "generate" in message:
                    ids, _ = trainer._generate_single_turn(message["generate"], None, {}, 1)
                    send({"ids": [list(map(int, x)) for x in ids]})
                else:
                    return {"prompt_ids": message["prompt_ids"], "completion_ids": message["completion_ids"],
                            "logprobs": None, "env_mask": message["env_mask"], "env_reward": message["env_reward"]}

        reward_funcs, max_completion = env_reward, TOOL_NEW_TOKENS

    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="agentenv-bench-trl-"), per_device_train_batch_size=micro,
        gradient_accumulation_steps=PROMPTS * GROUP // micro, num_generations=GROUP, max_completion_length=max_completion,
        max_steps=100_000, logging_steps=1, report_to=[],
        use_cpu=True, bf16=False, save_strategy="no", learning_rate=LR, beta=0.0, seed=0, dataloader_num_workers=0,
        gradient_checkpointing=False, shuffle_dataset=False, epsilon=EPS_LOW, epsilon_high=EPS_HIGH, loss_type="dapo",
        max_grad_norm=MAX_GRAD_NORM, weight_decay=0.0, lr_scheduler_type="constant", disable_tqdm=True,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=reward_funcs, args=args, train_dataset=dataset,
                          processing_class=tokenizer, **({"rollout_func": rollout_func} if rollout_func else {}))
    if workload == "anchor":  # count what generation runs, for the table
        generate = trainer._generate_single_turn

        def counted(prompt_ids, *a, **k):
            out = generate(prompt_ids, *a, **k)
            stats["prompt_tokens_run"] += sum(len(p) for p in prompt_ids)
            stats["generated"] += sum(len(c) for c in out[0])
            return out

        trainer._generate_single_turn = timed(counted)

    class Gate(TrainerCallback):
        """Blocks each step until the parent says `step`; times it like the anchor (step begin → step end)."""

        def on_step_begin(self, *a, **k):
            if sys.stdin.readline().strip() != "step":
                protocol.flush()
                os._exit(0)
            for key in stats:
                stats[key] = 0
            self.wall, self.cpu = _clock()

        def on_step_end(self, *a, **k):
            send({"seconds": time.perf_counter() - self.wall, "cpu": time.process_time() - self.cpu, **stats})

    trainer.add_callback(Gate())
    send({"ready": True, "trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__,
          "threads": torch.get_num_threads(), "gradient_checkpointing": trainer.args.gradient_checkpointing})
    trainer.train()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--trl-worker":
        parser = argparse.ArgumentParser()
        parser.add_argument("workdir")
        parser.add_argument("workload")
        parser.add_argument("--threads", type=int, default=1)
        parser.add_argument("--micro", type=int, default=PROMPTS * GROUP)
        worker_args = parser.parse_args(sys.argv[2:])
        trl_worker(Path(worker_args.workdir), worker_args.workload, worker_args.threads, worker_args.micro)
    else:
        main()
