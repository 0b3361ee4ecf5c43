"""The learner: rollout Episodes → advantages → padded batch → policy-gradient update. Read top to bottom.

One update (`update`) does what verl's actor and TRL's GRPOTrainer do, split into stages:

1. `episode_advantages`: sequence rewards → one advantage per episode (GRPO/Dr.GRPO/RLOO/REINFORCE++),
   optionally zeroing groups with no reward variance (DAPO dynamic sampling) and truncated episodes.
2. `make_batch`: every Sample becomes one padded row; loss masks drop prompt and env/tool tokens;
   row t holds the target token t+1, so `logp[:, t]` lines up with `loss_mask[:, t]`. Non-text model inputs
   (a sample's audio features) ride along in `Batch.inputs` and go into every forward.
3. `token_logprobs`: log π_θ of the targets from the last hidden state, chunked over the vocabulary
   (`objectives.selective_log_probs`): a [T, V] logits tensor is never materialised.
4. `policy_loss`: ratio → loss form → aggregation, plus KL and entropy terms; all pure functions in
   `objectives.py`, normalised by the whole mini-batch so gradient accumulation is exact.
5. `update`: PPO epochs × shuffled mini-batches × micro-batches, grad clipping, one optimizer step per
   mini-batch; bf16 autocast on CUDA.

Plug-ins (`LearnerConfig.plugins`; `agentenv/learn/plugins/`, one module each, all off by default) change
the update only through the hooks of `plugin.Plugin`, called at fixed points of stages 1–5; this module
names none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch
import yaml

from agentenv.config import apply_overrides
from agentenv.errors import UserError
from agentenv.learn import distributed as D
from agentenv.learn import objectives as F
from agentenv.learn.plugin import LossTerms, Plugin, StepContext, build_plugins, plugin_configs
from agentenv.learn.presets import learner_preset
from agentenv.policies.base import stack_inputs
from agentenv.policies.kv_cache import cache_kwargs
from agentenv.types import Episode

__all__ = ["LearnerConfig", "Batch", "episode_advantages", "make_batch", "final_hidden", "token_logprobs",
           "recompute_logprobs", "policy_loss", "update", "sft_update", "autocast"]


@dataclass
class LearnerConfig:
    """Every knob of the update; the defaults are DAPO-style GRPO (clip-higher, token-mean, no KL)."""

    advantage: Literal["grpo", "rloo", "reinforce_pp_baseline"] = "grpo"  # grpo | rloo | reinforce_pp_baseline
    scale_rewards: Literal["group", "batch", "none"] = "group"  # group | batch | none (Dr.GRPO)
    std: Literal["unbiased", "population"] = "unbiased"  # unbiased | population (1/n)
    adv_eps: float = 1e-6
    ratio_level: Literal["token", "sequence"] = "token"  # token | sequence (GSPO)
    loss: Literal["ppo_clip", "cispo", "sapo", "gpg"] = "ppo_clip"  # ppo_clip | cispo | sapo | gpg
    eps_low: float = 0.2
    eps_high: float = 0.28
    dual_clip: float | None = None
    cispo_cap: float = 5.0
    aggregation: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] = "token-mean"  # token-mean | seq-mean-token-mean | seq-mean-token-sum | seq-mean-token-sum-norm
    norm_const: float | None = None  # seq-mean-token-sum-norm's constant (default: padded length)
    kl_coef: float = 0.0
    kl_estimator: Literal["k1", "abs", "k2", "k3", "k3+"] = "k3"  # k1 | abs | k2 | k3 | k3+
    kl_in_reward: bool = False  # subtract kl_coef·KL from the sequence reward instead of adding it to the loss
    entropy_coef: float = 0.0
    # Sampler–learner mismatch (the rollout engine's log-probs vs the learner's π_old): always logged as
    # sampler_kl / sampler_logp_diff; corrected by importance weights when not "none" (objectives.sampler_correction)
    sampler_correction: Literal["none", "tis", "mask"] = "none"  # none | tis (truncated IS) | mask (masked IS)
    sampler_correction_level: Literal["token", "sequence"] = "token"  # token | sequence
    sampler_cap: float = 2.0  # tis: weights capped here; mask: tokens with ρ outside [1/cap, cap] dropped
    mask_truncated: bool = False  # zero the loss of episodes cut by the turn or length limit
    filter_zero_variance: bool = False  # DAPO dynamic sampling: drop groups whose rewards are all equal
    overlong_buffer: int = 0  # DAPO overlong penalty on generated tokens; 0 disables
    overlong_max_tokens: int = 0
    overlong_factor: float = 1.0
    ppo_epochs: int = 1
    mini_batches: int = 1
    micro_batch_size: int = 8  # rows per forward/backward at most
    # ... and at most this many padded tokens (rows × longest row; a single longer row runs alone); same math at
    # any size (losses are normalised by mini-batch totals). None: 4,096 on CPU, where long rows in big
    # micro-batches thrash caches (2 cores: 32 rows × 560 tokens 13.3 s, 8 × 560 7.8 s), and 16,384 on a GPU
    # (verl's ppo_max_token_len_per_gpu; an H200, 0.5B model: 2.2× the tokens/s of 4,096, docs/vllm.md). 0: rows only.
    micro_batch_tokens: int | None = None
    lr: float = 1e-5
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    temperature: float = 1.0
    logprob_chunk: int = 1024
    share_prefix: int = 32  # rows of a micro-batch with the same prompt (≥ this many tokens) run it once; 0 disables
    bf16: bool = True  # autocast on CUDA only; CPU runs in float32
    # Plug-ins (agentenv/learn/plugins/, one module each): name -> its settings, off unless named here.
    # `--learner.plugins=A,B` (defaults) or `--learner.plugins.A.KEY=VALUE`; agentenv/learn/plugin.py.
    plugins: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.micro_batch_size < 1 or (self.micro_batch_tokens or 0) < 0:
            raise UserError(f"learner.micro_batch_size must be >= 1 and learner.micro_batch_tokens >= 0, got "
                            f"{self.micro_batch_size} and {self.micro_batch_tokens}")
        self.plugins = plugin_configs(self.plugins)

    def apply_override(self, key: str, value: Any, where: str) -> bool:
        """`preset` (a named bundle of overrides, presets.py) and `plugins[.NAME[.KEY]]` (see `plugin_configs`)."""
        head, _, rest = key.partition(".")
        if head == "preset":
            try:
                apply_overrides(self, learner_preset(value), where)
            except ValueError as err:
                raise UserError(str(err)) from None
            return True
        if head != "plugins":
            return False
        if isinstance(value, str):  # "a,b", "[a]", "" or a YAML mapping
            loaded = yaml.safe_load(value) if value.strip() else None
            value = [] if loaded is None else loaded
        name, _, setting = rest.partition(".")
        entries = dict(self.plugins)
        if not name:
            entries = value
        elif setting:  # one setting of one plug-in (switching it on if it was off)
            config = entries.get(name) or plugin_configs({name: None}, f"{where}plugins")[name]
            apply_overrides(config, {setting: value}, f"{where}plugins.{name}.")
            entries[name] = config
        else:
            entries[name] = value
        self.plugins = plugin_configs(entries, f"{where}plugins")
        return True


# -- 1. advantages ---------------------------------------------------------------------------------


def episode_advantages(episodes: Sequence[Episode], cfg: LearnerConfig, kl_per_episode: torch.Tensor | None = None, *,
                       plugins: Sequence[Plugin] | None = None, ctx: StepContext | None = None) -> torch.Tensor:
    """One advantage per episode, `[E]`, from `episode.reward` and `episode.group_id`.

    `plugins` default to fresh instances of `cfg.plugins`; a run passes its own (they may keep state across
    steps) and the step's `ctx`.
    """
    plugins = build_plugins(cfg) if plugins is None else plugins
    ctx = ctx if ctx is not None else StepContext(cfg)
    rewards = torch.tensor([float(e.reward) for e in episodes], dtype=torch.float64)
    groups = torch.tensor([int(e.group_id) for e in episodes], dtype=torch.long)
    for plugin in plugins:
        rewards = plugin.rewards(rewards, episodes, ctx)
    if cfg.overlong_buffer > 0:
        lengths = torch.tensor([sum(sum(s.loss_mask) for s in e.samples) for e in episodes], dtype=torch.float64)
        rewards = rewards + F.overlong_penalty(lengths, cfg.overlong_max_tokens, cfg.overlong_buffer, cfg.overlong_factor)
    if cfg.kl_in_reward and kl_per_episode is not None:
        rewards = rewards - cfg.kl_coef * kl_per_episode.to(rewards)
    if cfg.advantage == "grpo":
        adv = F.grpo_advantages(rewards, groups, scale=cfg.scale_rewards, std=cfg.std, eps=cfg.adv_eps)
    elif cfg.advantage == "rloo":
        adv = F.rloo_advantages(rewards, groups)
    elif cfg.advantage == "reinforce_pp_baseline":
        adv = F.reinforce_pp_baseline_advantages(rewards, groups)
    else:
        raise ValueError(f"unknown advantage estimator {cfg.advantage!r}: grpo | rloo | reinforce_pp_baseline")
    for plugin in plugins:
        adv = plugin.advantages(adv, episodes, ctx)
    if cfg.filter_zero_variance:
        adv = adv * F.nonzero_variance_group_mask(rewards, groups).to(adv)
    if cfg.mask_truncated:
        adv = adv * torch.tensor([0.0 if e.truncated else 1.0 for e in episodes], dtype=adv.dtype)
    return adv.float()


# -- 2. batch --------------------------------------------------------------------------------------


@dataclass
class Batch:
    """Padded rows, one per Sample. Targets are shifted: column t holds token t+1 of the sample.

    input_ids, attention_mask: [B, L]; targets, loss_mask, old_logp: [B, L-1]; advantages: [B].
    inputs: the samples' non-text model inputs (`Sample.inputs`), each key stacked over the A items of all rows
    in row-major order (the order the forward fills placeholder ids in): [A, ...]; input_rows: [A], the row of
    each item. Empty for text.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: torch.Tensor
    loss_mask: torch.Tensor
    old_logp: torch.Tensor
    advantages: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    input_rows: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def rows(self, index: torch.Tensor) -> "Batch":
        """The sub-batch of rows `index`, trimmed to its longest row (less padding, less compute); its items follow
        the new row order."""
        length = int(self.attention_mask[index].sum(-1).max())
        cut = lambda t, n: t[index, :n]  # noqa: E731
        inputs, input_rows = self.inputs, self.input_rows
        if inputs:  # on the items' device: `index` may come from a CPU generator while the batch is on a GPU
            at = index.to(self.input_rows.device)
            new_row = torch.full((len(self),), -1, dtype=torch.long, device=at.device)
            new_row[at] = torch.arange(len(at), device=at.device)
            kept = (new_row[self.input_rows] >= 0).nonzero().squeeze(-1)
            kept = kept[torch.sort(new_row[self.input_rows[kept]], stable=True).indices]  # by new row, in-row order kept
            inputs, input_rows = {k: v[kept] for k, v in inputs.items()}, new_row[self.input_rows[kept]]
        return Batch(
            cut(self.input_ids, length), cut(self.attention_mask, length), cut(self.targets, length - 1),
            cut(self.loss_mask, length - 1), cut(self.old_logp, length - 1), self.advantages[index],
            {k: cut(v, length - 1) if v.dim() == 2 else v[index] for k, v in self.extras.items()}, inputs, input_rows,
        )

    def to(self, device: torch.device | str) -> "Batch":
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.input_ids), move(self.attention_mask), move(self.targets), move(self.loss_mask),
                     move(self.old_logp), move(self.advantages), {k: move(v) for k, v in self.extras.items()},
                     {k: move(v) for k, v in self.inputs.items()}, move(self.input_rows))


