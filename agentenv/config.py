"""Config dataclasses from YAML and `--section.key=value` overrides, and their validation: unknown keys and
`Literal` choices rejected with a "did you mean" for typos.

Runs as soon as a config is built or loaded, so `agentenv train --learner.loss=cispoo` fails in a moment,
naming the valid choices, before any model is built or any step is taken."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any, Iterable

import yaml

from agentenv.errors import UserError

__all__ = ["apply_overrides", "coerce", "validate_choices", "did_you_mean"]


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def validate_choices(config: Any, where: str = "") -> None:
    """Raise `UserError` for a field whose value is not one of its `Literal[...]` choices (nested dataclasses
    too), or a `list[Literal[...]]` holding an unknown item; a dataclass's own `__post_init__` checks run again
    (overrides are applied after construction)."""
    if hasattr(config, "__post_init__"):
        config.__post_init__()
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            validate_choices(value, f"{where}{field.name}.")
            continue
        if isinstance(value, dict):  # e.g. the learner's plug-ins: name -> its config dataclass
            for key, entry in value.items():
                if dataclasses.is_dataclass(entry):
                    validate_choices(entry, f"{where}{field.name}.{key}.")
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


def coerce(value: Any, current: Any) -> Any:
    """A CLI/YAML value in the type of the field it replaces (YAML reads `3e-3` as a string)."""
    if isinstance(value, str) and not isinstance(current, str):
        value = yaml.safe_load(value)
    if isinstance(current, list):  # `--learner.plugins=fipo,owpo` as well as `[fipo, owpo]`
        if isinstance(value, str):
            value = value.split(",")
        return [str(v).strip() for v in value or [] if str(v).strip()]
    if isinstance(current, bool) or current is None:
        return value
    if isinstance(current, (int, float)) and isinstance(value, (str, int, float)):
        try:
            return type(current)(value) if not isinstance(current, int) or float(value).is_integer() else float(value)
        except ValueError:
            raise UserError(f"expected a number, got {value!r}") from None
    return value


def apply_overrides(target: Any, updates: dict[str, Any], where: str = "") -> None:
    """Set fields of the dataclass `target` from `updates` (YAML mapping or dotted `key=value` pairs).

    Dotted keys reach nested dataclasses and dicts; an unknown key raises `UserError` naming the known ones.
    A dataclass can take some keys itself with a method `apply_override(key, value, where) -> bool` (True:
    handled), as `LearnerConfig` does for presets and plug-ins."""
    names = {f.name for f in dataclasses.fields(target)}
    for key, value in updates.items():
        custom = getattr(target, "apply_override", None)
        if custom is not None and custom(key, value, where):
            continue
        head, _, rest = key.partition(".")
        if head not in names:
            raise UserError(f"unknown config key {where}{head!r}{did_you_mean(head, names)}; known: {', '.join(sorted(names))}")
        current = getattr(target, head)
        if dataclasses.is_dataclass(current):
            if not rest and not isinstance(value, dict):
                raise UserError(f"{where}{head} is a section: give its keys ({where}{head}.KEY=VALUE)")
            apply_overrides(current, {rest: value} if rest else dict(value), f"{where}{head}.")
        elif rest and isinstance(current, dict):
            current[rest] = coerce(value, current.get(rest))
        else:
            setattr(target, head, coerce(value, current))
