"""CARE / RLAVR — active label acquisition with pseudo-labels (arXiv 2605.25864). From the paper's code,
Lumina04/CARE @17391c6, verl/trainer/ppo/ttrl_utils.py and ray_trainer.py (anchors-learner.md §2.3, [V]).

Most prompts train on a majority-vote pseudo-label. Ground truth is asked for only the prompts where the
pseudo-label would change the GRPO advantages most, up to a label budget per step:

    â = the group's majority answer,  r^ps_j = 1[a_j ≡ â],  r^gt_j = the verifier's reward
    A(v) = (v − mean v)/std_pop(v)  (0 if std < 1e−8)
    CAG  = ‖A(r^gt) − A(r^ps)‖₂                              the Corrective Advantage Gap, 0 if â is right

With x = the majority cluster's size and y = the size of the correct cluster when â is wrong, the gap is
CAG(n, x, y)² = n·1[0<x<n] + n·1[0<y<n] + 2n·√(xy/((n−x)(n−y))) (the last term only when both are
non-degenerate). It is at least √n whenever it is not 0.

Selection, for N prompts a step:
- `acquisition="oracle"`: ground truth for the top ⌈top_pct·N⌉ prompts by the true CAG, pseudo-labels
  elsewhere, and every prompt trains. This is the paper's upper bound; it reads the gt of every prompt.
- `acquisition="heuristic"`: CARE's rule with its probe replaced by cluster statistics. The probe is
  trained on hidden states, and is not built here. Stage 1 gives P(majority correct) = x/n. Stage 2
  gives P(y) uniform over {0} and the sizes of the non-majority clusters present. The score is
  s = Σ_y P(y)·CAG(n, x, y). After the warm-up, the top ⌈prob_gate·N⌉ prompts by P(majority correct)
  are gated as "majority correct". Ground truth goes to the top ⌈top_pct·N⌉ of the others by s. Then,
  per prompt:

      coef = 1                               if ground truth was queried
      coef = clip(soft_adv·s·1[gated], 0, 1) otherwise;       A ← coef·A

Because s ≥ √n or s = 0, soft_adv = 1 is a binary mask: queried prompts and non-unanimous gated prompts
train, all others get A = 0.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import torch
from torch import Tensor

from agentenv.policies.objectives import grpo_advantages
from agentenv.rewards.math_match import normalize_answer, parse_number
from agentenv.tools.parsing import parse_action

__all__ = [
    "ACQUISITIONS",
    "final_answer",
    "answer_ids",
    "majority_vote",
    "corrective_advantage_gap",
    "cag_from_counts",
    "heuristic_scores",
    "care_select",
    "care_labels",
]

ACQUISITIONS = ("heuristic", "oracle")


def final_answer(messages: Sequence[dict]) -> str | None:
    """The answer in the last assistant message of a chat (`<answer>…</answer>` or `\\boxed{…}`), or None."""
    for message in reversed(messages):
        if message.get("role") == "assistant":
            return parse_action(message.get("content", "")).answer
    return None


def answer_ids(answers: Sequence[str | None]) -> Tensor:
    """Equal answers get equal ids (numbers by value, text by `normalize_answer`, case-folded); no answer
    gets −1. -> [B] long."""
    ids: dict[object, int] = {}
    out = []
    for answer in answers:
        if answer is None or not answer.strip():
            out.append(-1)
            continue
        number = parse_number(answer)
        key = number if number is not None else normalize_answer(answer).casefold()
        out.append(ids.setdefault(key, len(ids)))
    return torch.tensor(out, dtype=torch.long)


def _groups(group_ids: Tensor) -> tuple[Tensor, list[list[int]]]:
    inverse = torch.unique(group_ids, return_inverse=True)[1]
    members: list[list[int]] = [[] for _ in range(int(inverse.max()) + 1 if len(inverse) else 0)]
    for row, group in enumerate(inverse.tolist()):
        members[group].append(row)
    return inverse, members


def majority_vote(answers: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """(label [B], majority size [B]): each row's group majority answer id and its count.

    Ties go to the answer seen first in the group (`Counter.most_common`, as CARE). Invalid answers (−1)
    never vote; a group with none valid gets label −1 and size 0.
    """
    label = torch.full_like(answers, -1)
    size = torch.zeros_like(answers)
    for rows in _groups(group_ids)[1]:
        votes = Counter(a for a in answers[rows].tolist() if a >= 0)
        if votes:
            winner, count = votes.most_common(1)[0]
            label[rows], size[rows] = winner, count
    return label, size


def corrective_advantage_gap(gt_rewards: Tensor, pseudo_rewards: Tensor, group_ids: Tensor) -> Tensor:
    """‖A(r^gt) − A(r^ps)‖₂ over each row's group, A with the population std (CARE). [B] -> [B]."""
    gap = grpo_advantages(gt_rewards, group_ids, std="population", eps=0.0) - grpo_advantages(
        pseudo_rewards, group_ids, std="population", eps=0.0
    )
    inverse = torch.unique(group_ids, return_inverse=True)[1]
    squares = gap.new_zeros(int(inverse.max()) + 1).index_add_(0, inverse, gap**2)
    return squares.sqrt()[inverse]