def make_batch(episodes: Sequence[Episode], advantages: torch.Tensor, pad_id: int, *, plugins: Sequence[Plugin] = (),
               ctx: StepContext | None = None) -> Batch:
    """Right-padded rows for every Sample of every episode; a sample takes its episode's advantage.

    `plugins` may add per-token inputs to `extras`; `extras["token_advantages"]` `[B, L-1]`, when a plug-in
    sets it, replaces the row advantage in `policy_loss` (e.g. one advantage per turn).
    """
    samples = [(s, float(a)) for e, a in zip(episodes, advantages.tolist()) for s in e.samples]
    length = max(len(s.token_ids) for s, _ in samples)
    n = len(samples)
    input_ids = torch.full((n, length), pad_id, dtype=torch.long)
    attention = torch.zeros((n, length), dtype=torch.long)
    loss_mask = torch.zeros((n, length), dtype=torch.float32)
    old_logp = torch.zeros((n, length), dtype=torch.float32)
    control = torch.zeros((n, length), dtype=torch.float32)
    for i, (s, _) in enumerate(samples):
        k = len(s.token_ids)
        input_ids[i, :k] = torch.tensor(s.token_ids)
        attention[i, :k] = 1
        loss_mask[i, :k] = torch.tensor(s.loss_mask, dtype=torch.float32)
        old_logp[i, :k] = torch.tensor(s.old_logprobs, dtype=torch.float32)
        if getattr(s, "control_mask", None):
            control[i, :k] = torch.tensor(s.control_mask, dtype=torch.float32)
    adv = torch.tensor([a for _, a in samples], dtype=torch.float32)
    # the sampler's own log-probs stay here: old_logp becomes the learner's π_old in `update`
    extras = {"control_mask": control[:, 1:].contiguous(), "sampler_logp": old_logp[:, 1:].contiguous()}
    inputs, input_rows = stack_inputs([getattr(s, "inputs", ()) for s, _ in samples])  # duck-typed samples may have none
    batch = Batch(input_ids, attention, input_ids[:, 1:].clone(), loss_mask[:, 1:].contiguous(),
                  old_logp[:, 1:].contiguous(), adv, extras, inputs, torch.tensor(input_rows, dtype=torch.long))
    for plugin in plugins:
        plugin.prepare_batch(batch, episodes, advantages, ctx)
    return batch


