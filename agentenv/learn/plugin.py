"""What a learner plug-in is: one module with a config dataclass and a `Plugin` subclass whose hooks the
learner calls at fixed points of an update. The learner knows the hooks, never a plug-in.

A plug-in is switched on by naming it in `LearnerConfig.plugins` (`--learner.plugins=owpo,nsr`); its
settings are that entry's config (`--learner.plugins.owpo.kappa=2`, or in YAML
`learner: {plugins: {owpo: {kappa: 2}}}`). The hooks, in the order of one training step; each does nothing
unless a plug-in overrides it:

| stage            | hook                                           | who uses it (built-ins)             |
|------------------|------------------------------------------------|-------------------------------------|
| run start        | `setup(model, tokenizer, group_size, seed)`    | attach a head, find a token id      |
| 1. advantages    | `rewards(rewards, episodes, ctx) -> rewards`   | pseudo-labels                       |
|                  | `advantages(adv, episodes, ctx) -> adv`        | per-prompt scale                    |
| 2. batch         | `prepare_batch(batch, episodes, adv, ctx)`     | per-token advantages, teacher pass  |
| 5. update        | `before_update(batch, ctx)`                    | reference ratchet                   |
|                  | `start_epoch(batch, epoch, ctx)`               | per-epoch random draws              |
| 3. forward       | `forward(model, hidden, logp, micro, ctx)`     | extra outputs of the same forward   |
| 4. loss          | `token_advantages(adv, logp, micro, ctx)`      | token weights                       |
|                  | `token_loss(terms, micro, ctx)`                | loss form, auxiliary losses         |
| checkpoint       | `state_dict()` / `load_state_dict(state)`      | a probe's weights and buffer        |
| warm start (SFT) | `sft_loss(model, hidden, micro, ctx)`          | train an added head on the demos    |

Two declarations complete a plug-in as shipped: `env_options()`, the env settings its method needs
(`train` merges them into `env_kwargs`; a run that sets one differently is an error, never a silent
override), and `presets`, named variants of it (a paper's baselines, each one config:
`--learner.preset=NAME`, `presets.py`).

Plug-ins run in the order they were registered (`agentenv/learn/plugins/__init__.py`: the pipeline order of
docs/anchors-learner.md Part 3), whatever order a config names them in. Adding one: a new module with its
`Config` dataclass and `Plugin` subclass, plus one line in that list (or `register(MyPlugin)` from your own
code, as tests/test_plugin_api.py does).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import torch
from torch import Tensor

from agentenv.config import apply_overrides, did_you_mean, validate_choices
from agentenv.errors import UserError

__all__ = ["Plugin", "StepContext", "LossTerms", "register", "registry", "plugin_configs", "build_plugins",
           "with_env_options"]


@dataclass
class StepContext:
    """What hooks may read about the current step. `cfg` is the `LearnerConfig`; `policy` is the rollout
    policy (for plug-ins that sample, e.g. a reflection hint), `ref_model` the reference policy if the run has
    one, `generator` the step's sampler (mini-batch order), `metrics` what the step logs."""

    cfg: Any
    step: int = 0
    model: torch.nn.Module | None = None
    policy: Any = None
    ref_model: torch.nn.Module | None = None
    generator: torch.Generator | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class LossTerms:
    """One micro-batch's policy-gradient loss per token `[B, T]` before KL and entropy, as loss hooks see
    and change it: `per_token` (the loss), `clipped` (which tokens the trust region clipped); `logp`,
    `log_ratio` and `adv` are the inputs it came from. `metrics` sum over micro-batches: divide by
    `num_tokens` (the mini-batch's loss tokens) to log a token mean."""

    per_token: Tensor
    clipped: Tensor
    logp: Tensor
    log_ratio: Tensor
    adv: Tensor
    num_tokens: float
    metrics: dict[str, float]


