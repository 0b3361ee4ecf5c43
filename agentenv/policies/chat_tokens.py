"""Chat messages → token ids for a tokenizer with a chat template, without ever re-tokenizing the past.

A rollout stores one growing token sequence per episode: the rendered prompt, then what the model
generated, then the *delta* of the messages the environment added (rendered as a continuation), then the
next generation, and so on. `ChatTokens.delta` renders only the new messages: it renders a fixed dummy
conversation that ends with a finished assistant turn, plus the new messages, and strips the dummy's ids,
so the result starts right after the end-of-turn token the model produced (for ChatML: `"\\n<|im_start|>tool\\n…"`).

When is `prompt + generated + delta + generated + …` equal to tokenizing the whole rendered chat at once?
Always for the ids outside generations when the template puts special tokens between turns (ChatML does:
`<|im_end|>`/`<|im_start|>` cut the text into separately tokenized pieces). For the generated ids, only
when the model's ids are the canonical tokenization of its text: a sampled sequence may spell a word with
different pieces than the tokenizer would (that is why the rollout never re-tokenizes), and with the tiny
byte-level tokenizer a turn starting with two or more whitespace characters tokenizes differently after
the generation prompt's `"\\n"` (the GPT-2 split regex joins `"\\n "`). `tests/test_rollout.py` checks the
equality on scripted conversations.
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["CHATML_TEMPLATE", "ChatTokens"]

Messages = list[dict[str, Any]]

# ChatML, as Qwen uses it, without Qwen's tool-call rewriting: every message (tool results included) is
# `<|im_start|>{role}\n{content}<|im_end|>\n`; the generation prompt is `<|im_start|>assistant\n`.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_DUMMY: Messages = [{"role": "user", "content": "."}, {"role": "assistant", "content": "."}]


class ChatTokens:
    """Renders chats to token ids with `tokenizer`'s chat template (any HF tokenizer that has one).

    Attributes:
        end_id: the id that ends an assistant turn (`<|im_end|>` when the vocabulary has it, else EOS).
        pad_id: the padding id (the tokenizer's pad token, else `end_id`).
    """

    def __init__(self, tokenizer: Any):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template; set tokenizer.chat_template (e.g. to CHATML_TEMPLATE)")
        self.tokenizer = tokenizer
        vocab = tokenizer.get_vocab()
        self.end_token = "<|im_end|>" if "<|im_end|>" in vocab else tokenizer.eos_token
        if self.end_token is None:
            raise ValueError("the tokenizer has neither <|im_end|> nor an eos_token to end a turn with")
        self.end_id: int = vocab[self.end_token]
        self.pad_id: int = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.end_id
        dummy_text = self._render(_DUMMY, generation_prompt=False)
        self._dummy_cut = dummy_text.rindex(self.end_token) + len(self.end_token)
        self._dummy_text = dummy_text[: self._dummy_cut]
        self._dummy_ids = self.encode(self._dummy_text)

    def _render(self, messages: Messages, generation_prompt: bool) -> str:
        plain = [{"role": m["role"], "content": self._content(m)} for m in messages]
        return self.tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=generation_prompt)

    def _content(self, message: dict[str, Any]) -> str:
        """The text a message renders as: its content (a renderer that hears audio adds placeholders)."""
        return message["content"]

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, special-token strings included, nothing added around it."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def prompt(self, messages: Messages) -> list[int]:
        """Ids of the whole chat followed by the assistant generation prompt: `[P]`."""
        return self.encode(self._render(messages, generation_prompt=True))

    def delta(self, messages: Messages) -> list[int]:
        """Ids of `messages` rendered as the continuation of a chat whose last assistant turn just ended with
        `end_id`, followed by the generation prompt: `[D]`."""
        text = self._render(_DUMMY + list(messages), generation_prompt=True)
        if not text.startswith(self._dummy_text):
            raise ValueError("the chat template renders earlier messages differently when more follow; cannot render a delta")
        ids = self.encode(text)
        if ids[: len(self._dummy_ids)] == self._dummy_ids:
            return ids[len(self._dummy_ids) :]
        return self.encode(text[self._dummy_cut :])

    def prompt_and_inputs(self, messages: Messages) -> tuple[list[int], list[dict[str, Any]]]:
        """`prompt(messages)` and the model inputs beside the ids (one dict per non-text item, in the order of
        their placeholder ids; see `Sample.inputs`). Text renders none: non-text keys of a message (`"audio"`)
        are left out, and the rollout checks first that the env offers another way to them (`input_path`)."""
        return self.prompt(messages), []

    def delta_and_inputs(self, messages: Messages) -> tuple[list[int], list[dict[str, Any]]]:
        """`delta(messages)` and the model inputs beside the ids, as `prompt_and_inputs`."""
        return self.delta(messages), []

    def turn(self, text: str) -> list[int]:
        """Ids of an assistant turn written as text (a scripted policy), closed with `end_id`: `[T + 1]`."""
        return self.encode(text) + [self.end_id]

    def char_offsets(self, ids: Sequence[int]) -> list[tuple[int, int]]:
        """`(start, end)` character range of each token in `decode(ids)`: `[T]` pairs.

        Found by decoding every prefix (works for any tokenizer); a token that ends inside a multi-byte
        character gets an empty or approximate range.
        """
        ids = list(ids)
        if not ids:
            return []
        ends = [len(t) for t in self.tokenizer.batch_decode(
            [ids[: i + 1] for i in range(len(ids))], skip_special_tokens=False, clean_up_tokenization_spaces=False
        )]
        offsets, start = [], 0
        for end in ends:
            offsets.append((min(start, end), end))
            start = max(start, end)
        return offsets
