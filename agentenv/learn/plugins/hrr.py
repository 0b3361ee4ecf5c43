"""Hindsight Response Replay (HRR, ZipRL arXiv 2605.28069): turn-level reshaping of GRPO advantages by the
compression-quality score Q_com, as pure functions on tensors.

HRR takes the trajectory's mean Q_com as a hindsight goal (after HER) and credits each turn by how far its
Q_com is from it, which densifies the sparse outcome reward. The paper's exact formula is not public; this
is the reconstruction of docs/anchors-learner.md §2.2 ([R]), with its unknowns as parameters:

    D_ij = Q_com(i, j) − mean_j' Q_com(i, j')                 over the valid turns j' of trajectory i
    D_ij ← D_ij / (std of D over the valid turns of i's group + eps)        if hrr_group_norm
    Â_ij = A_i + β·D_ij            (hrr_mode="add")      or      Â_ij = A_i·(1 + β·D_ij)      ("mul")

with A_i the sequence-level GRPO advantage (`objectives.grpo_advantages`) and β = `hrr_beta`. β = 0 is
GRPO; in the additive form the reshaping sums to zero over each trajectory's turns.

Shapes: B trajectories, J turns (padded; `turn_mask` [B, J] is 1 on turns that have a Q_com), T tokens.
Q_com per turn comes from the environment: `info["compression"]["q_com"]` of each step (`q_com_rows`). With
agent-driven compression (zip mode "agent", which the plug-in requires: `env_options`) that is the
score of the compression decision the turn's action made (`<zip level=N/>` for the turn it answers),
judged in hindsight where the env knows what later turns need (compression/context.py): so the per-turn
credit is the policy's own doing. Steps that decided nothing have no Q_com and keep A_i.

As a plug-in (`--learner.plugins=hrr`, settings `beta`, `mode`, `group_norm`), `token_advantages` maps Â_ij onto the generated tokens of turn
j of episode i, in the rows `learner.make_batch` builds (one per Sample; a turn's tokens are the range
`turn["start"]:turn["end"]` of sample `turn["sample"]`, recorded by the rollout), and the loss uses those
per-token advantages instead of A_i.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
from torch import Tensor

from agentenv.learn.plugin import Plugin, StepContext

__all__ = ["Hrr", "HrrConfig", "HRR_MODES", "hrr_deviation", "hrr_advantages", "turn_index", "broadcast_turns", "q_com_rows", "token_advantages"]

HRR_MODES = ("add", "mul")


def hrr_deviation(
    q_com: Tensor, turn_mask: Tensor, group_ids: Tensor | None = None, group_norm: bool = False, eps: float = 1e-6
) -> Tensor:
    """D_ij = Q_com(i, j) − mean over i's valid turns; 0 on invalid turns.

    q_com: [B, J]; turn_mask: [B, J] (bool or 0/1); group_ids: [B] (needed for `group_norm`) → [B, J].
    With `group_norm`, D is divided by its population std over all valid turns of the trajectory's group
    (a group whose D is all zero stays zero).
    """
    mask = turn_mask.to(q_com.dtype)
    count = mask.sum(dim=1, keepdim=True).clamp(min=1)
    mean = (q_com * mask).sum(dim=1, keepdim=True) / count
    deviation = (q_com - mean) * mask
    if not group_norm:
        return deviation
    if group_ids is None:
        raise ValueError("hrr_group_norm needs group_ids (the GRPO group of each trajectory)")
    _, inverse = torch.unique(group_ids, return_inverse=True)
    groups = int(inverse.max()) + 1
    squares = torch.zeros(groups, dtype=q_com.dtype, device=q_com.device).index_add_(0, inverse, (deviation**2).sum(dim=1))
    sizes = torch.zeros(groups, dtype=q_com.dtype, device=q_com.device).index_add_(0, inverse, mask.sum(dim=1))
    std = (squares / sizes.clamp(min=1)).sqrt()
    return deviation / (std[inverse][:, None] + eps)


def hrr_advantages(
    advantages: Tensor,
    q_com: Tensor,
    turn_mask: Tensor,
    *,
    beta: float = 0.1,
    mode: str = "add",
    group_ids: Tensor | None = None,
    group_norm: bool = False,
    eps: float = 1e-6,
) -> Tensor:
    """Per-turn advantages Â [B, J] from sequence advantages A [B] and Q_com [B, J] (see the module doc).

    Turns outside `turn_mask` (padding, or steps without a Q_com) keep A_i.
    """
    if mode not in HRR_MODES:
        raise ValueError(f"hrr_mode must be one of {HRR_MODES}, got {mode!r}")
    deviation = hrr_deviation(q_com, turn_mask, group_ids, group_norm, eps)
    base = advantages[:, None].expand_as(q_com).to(q_com.dtype)
    reshaped = base + beta * deviation if mode == "add" else base * (1.0 + beta * deviation)
    return torch.where(turn_mask.bool(), reshaped, base)


def turn_index(loss_mask: Tensor) -> Tensor:
    """Which turn each token belongs to: the index of its contiguous run of 1s in `loss_mask`, −1 elsewhere.

    loss_mask: [B, T] → [B, T] long (the segmentation of verl PR #5229: one run of generated tokens per turn).
    """
    mask = loss_mask.bool()
    previous = torch.zeros_like(mask)
    previous[:, 1:] = mask[:, :-1]
    starts = mask & ~previous
    index = starts.long().cumsum(dim=1) - 1
    return torch.where(mask, index, torch.full_like(index, -1))


def broadcast_turns(values: Tensor, index: Tensor, fill: float = 0.0) -> Tensor:
    """Per-token values from per-turn ones: out[b, t] = values[b, index[b, t]], `fill` where index is −1.

    values: [B, J]; index: [B, T] long (from `turn_index`) → [B, T].
    """
    valid = (index >= 0) & (index < values.shape[1])
    gathered = values.gather(1, index.clamp(min=0, max=values.shape[1] - 1))
    return torch.where(valid, gathered, torch.full_like(gathered, fill))


def q_com_rows(episodes_turns: Sequence[Sequence[dict[str, Any]]], dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """(q_com [B, J], turn_mask [B, J]) from each episode's per-step info records (`Episode.turns`):
    Q_com of step j is `info["compression"]["q_com"]`; steps without one are masked out."""
    rows = [[(t.get("compression") or {}).get("q_com") for t in turns] for turns in episodes_turns]
    width = max((len(r) for r in rows), default=0)
    q = torch.zeros(len(rows), width, dtype=dtype)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        for j, value in enumerate(row):
            if value is not None:
                q[i, j] = float(value)
                mask[i, j] = True
    return q, mask


def token_advantages(
    episodes: Sequence[Any],
    advantages: Tensor,
    length: int,
    *,
    beta: float,
    mode: str = "add",
    group_norm: bool = False,
    eps: float = 1e-6,
) -> Tensor:
    """Per-token advantages `[S, length]` for the S samples of `episodes` (in `learner.make_batch`'s row order):
    each generated token of turn j of episode i gets Â_ij (`hrr_advantages` over the episode's turns, groups
    from `episode.group_id`); every other position keeps A_i (the loss mask zeroes it anyway).

    episodes: rollout `Episode`s (`samples`, `turns` with `sample`/`start`/`end`, `group_id`); advantages: [E].
    """
    q_com, turn_mask = q_com_rows([e.turns for e in episodes], dtype=advantages.dtype)
    groups = torch.tensor([int(e.group_id) for e in episodes], dtype=torch.long)
    per_turn = hrr_advantages(advantages, q_com, turn_mask, beta=beta, mode=mode, group_ids=groups, group_norm=group_norm, eps=eps)
    rows = sum(len(e.samples) for e in episodes)
    out = torch.empty(rows, length, dtype=advantages.dtype)
    first = 0
    for i, episode in enumerate(episodes):
        out[first : first + len(episode.samples)] = advantages[i]
        for j, turn in enumerate(episode.turns):
            if turn_mask[i, j]:
                out[first + turn["sample"], turn["start"] : turn["end"]] = per_turn[i, j]
        first += len(episode.samples)
    return out


@dataclass
class HrrConfig:
    beta: float = 0.5  # β; 0 is plain GRPO
    mode: Literal["add", "mul"] = "add"  # add: A + β·D | mul: A·(1 + β·D)
    group_norm: bool = False  # divide D by its std over the GRPO group's turns
    eps: float = 1e-6


class Hrr(Plugin):
    """Hindsight Response Replay: each turn's generated tokens take that turn's reshaped advantage."""

    name = "hrr"
    Config = HrrConfig
    # the agent compresses its own context, so Q_com scores its decisions (with the env's rule-based levels
    # it would score the env's; that baseline is compressor_options.mode=rule without this plug-in)
    def env_options(self) -> dict[str, Any]:
        return {"compressor": "zip", "compressor_options": {"mode": "agent"}}

    def prepare_batch(self, batch: Any, episodes: Sequence[Any], advantages: Tensor, ctx: StepContext) -> None:
        c = self.config
        per_token = token_advantages(episodes, advantages.float(), batch.input_ids.shape[1], beta=c.beta, mode=c.mode,
                                     group_norm=c.group_norm, eps=c.eps)
        batch.extras["token_advantages"] = per_token[:, 1:].contiguous()  # shifted like the targets