class Plugin:
    """Base of every learner plug-in. Subclasses set `name` and `Config` and override the hooks they need."""

    name: ClassVar[str]
    Config: ClassVar[type]  # a dataclass of the plug-in's settings
    off_policy: ClassVar[bool] = False  # acts only when π_θ ≠ π_old: its preset uses 4 mini-batches
    needs_ref_model: ClassVar[bool] = False  # the run keeps a reference policy for it
    # Named variants (a paper's baselines): preset name -> LearnerConfig overrides applied on top of this
    # plug-in's own preset (`dapo` + it); `{"plugins": {NAME: {...}}}` sets its settings.
    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.Config()

    def env_options(self) -> dict[str, Any]:
        """Env settings (`TrainConfig.env_kwargs` keys) the method needs to act at all; `train` adds them."""
        return {}

    def setup(self, model: torch.nn.Module, tokenizer: Any, *, group_size: int, seed: int) -> None:
        """Once per run, before the optimizer is built (so parameters added here are trained)."""

    def rewards(self, rewards: Tensor, episodes: Sequence[Any], ctx: StepContext) -> Tensor:
        return rewards

    def advantages(self, adv: Tensor, episodes: Sequence[Any], ctx: StepContext) -> Tensor:
        return adv

    def prepare_batch(self, batch: Any, episodes: Sequence[Any], advantages: Tensor, ctx: StepContext) -> None:
        """Add what the loss needs to `batch.extras` (2-D tensors are `[B, L-1]`, aligned with the targets)."""

    def before_update(self, batch: Any, ctx: StepContext) -> None:
        """After π_old is fixed and before the reference log-probs are computed."""

    def start_epoch(self, batch: Any, epoch: int, ctx: StepContext) -> None:
        pass

    def forward(self, model: torch.nn.Module, hidden: Tensor, logp: Tensor, micro: Any, ctx: StepContext) -> None:
        """Extra outputs of the micro-batch's forward (same graph), into `micro.extras`."""

    def token_advantages(self, adv: Tensor, logp: Tensor, micro: Any, ctx: StepContext) -> Tensor:
        """`adv` `[B, T]` → reshaped; `logp` is detached."""
        return adv

    def token_loss(self, terms: LossTerms, micro: Any, ctx: StepContext) -> None:
        """Change `terms.per_token` / `terms.clipped` in place."""

    def sft_loss(self, model: torch.nn.Module, hidden: Tensor, micro: Any, ctx: StepContext) -> Tensor | None:
        """Warm start: an extra per-token loss `[B, T]` on a demonstration micro-batch (zero off its own mask),
        added to the NLL and normalised by the same token count; `hidden` are the final hidden states."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


_REGISTRY: dict[str, type[Plugin]] = {}


def register(cls: type[Plugin]) -> type[Plugin]:
    """Make `cls` available as `LearnerConfig.plugins` entry `cls.name` (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Plugin)) or not dataclasses.is_dataclass(cls.Config):
        raise TypeError("a plug-in is a Plugin subclass with a dataclass Config")
    importlib.import_module("agentenv.learn.plugins")  # the built-ins come first (a no-op while they register)
    _REGISTRY[cls.name] = cls
    return cls


def registry() -> dict[str, type[Plugin]]:
    """Every registered plug-in by name, in pipeline order (the built-ins first)."""
    importlib.import_module("agentenv.learn.plugins")  # registers the built-ins (lazily: they import the learner)
    return _REGISTRY


def plugin_configs(plugins: Any, where: str = "learner.plugins") -> dict[str, Any]:
    """Normalise `plugins` — a name, a comma-separated string, a list of names, or a mapping name → config
    (its dataclass, a mapping of settings, or None for the defaults) — to {name: Config instance} in pipeline
    order. Unknown names and settings raise `UserError` with a "did you mean"."""
    known = registry()
    if isinstance(plugins, str):
        plugins = [p.strip() for p in plugins.split(",") if p.strip()]
    if not isinstance(plugins, dict):
        plugins = {name: None for name in plugins or []}
    for name in plugins:
        if name not in known:
            raise UserError(f"unknown plug-in {where}: {name!r}{did_you_mean(name, known)}; known: {', '.join(known)}")
    out = {}
    for name, cls in known.items():
        if name not in plugins:
            continue
        value = plugins[name]
        if isinstance(value, cls.Config):
            out[name] = value
            continue
        config = cls.Config()
        apply_overrides(config, dict(value or {}), f"{where}.{name}.")
        validate_choices(config, f"{where}.{name}.")
        out[name] = config
    return out


def build_plugins(cfg: Any) -> list[Plugin]:
    """One instance per plug-in named in `cfg.plugins` (a `LearnerConfig`), in pipeline order."""
    known = registry()
    return [known[name](config) for name, config in plugin_configs(cfg.plugins).items()]


def with_env_options(env_kwargs: dict[str, Any], plugins: Sequence[Plugin]) -> dict[str, Any]:
    """`env_kwargs` plus every plug-in's `env_options()`; nested dicts merge key by key. A key the run already
    sets to another value is a `UserError`: a method's env requirement is never overridden silently, either way."""

    def merge(target: dict[str, Any], needed: dict[str, Any], where: str, plugin: str) -> None:
        for key, value in needed.items():
            if key not in target:
                target[key] = copy.deepcopy(value)
            elif isinstance(value, dict) and isinstance(target[key], dict):
                merge(target[key], value, f"{where}{key}.", plugin)
            elif target[key] != value:
                raise UserError(f"plug-in {plugin!r} needs {where}{key}={value!r}, but the config sets {target[key]!r}: "
                                f"drop that setting, or the plug-in")

    merged = copy.deepcopy(env_kwargs)
    for plugin in plugins:
        merge(merged, plugin.env_options(), "env_kwargs.", plugin.name)
    return merged