# -- 3. log-probs ----------------------------------------------------------------------------------


def _right_padded(mask: torch.Tensor) -> bool:
    """True when every row of an attention mask `[B, L]` is ones then zeros (no left padding, no holes)."""
    return not bool((mask[:, 1:] > mask[:, :-1]).any())


def _shared_prefix(batch: Batch, min_length: int) -> tuple[int, torch.Tensor, torch.Tensor] | None:
    """(P, unique prefixes [U, P], row → prefix index [B]) when rows share their first P tokens, else None.

    Two candidates, whichever saves more tokens ((B − U)·P): P = the shortest prompt of the batch (tokens
    before a row's first loss position; a GRPO group's samples share it), or P = the tokens every row opens
    with (a system prompt shared by different tasks, as in SFT batches; U = 1). Either way P ends at or
    before every row's first target, so those tokens are real; rows are right-padded (as `make_batch` builds
    them), so none has padding there.
    """
    mask = batch.attention_mask
    if min_length <= 0 or len(batch) < 2 or not _right_padded(mask):
        return None
    has_loss = batch.loss_mask.sum(-1) > 0
    start = torch.where(has_loss, batch.loss_mask.argmax(-1) + 1, mask.sum(-1))  # token index of the first target
    length = int(start.min())
    if length < min_length or length >= batch.input_ids.shape[1]:
        return None
    prompts = batch.input_ids[:, :length]
    prefixes, inverse = torch.unique(prompts, dim=0, return_inverse=True)
    differs = (prompts != prompts[:1]).any(0)
    common = int(differs.int().argmax()) if bool(differs.any()) else length
    if common >= min_length and (len(batch) - 1) * common > (len(batch) - prefixes.shape[0]) * length:
        return common, prompts[:1, :common], torch.zeros(len(batch), dtype=torch.long, device=prompts.device)
    return (length, prefixes, inverse) if prefixes.shape[0] < len(batch) else None


