"""The learner: rollout Episodes → advantages → padded batch → policy-gradient update. Read top to bottom.

One update (`update`) does what verl's actor and TRL's GRPOTrainer do, split into stages:

1. `episode_advantages`: sequence rewards → one advantage per episode (GRPO/Dr.GRPO/RLOO/REINFORCE++),
   optionally zeroing groups with no reward variance (DAPO dynamic sampling) and truncated episodes.
2. `make_batch`: every Sample becomes one padded row; loss masks drop prompt and env/tool tokens;
   row t holds the target token t+1, so `logp[:, t]` lines up with `loss_mask[:, t]`.
3. `token_logprobs`: log π_θ of the targets from the last hidden state, chunked over the vocabulary
   (`objectives.selective_log_probs`): a [T, V] logits tensor is never materialised.
4. `policy_loss`: ratio → loss form → aggregation, plus KL and entropy terms; all pure functions in
   `objectives.py`, normalised by the whole mini-batch so gradient accumulation is exact.
5. `update`: PPO epochs × shuffled mini-batches × micro-batches, grad clipping, one optimizer step per
   mini-batch; bf16 autocast on CUDA.

The seed-paper plug-ins (`plugins/`, one module per paper, all off by default) hook into stages 1, 3, 4
and 5, each behind `if ... in cfg.plugins`; `plugins/__init__.py` has the table of where.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch

from agentenv.policies import objectives as F
from agentenv.policies import plugins as P
from agentenv.policies.kv_cache import cache_kwargs

__all__ = ["LearnerConfig", "Batch", "episode_advantages", "make_care_probe", "care_hidden_states", "make_batch",
           "final_hidden", "token_logprobs", "policy_loss", "update", "teacher_logprobs", "sft_update"]


@dataclass
class LearnerConfig:
    """Every knob of the update; the defaults are DAPO-style GRPO (clip-higher, token-mean, no KL)."""

    advantage: Literal["grpo", "rloo", "reinforce_pp_baseline"] = "grpo"  # grpo | rloo | reinforce_pp_baseline
    scale_rewards: Literal["group", "batch", "none"] = "group"  # group | batch | none (Dr.GRPO)
    std: Literal["unbiased", "population"] = "unbiased"  # unbiased | population (CARE)
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
    # ZipRL's Hindsight Response Replay (policies/hrr.py): per-turn reshaping by the env's Q_com; 0 = plain GRPO
    hrr_beta: float = 0.0
    hrr_mode: Literal["add", "mul"] = "add"  # add: A + β·D | mul: A·(1 + β·D)
    hrr_group_norm: bool = False  # divide D by its std over the GRPO group's turns
    mask_truncated: bool = False  # zero the loss of episodes cut by the turn or length limit
    filter_zero_variance: bool = False  # DAPO dynamic sampling: drop groups whose rewards are all equal
    overlong_buffer: int = 0  # DAPO overlong penalty on generated tokens; 0 disables
    overlong_max_tokens: int = 0
    overlong_factor: float = 1.0
    ppo_epochs: int = 1
    mini_batches: int = 1
    micro_batch_size: int = 8
    lr: float = 1e-5
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    temperature: float = 1.0
    logprob_chunk: int = 1024
    share_prefix: int = 32  # rows of a micro-batch with the same prompt (≥ this many tokens) run it once; 0 disables
    bf16: bool = True  # autocast on CUDA only; CPU runs in float32
    # Seed-paper plug-ins (agentenv/policies/plugins/, one module per paper): each is off unless named in
    # `plugins`; `--learner.preset=NAME` loads a bundle (presets.py). Values marked "guess" are not published.
    plugins: list[Literal["care", "amr_sd", "divergence", "direction", "fipo", "owpo", "nsr", "ih_grpo", "occ"]] = field(default_factory=list)  # care | amr_sd | divergence | direction | fipo | owpo | nsr | ih_grpo | occ
    care_acquisition: Literal["probe", "heuristic", "oracle"] = "probe"  # probe (CARE's learned probe) | heuristic (cluster statistics for it) | oracle
    care_top_pct: float = 0.2  # label budget: ground truth for this fraction of each step's prompts
    care_prob_gate: float = 0.25  # fraction of prompts gated as "majority correct"
    care_soft_adv: float = 1.0
    care_warmup: int = 20  # steps before the gate opens
    care_probe_lr: float = 1e-4  # CARE's probe (al-rule.sh): AdamW, no weight decay
    care_probe_train_steps: int = 3  # passes per learner step over the queried prompts + a buffer draw
    care_probe_buffer: int = 2048  # replay buffer of queried prompts
    care_probe_batch: int = 16  # buffer prompts drawn per pass
    care_probe_aux_weight: float = 1.5  # stage 1's per-response correctness loss
    care_len_norm: int = 4000  # response lengths / this (the paper's max response length), clipped to 1
    amr_lambda: float = 0.5  # guess; annealed linearly to 0 over amr_anneal_steps
    amr_anneal_steps: int = 50  # guess
    amr_tau_pos: float = 0.2  # guess
    amr_tau_neg: float = 0.5  # guess
    amr_mode: Literal["add", "mul"] = "add"  # add | mul
    amr_hint_tokens: int = 24  # length limit of the self-generated reflection hint
    divergence_scale: float = 0.5  # guess (the notes' worked example)
    divergence_alpha: float = 10.0  # > 0 boosts high-KL tokens, < 0 low-KL tokens
    direction_c: float = 0.2  # Qwen2.5-Math-7B; 0.1 for Qwen3-8B-Base
    direction_adv_mask: Literal["none", "positive", "negative"] = "none"  # none | positive | negative
    fipo_decay_rate: float = 32.0
    fipo_eps: float = 0.2
    fipo_clip_high_only: bool = False
    fipo_safety: float = 4.0
    fipo_max_ratio: float | None = 10.0
    owpo_kappa: float = 1.0  # guess
    owpo_delta_max: float = 1.0  # guess
    owpo_ratchet_every: int = 10  # guess; update() copies π_θ into its ref_model every this many steps
    nsr_band: float = 0.1  # guess
    nsr_prob: float = 0.5  # guess
    ih_lambda: float = 0.001
    ih_token_id: int | None = None  # the control token v; `agentenv train` fills in the tokenizer's <execute/>
    ih_mask: Literal["response", "control"] = "response"  # response (the paper's code) | control (control spans only)
    occ_scale: float = 0.1


# -- 1. advantages ---------------------------------------------------------------------------------


def episode_advantages(episodes: Sequence[Any], cfg: LearnerConfig, kl_per_episode: torch.Tensor | None = None,
                       step: int = 0, *, model: torch.nn.Module | None = None,
                       care_probe: P.CareProbe | None = None) -> torch.Tensor:
    """One advantage per episode, `[E]`, from `episode.reward` and `episode.group_id` (`step`: CARE's warm-up).

    CARE with `care_acquisition="probe"` also needs the policy `model` (one no-grad forward for the probe's
    hidden states) and its `care_probe` (`make_care_probe`), which this call trains on the queried prompts.
    """
    rewards = torch.tensor([float(e.reward) for e in episodes], dtype=torch.float64)
    groups = torch.tensor([int(e.group_id) for e in episodes], dtype=torch.long)
    if "care" in cfg.plugins:  # CARE: majority-vote pseudo-labels; the verifier's reward only for selected prompts
        answers = P.answer_ids([P.final_answer(e.messages) for e in episodes])
        features = None
        if cfg.care_acquisition == "probe":
            if model is None or care_probe is None:
                raise ValueError("care_acquisition='probe' needs episode_advantages(..., model=policy model, "
                                 "care_probe=make_care_probe(...))")
            features = P.probe_features(answers, groups, *care_hidden_states(model, episodes, cfg),
                                        len_norm=cfg.care_len_norm)
        rewards, care_scale, _ = P.care_labels(rewards, answers, groups, acquisition=cfg.care_acquisition,
                                               top_pct=cfg.care_top_pct, prob_gate=cfg.care_prob_gate,
                                               soft_adv=cfg.care_soft_adv, gate=step >= cfg.care_warmup,
                                               probe=care_probe, features=features)
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
    if "care" in cfg.plugins:
        adv = adv * care_scale
    if cfg.filter_zero_variance:
        adv = adv * F.nonzero_variance_group_mask(rewards, groups).to(adv)
    if cfg.mask_truncated:
        adv = adv * torch.tensor([0.0 if e.truncated else 1.0 for e in episodes], dtype=adv.dtype)
    return adv.float()


def make_care_probe(model: torch.nn.Module, cfg: LearnerConfig, group_size: int, seed: int) -> P.CareProbe | None:
    """CARE's probe for this policy's hidden size and `group_size` responses per prompt; None unless the run uses it."""
    if "care" not in cfg.plugins or cfg.care_acquisition != "probe":
        return None
    return P.CareProbe(model.config.hidden_size, group_size, seed=seed, lr=cfg.care_probe_lr,
                       train_steps=cfg.care_probe_train_steps, buffer_size=cfg.care_probe_buffer,
                       batch_size=cfg.care_probe_batch, aux_weight=cfg.care_probe_aux_weight)


def _generated(mask: Sequence[int]) -> list[int]:
    return [i for i, m in enumerate(mask) if m]


@torch.no_grad()
def care_hidden_states(model: torch.nn.Module, episodes: Sequence[Any],
                       cfg: LearnerConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CARE's probe inputs from one no-grad pass of the policy over the episodes (CPU, float32):

    prompt [E, H], the last-layer hidden state at the prompt's last token (first sample); response [E, H],
    at the last generated token (last sample; the paper's `compute_probe_stage1_features`); lengths [E],
    generated tokens. Micro-batches of `cfg.micro_batch_size` rows share each group's prompt forward
    (`final_hidden`'s `share_prefix`).
    """
    device = next(model.parameters()).device
    sequences: list[list[int]] = []
    masks: list[list[int]] = []
    prompt_at: list[tuple[int, int]] = []  # (row, position) per episode
    response_at: list[tuple[int, int]] = []
    for e in episodes:
        first, last = e.samples[0], e.samples[-1]
        first_row = len(sequences)
        for sample in (first,) if last is first else (first, last):  # one row unless a compressor split the episode
            sequences.append(list(sample.token_ids))
            masks.append(list(sample.loss_mask))
        generated = _generated(first.loss_mask)
        prompt_at.append((first_row, max(generated[0] - 1, 0) if generated else len(first.token_ids) - 1))
        generated = _generated(last.loss_mask)
        response_at.append((len(sequences) - 1, generated[-1] if generated else len(last.token_ids) - 1))
    # one trailing token per row: final_hidden drops the last column, so every real position stays in range
    length = max(len(ids) for ids in sequences) + 1
    ids = torch.zeros(len(sequences), length, dtype=torch.long)
    attention = torch.zeros_like(ids)
    loss_mask = torch.zeros(len(sequences), length, dtype=torch.float32)
    for row, (tokens, mask) in enumerate(zip(sequences, masks)):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        attention[row, : len(tokens) + 1] = 1
        loss_mask[row, : len(mask)] = torch.tensor(mask, dtype=torch.float32)
    empty = torch.zeros(len(sequences), length - 1)
    batch = Batch(ids, attention, ids[:, 1:], loss_mask[:, 1:], empty, torch.zeros(len(sequences)))
    wanted = sorted(set(prompt_at) | set(response_at))  # keep only these (row, position) states, not [B, L, H]
    kept: dict[tuple[int, int], torch.Tensor] = {}
    for start in range(0, len(batch), cfg.micro_batch_size):
        rows = torch.arange(start, min(start + cfg.micro_batch_size, len(batch)))
        with _autocast(device, cfg):
            out = final_hidden(model, batch.rows(rows).to(device), cfg.share_prefix)
        here = [(row, pos) for row, pos in wanted if start <= row < start + len(rows)]
        states = out[[row - start for row, _ in here], [pos for _, pos in here]].float().cpu()
        kept.update(zip(here, states))
    prompt = torch.stack([kept[at] for at in prompt_at])
    response = torch.stack([kept[at] for at in response_at])
    lengths = torch.tensor([float(sum(sum(s.loss_mask) for s in e.samples)) for e in episodes])
    return prompt, response, lengths


# -- 2. batch --------------------------------------------------------------------------------------


@dataclass
class Batch:
    """Padded rows, one per Sample. Targets are shifted: column t holds token t+1 of the sample.

    input_ids, attention_mask: [B, L]; targets, loss_mask, old_logp: [B, L-1]; advantages: [B].
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: torch.Tensor
    loss_mask: torch.Tensor
    old_logp: torch.Tensor
    advantages: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def rows(self, index: torch.Tensor) -> "Batch":
        """The sub-batch of rows `index`, trimmed to its longest row (less padding, less compute)."""
        length = int(self.attention_mask[index].sum(-1).max())
        cut = lambda t, n: t[index, :n]  # noqa: E731
        return Batch(
            cut(self.input_ids, length), cut(self.attention_mask, length), cut(self.targets, length - 1),
            cut(self.loss_mask, length - 1), cut(self.old_logp, length - 1), self.advantages[index],
            {k: cut(v, length - 1) if v.dim() == 2 else v[index] for k, v in self.extras.items()},
        )

    def to(self, device: torch.device | str) -> "Batch":
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.input_ids), move(self.attention_mask), move(self.targets), move(self.loss_mask),
                     move(self.old_logp), move(self.advantages), {k: move(v) for k, v in self.extras.items()})


def make_batch(episodes: Sequence[Any], advantages: torch.Tensor, pad_id: int, cfg: LearnerConfig | None = None) -> Batch:
    """Right-padded rows for every Sample of every episode; a sample takes its episode's advantage.

    With `cfg.hrr_beta` ≠ 0 (HRR), each turn's generated tokens take that turn's reshaped advantage instead:
    `extras["token_advantages"]` [B, L-1], which `policy_loss` uses when present.
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
    extras = {"control_mask": control[:, 1:].contiguous()}
    if cfg is not None and cfg.hrr_beta != 0.0:
        from agentenv.policies.hrr import token_advantages

        per_token = token_advantages(episodes, advantages.float(), length, beta=cfg.hrr_beta, mode=cfg.hrr_mode,
                                     group_norm=cfg.hrr_group_norm, eps=cfg.adv_eps)
        extras["token_advantages"] = per_token[:, 1:].contiguous()  # shifted like the targets
    return Batch(input_ids, attention, input_ids[:, 1:].clone(), loss_mask[:, 1:].contiguous(),
                 old_logp[:, 1:].contiguous(), adv, extras)


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


def final_hidden(model: torch.nn.Module, batch: Batch, share_prefix: int = 0) -> torch.Tensor:
    """The last hidden states `[B, L-1, H]` at the positions that predict `batch.targets`.

    With `share_prefix` > 0, rows whose first P ≥ `share_prefix` tokens are the same prompt (a GRPO group's
    samples) run those P tokens through the model once; each row continues from that prompt's KV cache,
    which autograd carries back to the shared forward. Same values and gradients up to float rounding, and
    the prompt's forward+backward is paid once per group instead of once per sample.
    """
    shared = _shared_prefix(batch, share_prefix)
    if shared is None:
        # A right-padded batch needs no padding mask: padding sits after every real position, so the causal mask
        # alone gives the real positions the same values, and attention can take its plain causal kernel.
        mask = None if _right_padded(batch.attention_mask) else batch.attention_mask
        return model.base_model(input_ids=batch.input_ids, attention_mask=mask).last_hidden_state[:, :-1]
    from transformers import DynamicCache

    length, prefixes, inverse = shared
    cache = DynamicCache(config=model.config)
    head = model.base_model(input_ids=prefixes, **cache_kwargs(model.base_model, cache), use_cache=True).last_hidden_state
    cache.batch_select_indices(inverse)
    # Right padding only: a padded position sits after every real one, so the causal mask alone is exact for
    # the real positions (the padded ones are masked out of every loss).
    tail = model.base_model(input_ids=batch.input_ids[:, length:], **cache_kwargs(model.base_model, cache), use_cache=True).last_hidden_state
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


def _plugin_outputs(model: torch.nn.Module, hidden: torch.Tensor, logp: torch.Tensor, batch: Batch, cfg: LearnerConfig) -> None:
    """Extra outputs of the same forward, into `batch.extras`: IH-GRPO's control token, OCC's MTP log-probs."""
    weight = model.get_output_embeddings().weight
    if "ih_grpo" in cfg.plugins:
        if cfg.ih_token_id is None:
            raise ValueError("ih_grpo needs learner.ih_token_id, the id of the control token")
        batch.extras["control_logp"], batch.extras["control_logit"] = P.control_token_outputs(
            hidden, weight, batch.targets, logp, cfg.ih_token_id, cfg.temperature)
    if "occ" in cfg.plugins:
        if not hasattr(model, "mtp_head"):
            raise ValueError("occ needs an MTP head: call plugins.attach_mtp_head(model) before building the optimizer")
        batch.extras["mtp_logp"] = P.mtp_logprobs(model.mtp_head, hidden, model.get_input_embeddings(), weight,
                                                  batch.targets, cfg.temperature, cfg.logprob_chunk)


# -- 4. loss ---------------------------------------------------------------------------------------


def _reshape_advantages(adv: torch.Tensor, logp: torch.Tensor, batch: Batch, cfg: LearnerConfig,
                        ref_logp: torch.Tensor | None, step: int) -> torch.Tensor:
    """Token-level advantage plug-ins, in the order of docs/anchors-learner.md Part 3. logp is detached."""
    if "amr_sd" in cfg.plugins:  # AMR-SD: CIG-gated credit from the reflection-conditioned teacher pass
        lam = P.annealed_lambda(step, cfg.amr_lambda, cfg.amr_anneal_steps)
        adv = P.amr_sd_advantages(adv, batch.extras["teacher_logp"], logp, lam, cfg.amr_tau_pos, cfg.amr_tau_neg, cfg.amr_mode)
    if "divergence" in cfg.plugins:  # weight by the token's own shift KL(π_old‖π_θ)
        adv = adv * P.divergence_weights(logp, batch.old_logp, cfg.divergence_scale, cfg.divergence_alpha)
    if "direction" in cfg.plugins:  # Δlog p: more weight where π_old was unlikely
        adv = adv * P.direction_weights(batch.old_logp, adv, cfg.direction_c, cfg.direction_adv_mask)
    if "fipo" in cfg.plugins:  # FIPO: discounted future KL
        adv = adv * P.fipo_weights(logp, batch.old_logp, adv, batch.loss_mask, cfg.fipo_decay_rate, cfg.fipo_eps,
                                   cfg.fipo_clip_high_only, cfg.fipo_safety, cfg.fipo_max_ratio)
    if "owpo" in cfg.plugins:  # OWPO: accelerate only where the policy is behind π_ref in the verifier's direction
        adv = adv * P.owpo_weights(logp, ref_logp, adv, cfg.owpo_kappa, cfg.owpo_delta_max)
    return adv


def _plugin_losses(per_token: torch.Tensor, clipped: torch.Tensor, logp: torch.Tensor, log_ratio: torch.Tensor,
                   adv: torch.Tensor, batch: Batch, cfg: LearnerConfig, metrics: dict[str, float],
                   num_tokens: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss-form and auxiliary-loss plug-ins on the policy-gradient loss per token (before KL and entropy)."""
    if "nsr" in cfg.plugins:  # NSR: a clipped token just outside the trust region keeps its gradient with prob p
        if cfg.loss != "ppo_clip":
            raise ValueError("nsr rescues tokens of the clipped PPO loss: it needs loss=ppo_clip")
        per_token, rescued = P.nsr_rescue(per_token, log_ratio, adv, cfg.eps_low, cfg.eps_high, cfg.nsr_band,
                                          cfg.nsr_prob, batch.extras["nsr_uniform"])
        clipped = clipped & ~rescued
    if "ih_grpo" in cfg.plugins:  # IH-GRPO: the c-loss moves the non-control logits, scaled by each token's loss
        c = P.ih_grpo_c_loss(batch.extras["control_logp"], batch.extras["control_logit"],
                             batch.targets == cfg.ih_token_id, per_token)
        per_token = per_token + cfg.ih_lambda * (c * batch.extras["control_mask"] if cfg.ih_mask == "control" else c)
    if "occ" in cfg.plugins:  # OCC: the MTP head's PPO loss, its coefficient calibrated from the log-prob proxy
        mtp_mask = batch.loss_mask.clone()
        mtp_mask[:, 0] = 0  # column 0 has no MTP prediction
        coef = P.occ_coefficient(batch.extras["mtp_logp"], logp, batch.old_logp, mtp_mask, cfg.occ_scale)
        mtp_loss, _ = F.ppo_clip_loss(F.token_log_ratio(batch.extras["mtp_logp"], batch.old_logp), adv * coef,
                                      cfg.eps_low, cfg.eps_high, dual_clip=cfg.dual_clip)
        per_token = per_token + mtp_loss * mtp_mask
        metrics["occ_coef"] = float(coef) * float(mtp_mask.sum()) / num_tokens  # summed over micro-batches
    return per_token, clipped


def policy_loss(logp: torch.Tensor, batch: Batch, cfg: LearnerConfig, *, num_tokens: float, num_seqs: float,
                norm_const: float, ref_logp: torch.Tensor | None = None, entropy: torch.Tensor | None = None,
                step: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
    """Scalar loss of one micro-batch, normalised by mini-batch totals so micro-batch losses sum exactly.

    `step` is the training step (AMR-SD's annealing); plug-ins read their inputs from `batch.extras`.
    """
    mask = batch.loss_mask
    adv = batch.extras.get("token_advantages")  # per-turn advantages (HRR), else one per row
    if adv is None:
        adv = batch.advantages[:, None].expand_as(logp)
    if cfg.plugins:
        adv = _reshape_advantages(adv, logp.detach(), batch, cfg, ref_logp, step)
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
    metrics: dict[str, float] = {}
    if cfg.plugins:
        per_token, clipped = _plugin_losses(per_token, clipped, logp, log_ratio, adv, batch, cfg, metrics, num_tokens)
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


def _autocast(device: torch.device, cfg: LearnerConfig):
    enabled = cfg.bf16 and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def _micro_batches(batch: Batch, index: torch.Tensor, size: int):
    for start in range(0, len(index), size):
        yield batch.rows(index[start : start + size])


def update(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, cfg: LearnerConfig, *,
           ref_model: torch.nn.Module | None = None, generator: torch.Generator | None = None,
           step: int = 0) -> dict[str, float]:
    """PPO epochs × mini-batches × micro-batches over `batch`; one optimizer step per mini-batch.

    With one epoch and one mini-batch the update is on-policy and π_old is π_θ itself (detached), as in
    TRL; otherwise π_old is recomputed once before the first step so every ratio is exact.
    `step` is the training step: OWPO ratchets `ref_model` on it, NSR keys its draws by it (through the
    generator's seed when there is one), AMR-SD anneals by it.
    """
    if unknown := set(cfg.plugins) - set(P.PLUGINS):
        raise ValueError(f"unknown plug-ins {sorted(unknown)}; known: {', '.join(P.PLUGINS)}")
    device = next(model.parameters()).device
    batch = batch.to(device)
    on_policy = cfg.ppo_epochs == 1 and cfg.mini_batches == 1
    if not on_policy:
        batch.old_logp = _recompute(model, batch, cfg, device)
    if "owpo" in cfg.plugins:  # OWPO's ratchet: π_ref ← π_θ every K steps
        if ref_model is None:
            raise ValueError("owpo needs ref_model, the ratchet reference (a copy of the policy)")
        if step % cfg.owpo_ratchet_every == 0:
            P.ratchet(ref_model, model)
    needs_ref = cfg.kl_coef > 0 or "owpo" in cfg.plugins
    ref_logp = _recompute(ref_model, batch, cfg, device) if ref_model is not None and needs_ref else None
    if ref_logp is not None:
        batch.extras["ref_logp"] = ref_logp
    totals: dict[str, float] = {}
    steps = 0
    rows = len(batch)
    norm_const = cfg.norm_const if cfg.norm_const is not None else float(batch.loss_mask.shape[1])
    for epoch in range(cfg.ppo_epochs):
        if "nsr" in cfg.plugins:  # one draw per token and epoch, independent of the micro-batch split
            seed = generator.initial_seed() if generator is not None else step
            batch.extras["nsr_uniform"] = P.nsr_uniforms(batch.loss_mask.shape, seed, epoch).to(device)
        order = torch.randperm(rows, generator=generator) if cfg.mini_batches > 1 else torch.arange(rows)
        for mini in order.chunk(cfg.mini_batches):
            mask = batch.loss_mask[mini]
            num_tokens = float(mask.sum().clamp(min=1))
            num_seqs = float((mask.sum(-1) > 0).sum().clamp(min=1))
            step_metrics: dict[str, float] = {"loss": 0.0}
            for micro in _micro_batches(batch, mini, cfg.micro_batch_size):
                with _autocast(device, cfg):
                    hidden = final_hidden(model, micro, cfg.share_prefix)
                    # only loss positions are scored; the plug-ins' per-token terms are masked the same way
                    logp, entropy = token_logprobs(model, micro, cfg.temperature, cfg.logprob_chunk,
                                                   with_entropy=cfg.entropy_coef > 0, hidden=hidden, mask=micro.loss_mask)
                    if cfg.plugins:
                        _plugin_outputs(model, hidden, logp, micro, cfg)
                if on_policy:
                    micro.old_logp = logp.detach()
                loss, metrics = policy_loss(logp, micro, cfg, num_tokens=num_tokens, num_seqs=num_seqs, norm_const=norm_const,
                                            ref_logp=micro.extras.get("ref_logp"), entropy=entropy, step=step)
                loss.backward()
                step_metrics["loss"] += float(loss.detach())
                for key, value in metrics.items():
                    step_metrics[key] = step_metrics.get(key, 0.0) + value
            step_metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            for key, value in step_metrics.items():
                totals[key] = totals.get(key, 0.0) + value
            steps += 1
    return {key: value / steps for key, value in totals.items()}


@torch.no_grad()
def _recompute(model: torch.nn.Module, batch: Batch, cfg: LearnerConfig, device: torch.device) -> torch.Tensor:
    out = torch.zeros_like(batch.old_logp)
    index = torch.arange(len(batch), device=device)
    for start in range(0, len(batch), cfg.micro_batch_size):
        rows = index[start : start + cfg.micro_batch_size]
        micro = batch.rows(rows)
        with _autocast(device, cfg):
            logp, _ = token_logprobs(model, micro, cfg.temperature, cfg.logprob_chunk,
                                     hidden=final_hidden(model, micro, cfg.share_prefix), mask=micro.loss_mask)
        out[rows, : logp.shape[1]] = logp.float()
    return out


def teacher_logprobs(model: torch.nn.Module, batch: Batch, hints: Sequence[Sequence[int]], cfg: LearnerConfig) -> torch.Tensor:
    """AMR-SD's self-teacher: log π_θ(y_t | x, hint, y_<t) of every target of `batch`, aligned with it, `[B, L-1]`.

    `hints` holds one id list per row, inserted before the row's first generated token (`plugins.insert_hint`).
    It is one no-grad forward.
    """
    device = next(model.parameters()).device
    ids, attention, column = P.insert_hint(batch.input_ids, batch.attention_mask, batch.loss_mask, hints)
    every_token = attention[:, 1:].float()  # score every position: the hint shifts where the loss mask lies
    teacher = Batch(ids, attention, ids[:, 1:], every_token, torch.zeros_like(every_token), batch.advantages).to(device)
    return _recompute(model, teacher, cfg, device).gather(1, column.to(device)).to(batch.input_ids.device)


def sft_update(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Batch, cfg: LearnerConfig) -> float:
    """One supervised step on demonstration tokens: token-mean NLL over the loss mask."""
    device = next(model.parameters()).device
    batch = batch.to(device)
    num_tokens = float(batch.loss_mask.sum().clamp(min=1))
    total = 0.0
    for micro in _micro_batches(batch, torch.arange(len(batch), device=device), cfg.micro_batch_size):
        with _autocast(device, cfg):
            logp, _ = token_logprobs(model, micro, 1.0, cfg.logprob_chunk, hidden=final_hidden(model, micro, cfg.share_prefix),
                                     mask=micro.loss_mask)
        loss = F.aggregate(-logp, micro.loss_mask, "token-mean", num_tokens_global=num_tokens)
        loss.backward()
        total += float(loss.detach())
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total
