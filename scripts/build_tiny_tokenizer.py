"""Train the tiny byte-level BPE tokenizer shipped in `agentenv/assets/tiny_tokenizer/` (run once; offline).

The corpus is synthesized from the package itself: ToolReasoning questions and answers over many seeds,
and scripted-policy episodes (immediate and delayed execution, each tool set) rendered with the ChatML
template, so system prompts, `<tool_call>{json}</tool_call>`, `<execute/>`, `<answer>…</answer>`, tool
results and error messages all appear. The control tags are atomic tokens (so a control decision is one
token); digits are split one per token; `<|im_start|>`, `<|im_end|>` and `<|pad|>` are special tokens.

    python scripts/build_tiny_tokenizer.py [--vocab-size 3072 (a cap: the corpus saturates near 1,250)] [--out agentenv/assets/tiny_tokenizer]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

import agentenv  # noqa: F401 - registers the envs
from agentenv.envs.tool_reasoning.tasks import generate_task
from agentenv.policies.chat_tokens import CHATML_TEMPLATE
from agentenv.envs.tool_reasoning.scripted import ScriptedPolicy
from agentenv.runner import run_episodes

SPECIAL = ["<|im_start|>", "<|im_end|>", "<|pad|>"]
CONTROL = ["<tool_call>", "</tool_call>", "<answer>", "</answer>", "<execute/>"]
ROOT = Path(__file__).resolve().parents[1]


def chatml(messages: list[dict]) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


def corpus(n_questions: int, n_episodes: int) -> list[str]:
    texts = []
    for seed in range(n_questions):
        task = generate_task(np.random.default_rng(seed))
        texts.append(f"{task.question}\n<answer>{task.answer}</answer>")
    policy = ScriptedPolicy()
    for tools in (["python", "calculator"], ["calculator"], ["python"]):
        for execution in ("immediate", "delayed"):
            kwargs = {"tools": tools, "execution": execution}
            for log in run_episodes("agentenv/ToolReasoning-v0", policy, n_episodes, seed=len(texts), env_kwargs=kwargs):
                texts.append(chatml(log.messages))
    # Error observations: what the env says to a turn with no call, a broken call and an unknown tool.
    import gymnasium as gym

    for execution in ("immediate", "delayed"):
        env = gym.make("agentenv/ToolReasoning-v0", execution=execution)
        for seed, action in enumerate(["I think the answer is 4.", '<tool_call>{"name": "python"', '<tool_call>{"name": "search", "arguments": {}}</tool_call>', "<execute/>"]):
            messages, _ = env.reset(seed=seed)
            messages, *_ = env.step(action)
            texts.append(chatml(messages))
        env.close()
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=3072)
    parser.add_argument("--questions", type=int, default=20_000)
    parser.add_argument("--episodes", type=int, default=300, help="scripted episodes per (tool set, execution mode)")
    parser.add_argument("--out", default=str(ROOT / "agentenv/assets/tiny_tokenizer"))
    args = parser.parse_args()

    texts = corpus(args.questions, args.episodes)
    tokenizer = Tokenizer(models.BPE())
    # Digits are single tokens, as in Qwen2/Llama tokenizers: a number reads the same wherever it stands
    # (" 13" in a question, "13" in an expression, "13" in a tool result), so copying it is a digit-by-digit
    # copy a 2-layer model learns, not a per-number lookup between merged tokens.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIAL])
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in CONTROL])
    trainer = trainers.BpeTrainer(
        vocab_size=args.vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        chat_template=CHATML_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )
    os.makedirs(args.out, exist_ok=True)
    fast.save_pretrained(args.out)
    # transformers 5 writes its own class name; the generic one loads with transformers 4.x as well.
    config_path = Path(args.out) / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    size = sum(p.stat().st_size for p in Path(args.out).iterdir())
    print(f"{len(texts)} texts → vocab {len(fast)} ({fast.convert_ids_to_tokens([0, 1, 2])} …), {size / 1024:.0f} KiB in {args.out}")


if __name__ == "__main__":
    main()