def _last_hidden(model: torch.nn.Module, **inputs: Any) -> torch.Tensor:
    """The final (normed) hidden states `[B, L, H]`, from the model's own forward rather than `model.base_model`:
    a sharded (FSDP2) model gathers its root unit in the hooks of that forward, and keeps it gathered (the head
    weight `token_logprobs` reads included) until backward. Logits are computed for the last position only, and
    only the last hidden state is kept (`output_hidden_states=-1` selects it in transformers 5; 4.x keeps all)."""
    return model(**inputs, logits_to_keep=1, output_hidden_states=-1).hidden_states[-1]


def final_hidden(model: torch.nn.Module, batch: Batch, share_prefix: int = 0) -> torch.Tensor:
    """The last hidden states `[B, L-1, H]` at the positions that predict `batch.targets`.

    With `share_prefix` > 0, rows whose first P ≥ `share_prefix` tokens are the same prompt (a GRPO group's
    samples) run those P tokens through the model once; each row continues from that prompt's KV cache,
    which autograd carries back to the shared forward. Same values and gradients up to float rounding, and
    the prompt's forward+backward is paid once per group instead of once per sample. A sharded model takes
    that path only when every rank can (it runs two forwards, each a collective).

    Non-text inputs (`batch.inputs`, audio features) go into the forward by name, and such a batch is run
    whole: a shared prefix's ids would not say which audio its placeholders hold.
    """
    shared = None if batch.inputs else _shared_prefix(batch, share_prefix)
    if not D.on_every_rank(model, shared is not None):
        shared = None
    if shared is None:
        # A right-padded batch needs no padding mask: padding sits after every real position, so the causal mask
        # alone gives the real positions the same values, and attention can take its plain causal kernel.
        mask = None if _right_padded(batch.attention_mask) else batch.attention_mask
        return _last_hidden(model, input_ids=batch.input_ids, attention_mask=mask, **batch.inputs)[:, :-1]
    from transformers import DynamicCache

    length, prefixes, inverse = shared
    cache = DynamicCache(config=model.config)
    head = _last_hidden(model, input_ids=prefixes, **cache_kwargs(model, cache), use_cache=True)
    cache.batch_select_indices(inverse)
    # Right padding only: a padded position sits after every real one, so the causal mask alone is exact for
    # the real positions (the padded ones are masked out of every loss).
    tail = _last_hidden(model, input_ids=batch.input_ids[:, length:], **cache_kwargs(model, cache), use_cache=True)
    return torch.cat([head[inverse], tail], dim=1)[:, :-1]


