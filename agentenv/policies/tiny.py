"""A tiny tokenizer and randomly initialised Qwen2-architecture models, built offline, for tests and CPU runs.

The tokenizer (`agentenv/assets/tiny_tokenizer/`, ~70 KiB) is a 1,250-token byte-level BPE trained once by
`scripts/build_tiny_tokenizer.py` on ToolReasoning questions and scripted transcripts; it has the ChatML
special tokens `<|im_start|>`, `<|im_end|>` (end of turn, EOS), `<|pad|>`, atomic control tags
(`<tool_call>`, `</tool_call>`, `<answer>`, `</answer>`, `<execute/>`), one token per digit (so numbers are
copied digit by digit, as with Qwen2's tokenizer) and a ChatML chat template.
Nothing here touches the network.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

__all__ = ["TINY_TOKENIZER_DIR", "TINY_SIZES", "tiny_tokenizer", "tiny_config", "tiny_model"]

TINY_TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "assets" / "tiny_tokenizer"

# hidden, layers, attention heads, key/value heads, MLP width
TINY_SIZES = {
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=512),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2, intermediate_size=1024),
}


@lru_cache(maxsize=1)
def _load_tokenizer():
    from transformers import PreTrainedTokenizerFast

    if not (TINY_TOKENIZER_DIR / "tokenizer.json").exists():
        raise FileNotFoundError(f"{TINY_TOKENIZER_DIR} is missing; rebuild it with `python scripts/build_tiny_tokenizer.py`")
    return PreTrainedTokenizerFast.from_pretrained(str(TINY_TOKENIZER_DIR))


def tiny_tokenizer():
    """The shipped tiny ChatML tokenizer (a `PreTrainedTokenizerFast`; a fresh copy per call is not needed,
    so the same object is returned each time — do not mutate it)."""
    return _load_tokenizer()


def tiny_config(size: str = "tiny", max_seq_len: int = 4096):
    """A `Qwen2Config` for `size` in `TINY_SIZES`, with the tiny tokenizer's vocabulary and special ids."""
    from transformers import Qwen2Config

    if size not in TINY_SIZES:
        raise ValueError(f"size must be one of {sorted(TINY_SIZES)}, got {size!r}")
    tok = tiny_tokenizer()
    return Qwen2Config(
        vocab_size=len(tok),
        max_position_embeddings=max_seq_len,
        tie_word_embeddings=True,
        bos_token_id=tok.convert_tokens_to_ids("<|im_start|>"),
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        use_cache=True,
        **TINY_SIZES[size],
    )


def tiny_model(size: str = "tiny", seed: int = 0, max_seq_len: int = 4096):
    """A randomly initialised `Qwen2ForCausalLM` (float32, eval mode); the same `seed` gives the same weights.

    "tiny" has 0.65 M parameters (0.16 M of them the tied embedding), "small" 4.1 M.
    """
    from transformers import Qwen2ForCausalLM

    config = tiny_config(size, max_seq_len)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    return model.eval()
