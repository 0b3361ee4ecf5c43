"""Validation shared by the config dataclasses: `Literal` choices, with a "did you mean" for typos.

Runs as soon as a config is built or loaded, so `agentenv train --learner.loss=cispoo` fails in a moment,
naming the valid choices, before any model is built or any step is taken."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any, Iterable

from agentenv.errors import UserError

__all__ = ["validate_choices", "did_you_mean"]


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def validate_choices(config: Any, where: str = "") -> None:
    """Raise `UserError` for a field whose value is not one of its `Literal[...]` choices (nested dataclasses
    too), or a `list[Literal[...]]` holding an unknown item."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            validate_choices(value, f"{where}{field.name}.")
            continue
        hint = hints.get(field.name)
        items = [value]
        if typing.get_origin(hint) is list:
            (hint,) = typing.get_args(hint)
            items = list(value or [])
        if typing.get_origin(hint) is not typing.Literal:
            continue
        choices = typing.get_args(hint)
        for item in items:
            if item not in choices:
                raise UserError(
                    f"{where}{field.name}={item!r} is not one of {', '.join(map(str, choices))}{did_you_mean(item, choices)}"
                )