def token_logprobs(model: torch.nn.Module, batch: Batch, temperature: float = 1.0, chunk: int = 1024,
                   with_entropy: bool = False, hidden: torch.Tensor | None = None,
                   mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π_θ(target) `[B, L-1]` (and entropy) from the final hidden states (`hidden`, or a forward), chunked over rows.

    With `mask` ([B, L-1], e.g. the loss mask) only the positions where it is nonzero go through the output
    layer (prompt, env and padding positions cost nothing there); the others hold 0.
    """
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise ValueError("token_logprobs expects an output layer without bias (true of Llama/Qwen/Mistral heads)")
    hidden = final_hidden(model, batch) if hidden is None else hidden
    targets = batch.targets
    if mask is not None:
        keep = mask != 0
        hidden, targets = hidden[keep], targets[keep]
    out = F.selective_log_probs(hidden, head.weight, targets, temperature=temperature, chunk=chunk,
                                return_entropy=with_entropy)
    if mask is not None:
        scatter = lambda x: x.new_zeros(keep.shape).masked_scatter(keep, x)  # noqa: E731 - differentiable
        out = tuple(scatter(x) for x in out) if with_entropy else scatter(out)
    return (out[0], out[1]) if with_entropy else (out, None)


# -- 4. loss ---------------------------------------------------------------------------------------


def policy_loss(logp: torch.Tensor, batch: Batch, cfg: LearnerConfig, *, num_tokens: float, num_seqs: float,
                norm_const: float, ref_logp: torch.Tensor | None = None, entropy: torch.Tensor | None = None,
                plugins: Sequence[Plugin] = (), ctx: StepContext | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Scalar loss of one micro-batch, normalised by mini-batch totals so micro-batch losses sum exactly.

    `plugins` reshape the token advantages and the per-token loss (`Plugin.token_advantages`, `token_loss`);
    they read their inputs from `batch.extras`.
    """
    mask = batch.loss_mask
    adv = batch.extras.get("token_advantages")  # per-turn advantages from a plug-in, else one per row
    if adv is None:
        adv = batch.advantages[:, None].expand_as(logp)
    ctx = ctx if ctx is not None else StepContext(cfg)
    for plugin in plugins:
        adv = plugin.token_advantages(adv, logp.detach(), batch, ctx)
    if cfg.ratio_level == "sequence":
        log_ratio = F.sequence_log_ratio(logp, batch.old_logp, mask).expand_as(logp)
    else:
        log_ratio = F.token_log_ratio(logp, batch.old_logp)
    if cfg.loss == "ppo_clip":
        per_token, clipped = F.ppo_clip_loss(log_ratio, adv, cfg.eps_low, cfg.eps_high, dual_clip=cfg.dual_clip)
    elif cfg.loss == "cispo":
        per_token, clipped = F.cispo_loss(logp, log_ratio, adv, cfg.cispo_cap)
    elif cfg.loss == "sapo":
        per_token, clipped = F.sapo_loss(log_ratio, adv), torch.zeros_like(mask)
    elif cfg.loss == "gpg":
        per_token, clipped = F.gpg_loss(logp, adv), torch.zeros_like(mask)
    else:
        raise ValueError(f"unknown loss {cfg.loss!r}: ppo_clip | cispo | sapo | gpg")
    terms = LossTerms(per_token, clipped, logp, log_ratio, adv, num_tokens, {})
    for plugin in plugins:
        plugin.token_loss(terms, batch, ctx)
    per_token, clipped, metrics = terms.per_token, terms.clipped, terms.metrics
    sampler_logp = batch.extras.get("sampler_logp")
    if sampler_logp is not None:
        kl, diff = F.sampler_mismatch(batch.old_logp, sampler_logp, mask)
        share = float(mask.sum()) / num_tokens  # micro-batch metrics sum to the mini-batch's token mean
        metrics["sampler_kl"], metrics["sampler_logp_diff"] = float(kl) * share, float(diff) * share
        if cfg.sampler_correction != "none":
            weight = F.sampler_correction(batch.old_logp, sampler_logp, mask, cfg.sampler_correction, cfg.sampler_cap,
                                          cfg.sampler_correction_level)
            per_token = per_token * weight
            metrics["sampler_weight"] = float((weight * mask).sum()) / num_tokens
    if ref_logp is not None and cfg.kl_coef > 0 and not cfg.kl_in_reward:
        kl = F.kl_penalty(logp, ref_logp, kind=cfg.kl_estimator)
        per_token = per_token + cfg.kl_coef * kl
        metrics["kl"] = float((kl.detach() * mask).sum() / num_tokens)
    if entropy is not None and cfg.entropy_coef > 0:
        per_token = per_token - cfg.entropy_coef * entropy
    loss = F.aggregate(per_token, mask, cfg.aggregation, num_tokens_global=num_tokens, num_seqs_global=num_seqs,
                       norm_const=norm_const)
    with torch.no_grad():
        metrics["clip_frac"] = float((clipped.float() * mask).sum() / num_tokens)
        metrics["approx_kl"] = float(((-log_ratio) * mask).sum() / num_tokens)  # k1 estimate of KL(old‖θ)
        if entropy is not None:
            metrics["entropy"] = float((entropy * mask).sum() / num_tokens)
    return loss, metrics


# -- 5. update -------------------------------------------------------------------------------------


def autocast(device: torch.device, cfg: LearnerConfig):
    """bf16 autocast on CUDA when `cfg.bf16`; a no-op context on CPU."""
    enabled = cfg.bf16 and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def token_budget(cfg: LearnerConfig, device: torch.device) -> int:
    """`cfg.micro_batch_tokens`, or its default for `device` when None (see the field)."""
    if cfg.micro_batch_tokens is not None:
        return cfg.micro_batch_tokens
    return 16_384 if device.type == "cuda" else 4_096


def micro_batch_rows(batch: Batch, index: torch.Tensor, cfg: LearnerConfig) -> list[torch.Tensor]:
    """`index` cut in order into runs of at most `cfg.micro_batch_size` rows and `cfg.micro_batch_tokens` padded
    tokens. Order is kept, so a GRPO group's rows stay together and still share their prompt's forward."""
    lengths = batch.attention_mask.sum(-1)[index].tolist()
    budget = token_budget(cfg, batch.input_ids.device)
    runs: list[torch.Tensor] = []
    start, longest = 0, 0
    for end, length in enumerate(lengths):
        longest = max(longest, length)
        count = end - start + 1
        if count > 1 and (count > cfg.micro_batch_size or (budget and count * longest > budget)):
            runs.append(index[start:end])
            start, longest = end, length
    if start < len(lengths):
        runs.append(index[start:])
    return runs


def _micro_batches(batch: Batch, index: torch.Tensor, cfg: LearnerConfig, model: torch.nn.Module | None = None):
    """(rows, micro-batch) over `index` (`micro_batch_rows`). A sharded model's forward is a collective, so
    every rank runs as many micro-batches as the busiest one (`D.lockstep_count`): the extra ones are one row of
    the batch with its loss mask zeroed (rows None), whose loss, gradient and metrics are exactly zero."""
    runs = micro_batch_rows(batch, index, cfg)
    fillers = D.lockstep_count(model, len(runs)) - len(runs)  # before the first forward: it is a collective too
    for rows in runs:
        yield rows, batch.rows(rows)
    for _ in range(fillers):
        filler = batch.rows(torch.zeros(1, dtype=torch.long, device=batch.input_ids.device))
        filler.loss_mask = torch.zeros_like(filler.loss_mask)
        yield None, filler


def update(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, cfg: LearnerConfig, *,
           plugins: Sequence[Plugin] | None = None, ref_model: torch.nn.Module | None = None,
           generator: torch.Generator | None = None, step: int = 0, ctx: StepContext | None = None) -> dict[str, float]:
    """PPO epochs × mini-batches × micro-batches over `batch`; one optimizer step per mini-batch.

    With one epoch and one mini-batch the update is on-policy and π_old is π_θ itself (detached), as in
    TRL; otherwise π_old is recomputed once before the first step so every ratio is exact.
    `step` is the training step and `generator` orders the mini-batches; both reach the plug-ins through
    `ctx`. `plugins` default to fresh instances of `cfg.plugins`.
    """
    plugins = build_plugins(cfg) if plugins is None else plugins
    ctx = ctx if ctx is not None else StepContext(cfg, step)
    ctx.model, ctx.ref_model, ctx.generator, ctx.step = model, ref_model, generator, step
    device = next(model.parameters()).device
    batch = batch.to(device)
    on_policy = cfg.ppo_epochs == 1 and cfg.mini_batches == 1
    if not on_policy:
        batch.old_logp = recompute_logprobs(model, batch, cfg)
    for plugin in plugins:
        if plugin.needs_ref_model and ref_model is None:
            raise ValueError(f"plug-in {plugin.name!r} needs ref_model, a reference copy of the policy")
        plugin.before_update(batch, ctx)
    if ref_model is not None and (cfg.kl_coef > 0 or any(plugin.needs_ref_model for plugin in plugins)):
        batch.extras["ref_logp"] = recompute_logprobs(ref_model, batch, cfg)
    totals: dict[str, float] = {}
    steps = 0
    rows = len(batch)
    world = D.rank_and_world()[1]  # data parallel: totals over every rank's rows, gradients summed
    norm_const = cfg.norm_const if cfg.norm_const is not None else D.global_max(batch.loss_mask.shape[1])
    for epoch in range(cfg.ppo_epochs):
        for plugin in plugins:
            plugin.start_epoch(batch, epoch, ctx)
        order = torch.randperm(rows, generator=generator) if cfg.mini_batches > 1 else torch.arange(rows)
        minis = list(order.chunk(cfg.mini_batches))
        if world > 1:  # every rank takes the same number of optimizer steps, even with fewer rows
            minis += [order[:0]] * (cfg.mini_batches - len(minis))
        for mini in minis:
            mask = batch.loss_mask[mini]
            num_tokens = max(D.global_sum(mask.sum()), 1.0)
            num_seqs = max(D.global_sum((mask.sum(-1) > 0).sum()), 1.0)
            step_metrics: dict[str, float] = {"loss": 0.0}
            for _, micro in _micro_batches(batch, mini, cfg, model):
                with autocast(device, cfg):
                    hidden = final_hidden(model, micro, cfg.share_prefix)
                    # only loss positions are scored; the plug-ins' per-token terms are masked the same way
                    logp, entropy = token_logprobs(model, micro, cfg.temperature, cfg.logprob_chunk,
                                                   with_entropy=cfg.entropy_coef > 0, hidden=hidden, mask=micro.loss_mask)
                    for plugin in plugins:
                        plugin.forward(model, hidden, logp, micro, ctx)
                if on_policy:
                    micro.old_logp = logp.detach()
                loss, metrics = policy_loss(logp, micro, cfg, num_tokens=num_tokens, num_seqs=num_seqs, norm_const=norm_const,
                                            ref_logp=micro.extras.get("ref_logp"), entropy=entropy, plugins=plugins, ctx=ctx)
                loss.backward()
                step_metrics["loss"] += float(loss.detach())
                for key, value in metrics.items():
                    step_metrics[key] = step_metrics.get(key, 0.0) + value
            if world > 1:
                D.all_reduce_gradients(model)
                keys = sorted(set().union(*D.gather_objects(list(step_metrics))))  # a rank may have had no rows
                step_metrics = {key: D.global_sum(step_metrics.get(key, 0.0)) for key in keys}
            step_metrics["grad_norm"] = D.clip_grad_norm(model, cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            for key, value in step_metrics.items():
                totals[key] = totals.get(key, 0.0) + value
            steps += 1
    return {key: value / steps for key, value in totals.items()}


@torch.no_grad()
def recompute_logprobs(model: torch.nn.Module, batch: Batch, cfg: LearnerConfig) -> torch.Tensor:
    """log π(target) `[B, L-1]` of `model` for every loss position of `batch` (no grad, micro-batched); 0 elsewhere."""
    device = next(model.parameters()).device
    batch = batch.to(device)
    out = torch.zeros_like(batch.old_logp)
    for rows, micro in _micro_batches(batch, torch.arange(len(batch), device=device), cfg, model):
        with autocast(device, cfg):
            logp, _ = token_logprobs(model, micro, cfg.temperature, cfg.logprob_chunk,
                                     hidden=final_hidden(model, micro, cfg.share_prefix), mask=micro.loss_mask)
        if rows is not None:
            out[rows, : logp.shape[1]] = logp.float()
    return out


def sft_update(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, cfg: LearnerConfig, *,
               plugins: Sequence[Plugin] = ()) -> float:
    """One supervised step on demonstration tokens: token-mean NLL over the loss mask, plus the plug-ins'
    `sft_loss` terms (e.g. a head a plug-in added), normalised by the same token count."""
    device = next(model.parameters()).device
    batch = batch.to(device)
    num_tokens = float(batch.loss_mask.sum().clamp(min=1))
    ctx = StepContext(cfg, model=model)
    total = 0.0
    for _, micro in _micro_batches(batch, torch.arange(len(batch), device=device), cfg):
        with autocast(device, cfg):
            hidden = final_hidden(model, micro, cfg.share_prefix)
            logp, _ = token_logprobs(model, micro, 1.0, cfg.logprob_chunk, hidden=hidden, mask=micro.loss_mask)
            per_token = -logp
            for plugin in plugins:
                extra = plugin.sft_loss(model, hidden, micro, ctx)
                if extra is not None:
                    per_token = per_token + extra
        # a plug-in's term is zero off its own mask, which lies within the loss mask
        loss = F.aggregate(per_token, micro.loss_mask, "token-mean", num_tokens_global=num_tokens)
        loss.backward()
        total += float(loss.detach())
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total