def cag_from_counts(n: int, x: Tensor, y: Tensor) -> Tensor:
    """CAG(n, x, y) when the majority (size x) is wrong and y responses are right (see the module docstring)."""
    x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    pseudo_ok, gt_ok = (x > 0) & (x < n), (y > 0) & (y < n)
    both = pseudo_ok & gt_ok
    cross = torch.where(both, (x * y / ((n - x) * (n - y)).clamp(min=1)).sqrt(), torch.zeros_like(x))
    return (n * pseudo_ok + n * gt_ok + 2 * n * cross).sqrt()


def heuristic_scores(answers: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Probe stand-in (see the module docstring): (P(majority correct) [B], expected CAG s [B])."""
    p_majority = torch.zeros(len(answers), dtype=torch.float64)
    score = torch.zeros(len(answers), dtype=torch.float64)
    for rows in _groups(group_ids)[1]:
        n = len(rows)
        votes = Counter(a for a in answers[rows].tolist() if a >= 0)
        if not votes:
            continue
        ranked = votes.most_common()
        x = ranked[0][1]
        present = sorted({0} | {count for _, count in ranked[1:]})
        p_majority[rows] = x / n
        score[rows] = float(cag_from_counts(n, torch.full((len(present),), float(x)), torch.tensor(present)).mean())
    return p_majority, score


def _count(fraction: float, n: int) -> int:
    """⌈fraction·n⌉, without float error turning 0.7·10 into 8."""
    return math.ceil(round(fraction * n, 9))


def _top(values: Tensor, k: int, allowed: Tensor) -> Tensor:
    """Bool mask of the k largest `values` among `allowed` (ties: the earlier index)."""
    candidates = torch.where(allowed, values, torch.full_like(values, -math.inf))
    order = torch.sort(candidates, descending=True, stable=True)[1]
    chosen = torch.zeros_like(allowed)
    chosen[order[: min(k, int(allowed.sum()))]] = True
    return chosen


def care_select(
    score: Tensor, p_majority: Tensor, top_pct: float, prob_gate: float, gate: bool
) -> tuple[Tensor, Tensor]:
    """(query [G], gated [G]) for G prompts: gate the ⌈prob_gate·G⌉ most likely-correct majorities (if `gate`),
    then query ground truth for the ⌈top_pct·G⌉ highest scores among the rest."""
    prompts = len(score)
    everyone = torch.ones(prompts, dtype=torch.bool)
    gated = _top(p_majority, _count(prob_gate, prompts), everyone) if gate else ~everyone
    return _top(score, _count(top_pct, prompts), ~gated), gated


def care_labels(
    gt_rewards: Tensor,
    answers: Tensor,
    group_ids: Tensor,
    *,
    acquisition: str = "heuristic",
    top_pct: float = 0.2,
    prob_gate: float = 0.25,
    soft_adv: float = 1.0,
    gate: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """(rewards [B], advantage scale [B], queried [B] bool) for B rollouts of the batch's prompts.

    gt_rewards: [B], the verifier's rewards (read only for queried prompts, except by "oracle");
    answers: [B] ids (`answer_ids`); gate: False during CARE's warm-up (the paper: 20 steps).
    Rewards are r^gt for queried prompts and 1[a ≡ â] elsewhere. Compute GRPO advantages from them, then
    multiply by the scale.
    """
    label, _ = majority_vote(answers, group_ids)
    pseudo = ((answers == label) & (label >= 0)).to(gt_rewards.dtype)
    inverse = torch.unique(group_ids, return_inverse=True)[1]
    first_row = torch.zeros(int(inverse.max()) + 1, dtype=torch.long).scatter_reduce(
        0, inverse, torch.arange(len(inverse)), "amin", include_self=False
    )
    if acquisition == "oracle":
        true_gap = corrective_advantage_gap(gt_rewards, pseudo, group_ids)[first_row]
        query = _top(true_gap, _count(top_pct, len(first_row)), torch.ones(len(first_row), dtype=torch.bool))
        coef = torch.ones(len(first_row), dtype=gt_rewards.dtype)
    elif acquisition == "heuristic":
        p_majority, score = (v[first_row] for v in heuristic_scores(answers, group_ids))
        query, gated = care_select(score, p_majority, top_pct, prob_gate, gate)
        coef = torch.where(query, 1.0, (soft_adv * score * gated).clamp(0, 1)).to(gt_rewards.dtype)
    else:
        raise ValueError(f"care_acquisition must be one of {ACQUISITIONS}, got {acquisition!r}")
    queried = query[inverse]
    return torch.where(queried, gt_rewards, pseudo), coef[inverse], queried
