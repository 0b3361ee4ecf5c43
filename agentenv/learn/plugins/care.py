"""CARE / RLAVR — active label acquisition with pseudo-labels (arXiv 2605.25864). From the paper's code,
Lumina04/CARE @17391c6: verl/trainer/ppo/ttrl_utils.py, ray_trainer.py, dp_actor.py and
examples/unsupervised_rlvr/al-rule.sh (docs/anchors-learner.md §2.3, [V]).

Most prompts train on a majority-vote pseudo-label. Ground truth is asked for only the prompts where the
pseudo-label would change the GRPO advantages most, up to a label budget per step:

    â = the group's majority answer,  r^ps_j = 1[a_j ≡ â],  r^gt_j = the verifier's reward
    A(v) = (v − mean v)/std_pop(v)  (0 if std < 1e−8)
    CAG  = ‖A(r^gt) − A(r^ps)‖₂                              the Corrective Advantage Gap, 0 if â is right

With x = the majority cluster's size and y = the number of correct responses when â is wrong, the gap is
CAG(n, x, y)² = n·1[0<x<n] + n·1[0<y<n] + 2n·√(xy/((n−x)(n−y))) (the last term only when both are
non-degenerate). It is at least √n whenever it is not 0.

Selection, for N prompts a step, by `acquisition`:

- "probe" (the default; CARE itself, the paper's `grpo_adv_diff_probe_setscorer`). A two-stage learned
  probe scores every prompt from features of its group of n responses (`probe_features`):
    * the policy's last-layer hidden state at the prompt's last token;
    * [valid-answer ratio, cluster sizes / n largest first], and each response's length / `len_norm`;
    * each response's last-layer hidden state at its last generated token.
  Stage 1 (`SetScorer`, binary) gives P(majority correct). Stage 2 (`SetScorer`, n+1 classes) gives
  P₂(y), its logits masked to y ∈ {0} ∪ {sizes of the non-majority clusters}. The score is
  s = Σ_y P₂(y)·CAG(n, x, y), over the y with y ≤ x and x + y ≤ n. Each stage is a set scorer: a prompt
  MLP, a per-response MLP mean-pooled over the group (stage 2: over the valid non-majority responses
  only), then an MLP head; stage 1 also has a per-response head trained to predict each response's
  correctness (auxiliary loss, weight 1.5). `CareProbe` trains both online, after each step's selection,
  on the queried prompts only — the only ground truth the method reads — plus a replay buffer (2048
  prompts, 16 drawn per pass; stage 2's draw stratified by y), 3 AdamW passes at lr 1e−4 (no weight
  decay, grad-norm clip 1), cross-entropy weighted by class counts^−0.5 (normalised to mean 1, clipped
  to [0.25, 4]).
- "heuristic": the same rule with the probe replaced by cluster statistics. Stage 1 gives
  P(majority correct) = x/n; stage 2 gives P(y) uniform over the same classes.
- "oracle": ground truth for the top ⌈top_pct·N⌉ prompts by the true CAG, pseudo-labels elsewhere, and
  every prompt trains. This is the paper's upper bound; it reads the gt of every prompt.

The paper's two baselines (its code's `majority_voting` and `random_gt_zero_adv` estimators), each a
preset, so CARE and each baseline are one config apart:
- "pseudo_label" (preset `care_pseudo_label`; TTRL): no ground truth at all; every prompt trains on its
  majority-vote label.
- "random" (preset `care_random`): ground truth for ⌈top_pct·N⌉ prompts drawn uniformly (a generator keyed
  by the run's seed and the step), pseudo-labels elsewhere; with `random_mask_non_gt` (the paper's
  default, True) only the queried prompts train, as under CARE before its gate opens.

For "probe" and "heuristic": after the warm-up, the top ⌈prob_gate·N⌉ prompts by P(majority correct)
are gated as "majority correct". Ground truth goes to the top ⌈top_pct·N⌉ of the others by s. Then, per
prompt:

    coef = 1                               if ground truth was queried
    coef = clip(soft_adv·s·1[gated], 0, 1) otherwise;       A ← coef·A

Because s ≥ √n or s = 0, soft_adv = 1 is a binary mask: queried prompts and non-unanimous gated prompts
train, all others get A = 0.

What is the paper's and what is adapted here:
- As in the paper's code: the features, the two architectures (BatchNorm → Linear → ReLU blocks, ReLU
  per al-rule.sh), its dims (prompt 128, head 256, response MLP 64 → 512; they also fit the tiny models'
  128-wide hidden states), the masks, the losses and their weights, the buffer and its sampling, the
  order (score with the current probe, select, then train on this step's queried prompts and only then
  add them to the buffer). The auxiliary weight applies to stage 1's per-response head: stage 2 has no
  auxiliary loss in the paper's code.
- Adapted: the probe trains inside `episode_advantages`, right after the selection, instead of after the
  actor update (nothing of the policy update reads the probe, so the order changes nothing). Its hidden
  states come from one extra no-grad forward of the policy (`learner.care_hidden_states`), as the paper's
  `compute_probe_stage1_features`. The probe lives on the CPU with its own seeded generator, so it is
  deterministic and its draws do not move the global RNG; its buffer is saved in the trainer checkpoint
  with its weights and optimizers (the paper keeps the buffer in process memory only). A training pass
  needs ≥ 2 prompts (BatchNorm statistics), so a first step with one queried prompt only fills the
  buffer. Rewards here need not be 0/1: a response counts as correct when its verifier reward exceeds 0.5
  (`CORRECT_ABOVE`; ToolReasoning's reward is (1−w)·correct + w·format with w < 0.5). A multi-sample
  (compressed) episode takes its prompt from its first sample and its last generated token from its last
  sample.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, fields
from typing import Any, Literal, Sequence

import torch
from torch import Tensor, nn

from agentenv.learn.learner import Batch, autocast, final_hidden, micro_batch_rows
from agentenv.learn.objectives import grpo_advantages
from agentenv.learn.plugin import Plugin, StepContext
from agentenv.rewards.math_match import normalize_answer, parse_number
from agentenv.tools.parsing import final_answer

__all__ = [
    "Care",
    "CareConfig",
    "care_hidden_states",
    "ACQUISITIONS",
    "answer_ids",
    "majority_vote",
    "corrective_advantage_gap",
    "cag_from_counts",
    "heuristic_scores",
    "ProbeFeatures",
    "ProbeTargets",
    "probe_features",
    "probe_targets",
    "count_costs",
    "SetScorer",
    "CareProbe",
    "care_select",
    "care_labels",
]

ACQUISITIONS = ("probe", "heuristic", "oracle", "pseudo_label", "random")
CORRECT_ABOVE = 0.5  # a response is correct when its verifier reward exceeds this (the paper's rewards are 0/1)
PROBE_DIMS = {"prompt": 128, "head": 256, "response_hidden": 64, "response_out": 512}  # al-rule.sh
CLASS_BALANCE = {"power": 0.5, "low": 0.25, "high": 4.0}  # al-rule.sh: weights ∝ count^−power, mean 1, clipped
MASKED_LOGIT = -1.0e9  # the paper's fill for impossible counts: exp underflows to exactly 0 in float32


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


# -- CARE's learned probe ----------------------------------------------------------------------------


@dataclass
class ProbeFeatures:
    """The probe's inputs for G prompts of n responses each, one row per prompt (in `torch.unique` group order)."""

    prompt: Tensor  # [G, H] last hidden state at the prompt's last token
    stats: Tensor  # [G, 1+n] valid-answer ratio, then cluster sizes / n, largest first, zero-padded
    lengths: Tensor  # [G, n] generated tokens / len_norm, clipped to [0, 1]
    responses: Tensor  # [G, n, H] last hidden state at each response's last generated token
    valid: Tensor  # [G, n] bool: the response has an answer
    in_majority: Tensor  # [G, n] bool: its answer is the majority answer
    classes: Tensor  # [G, n+1] bool: the counts y stage 2 may predict (0 and the non-majority cluster sizes)
    majority: Tensor  # [G] long: x, the majority cluster's size (0 without a valid answer)
    rows: Tensor  # [G, n] long: each prompt's rollouts, as rows of the batch

    def take(self, index: Tensor) -> "ProbeFeatures":
        """The prompts `index` (a bool mask or indices over G)."""
        return ProbeFeatures(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def __len__(self) -> int:
        return self.prompt.shape[0]


@dataclass
class ProbeTargets:
    """The probe's labels for K queried prompts; they come from ground truth, so only queried prompts have them."""

    majority_correct: Tensor  # [K] long: stage 1's label
    count: Tensor  # [K] long: stage 2's y, correct responses outside the majority cluster (0 if â is right)
    correct: Tensor  # [K, n] long: each response's correctness, stage 1's auxiliary target


def probe_features(answers: Tensor, group_ids: Tensor, prompt_hidden: Tensor, response_hidden: Tensor,
                   lengths: Tensor, len_norm: float) -> ProbeFeatures:
    """CARE's features from B = G·n rollouts: answers [B] ids (−1: none), group_ids [B], prompt_hidden [B, H]
    (the group's first row is used, as the paper's `prompt_hidden[start]`), response_hidden [B, H],
    lengths [B] generated tokens. Every group must have the same size n (the probe's input width)."""
    members = _groups(group_ids)[1]
    if len({len(rows) for rows in members}) != 1:
        raise ValueError("CARE's probe needs every group to have the same number of responses")
    rows = torch.tensor(members, dtype=torch.long)
    prompts, n = rows.shape
    grouped = answers[rows]
    valid = grouped >= 0
    label, size = majority_vote(answers, group_ids)
    majority = size[rows[:, 0]]
    in_majority = valid & (grouped == label[rows[:, 0]][:, None])
    stats = torch.zeros(prompts, 1 + n)
    classes = torch.zeros(prompts, n + 1, dtype=torch.bool)
    classes[:, 0] = True  # "no correct response outside the majority" is always possible
    for g, row in enumerate(grouped.tolist()):
        sizes = [count for _, count in Counter(a for a in row if a >= 0).most_common()]  # the majority first
        stats[g, 0] = len([a for a in row if a >= 0]) / n
        stats[g, 1 : 1 + len(sizes)] = torch.tensor(sizes, dtype=torch.float32) / n
        classes[g, sizes[1:]] = True
    return ProbeFeatures(
        prompt=prompt_hidden[rows[:, 0]].float(), stats=stats, lengths=(lengths[rows].float() / len_norm).clamp(0, 1),
        responses=response_hidden[rows].float(), valid=valid, in_majority=in_majority, classes=classes,
        majority=majority, rows=rows,
    )


def probe_targets(features: ProbeFeatures, correct: Tensor) -> ProbeTargets:
    """Labels of the prompts in `features` from `correct` [K, n] bool (each response right under ground truth).

    As the paper: only a response with an answer can be correct; the majority is right when its answer is;
    otherwise y counts the correct responses of the other clusters.
    """
    correct = correct & features.valid
    majority_correct = (correct & features.in_majority).any(-1)
    count = torch.where(majority_correct, 0, (correct & ~features.in_majority).sum(-1))
    return ProbeTargets(majority_correct.long(), count.long(), correct.long())


def count_costs(n: int, majority: Tensor, classes: Tensor) -> Tensor:
    """CAG(n, x, y) for every count y = 0..n of each prompt [G, n+1], float64; 0 where y is not a possible
    class or (x, y) is not a valid pair (y ≤ x, x + y ≤ n: the paper's `_is_valid_xy`)."""
    y = torch.arange(n + 1, dtype=torch.float64)[None, :]
    x = majority.to(torch.float64)[:, None]
    possible = classes & (y <= x) & (x + y <= n)
    return torch.where(possible, cag_from_counts(n, x.expand_as(possible), y.expand_as(possible)), 0.0)


class SetScorer(nn.Module):
    """One stage of CARE's probe (the paper's `PromptFeatRespMLPBinaryClassifier` / `...Stage2Classifier`).

    prompt MLP on [prompt hidden, stats]; a per-response MLP on each response's hidden state (stage 1: and
    its length), mean-pooled over the responses in `mask` (all by default): permutation invariant; a head
    on both. With `aux`, a second head on [prompt, response] gives each response's correctness logits.
    """

    def __init__(self, hidden_size: int, group_size: int, classes: int, *, lengths: bool, aux: bool,
                 dims: dict[str, int] = PROBE_DIMS) -> None:
        super().__init__()
        prompt_in, response_in = hidden_size + 1 + group_size, hidden_size + int(lengths)
        fused = dims["prompt"] + dims["response_out"]
        self.lengths = lengths
        self.prompt = nn.Sequential(nn.BatchNorm1d(prompt_in), nn.Linear(prompt_in, dims["prompt"]), nn.ReLU())
        self.response = nn.Sequential(
            nn.BatchNorm1d(response_in), nn.Linear(response_in, dims["response_hidden"]), nn.ReLU(),
            nn.Linear(dims["response_hidden"], dims["response_out"]), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.BatchNorm1d(fused), nn.Linear(fused, dims["head"]), nn.ReLU(), nn.Linear(dims["head"], classes))
        self.aux = (nn.Sequential(nn.BatchNorm1d(fused), nn.Linear(fused, dims["head"]), nn.ReLU(), nn.Linear(dims["head"], 2))
                    if aux else None)

    def forward(self, prompt: Tensor, stats: Tensor, responses: Tensor, lengths: Tensor | None = None,
                mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """(logits [G, classes], aux logits [G, n, 2] or None) from `ProbeFeatures`-shaped inputs."""
        prompt = self.prompt(torch.cat([prompt, stats], -1))
        if self.lengths:
            responses = torch.cat([responses, lengths[..., None]], -1)
        weight = torch.ones(responses.shape[:2]) if mask is None else mask.float()
        g, n, d = responses.shape
        # masked responses are zeroed before and after the MLP, and left out of the mean (the paper's pooling)
        per_response = self.response((responses * weight[..., None]).reshape(g * n, d)).reshape(g, n, -1) * weight[..., None]
        pooled = per_response.sum(1) / weight.sum(1, keepdim=True).clamp(min=1)
        logits = self.head(torch.cat([prompt, pooled], -1))
        if self.aux is None:
            return logits, None
        pairs = torch.cat([prompt[:, None].expand(-1, n, -1), per_response], -1)
        return logits, self.aux(pairs.reshape(g * n, -1)).reshape(g, n, 2)


def _balance_weights(labels: Tensor, classes: int) -> Tensor:
    """Class weights count^−0.5, normalised to mean 1 over the classes present, clipped to [0.25, 4] (0 if absent)."""
    counts = torch.bincount(labels, minlength=classes).double()
    present = counts > 0
    weights = torch.zeros(classes, dtype=torch.float64)
    weights[present] = counts[present] ** -CLASS_BALANCE["power"]
    weights[present] /= weights[present].mean()
    return weights.clamp(CLASS_BALANCE["low"], CLASS_BALANCE["high"]).where(present, 0.0).float()


class CareProbe:
    """CARE's two-stage probe with its optimizers and replay buffer, trained online (see the module docstring).

    `predict` scores prompts; `learn` trains on queried prompts and then buffers them. Everything, the
    buffer and the sampling generator included, is in `state_dict`, so a resumed run continues exactly.
    """

    def __init__(self, hidden_size: int, group_size: int, *, seed: int = 0, lr: float = 1e-4, train_steps: int = 3,
                 buffer_size: int = 2048, batch_size: int = 16, aux_weight: float = 1.5, grad_clip: float = 1.0,
                 dims: dict[str, int] = PROBE_DIMS) -> None:
        self.config = {"hidden_size": hidden_size, "group_size": group_size, "dims": dict(dims)}
        self.train_steps, self.buffer_size, self.batch_size = train_steps, buffer_size, batch_size
        self.aux_weight, self.grad_clip = aux_weight, grad_clip
        with torch.random.fork_rng(devices=[]):  # seeded weights without moving the caller's RNG
            torch.manual_seed(seed)
            self.stage1 = SetScorer(hidden_size, group_size, 2, lengths=True, aux=True, dims=dims)
            self.stage2 = SetScorer(hidden_size, group_size, group_size + 1, lengths=False, aux=False, dims=dims)
        self.optimizers = [torch.optim.AdamW(stage.parameters(), lr=lr, weight_decay=0.0) for stage in (self.stage1, self.stage2)]
        self.generator = torch.Generator().manual_seed(seed)
        self.buffer: dict[str, Tensor] = {}

    @torch.no_grad()
    def predict(self, f: ProbeFeatures) -> tuple[Tensor, Tensor, Tensor]:
        """(P(majority correct) [G], P₂(y) [G, n+1] zero on impossible counts, s = Σ_y P₂(y)·CAG(n, x, y) [G]), float64."""
        self.stage1.eval(), self.stage2.eval()
        p_majority = self._stage1(vars(f))[0].softmax(-1)[:, 1].double()
        p_count = self._stage2(vars(f)).softmax(-1).double()
        n = self.config["group_size"]
        return p_majority, p_count, (p_count * count_costs(n, f.majority, f.classes)).sum(-1)

    def _stage1(self, x: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        return self.stage1(x["prompt"], x["stats"], x["responses"], x["lengths"])

    def _stage2(self, x: dict[str, Tensor]) -> Tensor:
        """Masked count logits; stage 2 pools the responses with an answer outside the majority cluster."""
        logits = self.stage2(x["prompt"], x["stats"], x["responses"], mask=x["valid"] & ~x["in_majority"])[0]
        return logits.masked_fill(~x["classes"], MASKED_LOGIT)

    def learn(self, f: ProbeFeatures, t: ProbeTargets) -> dict[str, float]:
        """`train_steps` passes over these K queried prompts plus a buffer draw each, then buffer them."""
        if len(f) == 0:
            return {}
        current = {"prompt": f.prompt, "stats": f.stats, "lengths": f.lengths, "responses": f.responses,
                   "valid": f.valid, "in_majority": f.in_majority, "majority_correct": t.majority_correct,
                   "count": t.count, "correct": t.correct}
        # the true count is always a class it may predict (the paper adds it; it can be a sum of clusters)
        current["classes"] = f.classes.clone().scatter_(1, t.count[:, None], True)
        losses: dict[str, float] = {}
        self.stage1.train(), self.stage2.train()
        for _ in range(self.train_steps):
            stage1 = self._with_history(current, self._draw(stratified=False))
            if len(stage1["count"]) >= 2:  # BatchNorm needs two rows
                logits, aux = self._stage1(stage1)
                loss = nn.functional.cross_entropy(logits, stage1["majority_correct"],
                                                   weight=_balance_weights(stage1["majority_correct"], 2))
                loss = loss + self.aux_weight * nn.functional.cross_entropy(aux.reshape(-1, 2), stage1["correct"].reshape(-1))
                losses["stage1"] = self._step(self.stage1, self.optimizers[0], loss)
            stage2 = self._with_history(current, self._draw(stratified=True))
            if len(stage2["count"]) >= 2:
                classes = self.config["group_size"] + 1
                loss = nn.functional.cross_entropy(self._stage2(stage2), stage2["count"],
                                                   weight=_balance_weights(stage2["count"], classes))
                losses["stage2"] = self._step(self.stage2, self.optimizers[1], loss)
        self.buffer = {k: torch.cat([self.buffer[k], v])[-self.buffer_size :] if self.buffer else v.clone()
                       for k, v in current.items()}
        return losses

    def _step(self, stage: nn.Module, optimizer: torch.optim.Optimizer, loss: Tensor) -> float:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(stage.parameters(), self.grad_clip)
        optimizer.step()
        return float(loss.detach())

    def _draw(self, stratified: bool) -> Tensor:
        """Buffer rows for one pass: all if it holds ≤ batch_size, else batch_size drawn without replacement.

        Stratified (stage 2, as the paper): an equal share from each count y (in increasing y), topped up at random.
        """
        size = len(self.buffer.get("count", ()))
        if size <= self.batch_size:
            return torch.arange(size)
        if not stratified:
            return torch.randperm(size, generator=self.generator)[: self.batch_size]
        labels = self.buffer["count"]
        buckets = [torch.nonzero(labels == y).flatten() for y in torch.unique(labels).tolist()]
        buckets = [b[torch.randperm(len(b), generator=self.generator)] for b in buckets]
        share = max(1, self.batch_size // len(buckets))
        picked = [b[:share] for b in buckets]
        taken = sum(len(p) for p in picked)
        if taken < self.batch_size:
            rest = torch.cat([b[share:] for b in buckets])
            picked.append(rest[torch.randperm(len(rest), generator=self.generator)][: self.batch_size - taken])
        return torch.cat(picked)[: self.batch_size]

    def _with_history(self, current: dict[str, Tensor], index: Tensor) -> dict[str, Tensor]:
        if len(index) == 0:
            return current
        return {k: torch.cat([v, self.buffer[k][index]]) for k, v in current.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"config": self.config, "stage1": self.stage1.state_dict(), "stage2": self.stage2.state_dict(),
                "optimizers": [o.state_dict() for o in self.optimizers], "buffer": dict(self.buffer),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["config"] != self.config:
            raise ValueError(f"CARE probe checkpoint is for {state['config']}, this probe is {self.config}")
        self.stage1.load_state_dict(state["stage1"])
        self.stage2.load_state_dict(state["stage2"])
        for optimizer, saved in zip(self.optimizers, state["optimizers"]):
            optimizer.load_state_dict(saved)
        self.buffer = {k: v.clone() for k, v in state["buffer"].items()}
        self.generator.set_state(state["generator"])


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
    acquisition: str = "probe",
    top_pct: float = 0.2,
    prob_gate: float = 0.25,
    soft_adv: float = 1.0,
    gate: bool = True,
    probe: CareProbe | None = None,
    features: ProbeFeatures | None = None,
    generator: torch.Generator | None = None,
    mask_non_gt: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """(rewards [B], advantage scale [B], queried [B] bool) for B rollouts of the batch's prompts.

    gt_rewards: [B], the verifier's rewards (read only for queried prompts, except by "oracle");
    answers: [B] ids (`answer_ids`); gate: False during CARE's warm-up (the paper: 20 steps).
    "probe" needs `probe` and `features` (`probe_features` of the same rollouts); it scores with the probe as
    it is, selects, then trains the probe on the queried prompts (`CareProbe.learn`). "random" draws its
    prompts with `generator` (`torch.randperm` over the prompts in group order) and, with `mask_non_gt`,
    trains only them; "pseudo_label" queries none and trains all.
    Rewards are r^gt for queried prompts and 1[a ≡ â] elsewhere. Compute GRPO advantages from them, then
    multiply by the scale.
    """
    label, _ = majority_vote(answers, group_ids)
    pseudo = ((answers == label) & (label >= 0)).to(gt_rewards.dtype)
    inverse = torch.unique(group_ids, return_inverse=True)[1]
    first_row = torch.zeros(int(inverse.max()) + 1, dtype=torch.long).scatter_reduce(
        0, inverse, torch.arange(len(inverse)), "amin", include_self=False
    )
    if acquisition == "pseudo_label":
        query = torch.zeros(len(first_row), dtype=torch.bool)
        coef = torch.ones(len(first_row), dtype=gt_rewards.dtype)
    elif acquisition == "random":
        query = torch.zeros(len(first_row), dtype=torch.bool)
        query[torch.randperm(len(first_row), generator=generator)[: _count(top_pct, len(first_row))]] = True
        coef = torch.where(query | (not mask_non_gt), 1.0, 0.0).to(gt_rewards.dtype)
    elif acquisition == "oracle":
        true_gap = corrective_advantage_gap(gt_rewards, pseudo, group_ids)[first_row]
        query = _top(true_gap, _count(top_pct, len(first_row)), torch.ones(len(first_row), dtype=torch.bool))
        coef = torch.ones(len(first_row), dtype=gt_rewards.dtype)
    elif acquisition in ("heuristic", "probe"):
        if acquisition == "heuristic":
            p_majority, score = (v[first_row] for v in heuristic_scores(answers, group_ids))
        elif probe is None or features is None:
            raise ValueError("care_acquisition='probe' needs a CareProbe and the rollouts' ProbeFeatures")
        else:
            p_majority, _, score = probe.predict(features)
        query, gated = care_select(score, p_majority, top_pct, prob_gate, gate)
        coef = torch.where(query, 1.0, (soft_adv * score * gated).clamp(0, 1)).to(gt_rewards.dtype)
        if acquisition == "probe":
            asked = features.take(query)
            # the only ground truth the probe ever sees: the rows of the prompts it just queried
            probe.learn(asked, probe_targets(asked, gt_rewards[asked.rows] > CORRECT_ABOVE))
    else:
        raise ValueError(f"care_acquisition must be one of {ACQUISITIONS}, got {acquisition!r}")
    queried = query[inverse]
    return torch.where(queried, gt_rewards, pseudo), coef[inverse], queried


def _generated(mask: Sequence[int]) -> list[int]:
    return [i for i, m in enumerate(mask) if m]


@torch.no_grad()
def care_hidden_states(model: torch.nn.Module, episodes: Sequence[Any], cfg: Any) -> tuple[Tensor, Tensor, Tensor]:
    """The probe's inputs from one no-grad pass of the policy over the episodes (CPU, float32):

    prompt [E, H], the last-layer hidden state at the prompt's last token (first sample); response [E, H],
    at the last generated token (last sample; the paper's `compute_probe_stage1_features`); lengths [E],
    generated tokens. Micro-batches as the learner cuts them (`cfg`: the `LearnerConfig`) share each
    group's prompt forward (`final_hidden`'s `share_prefix`).
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
    kept: dict[tuple[int, int], Tensor] = {}
    for rows in micro_batch_rows(batch, torch.arange(len(batch)), cfg):
        start = int(rows[0])
        with autocast(device, cfg):
            out = final_hidden(model, batch.rows(rows).to(device), cfg.share_prefix)
        here = [(row, pos) for row, pos in wanted if start <= row < start + len(rows)]
        states = out[[row - start for row, _ in here], [pos for _, pos in here]].float().cpu()
        kept.update(zip(here, states))
    prompt = torch.stack([kept[at] for at in prompt_at])
    response = torch.stack([kept[at] for at in response_at])
    lengths = torch.tensor([float(sum(sum(s.loss_mask) for s in e.samples)) for e in episodes])
    return prompt, response, lengths


@dataclass
class CareConfig:
    acquisition: Literal["probe", "heuristic", "oracle", "pseudo_label", "random"] = "probe"  # probe (CARE's learned probe) | heuristic (cluster statistics for it) | oracle | pseudo_label | random (the paper's baselines)
    random_mask_non_gt: bool = True  # random: the prompts left on pseudo-labels do not train (the paper's default)
    top_pct: float = 0.2  # label budget: ground truth for this fraction of each step's prompts
    prob_gate: float = 0.25  # fraction of prompts gated as "majority correct"
    soft_adv: float = 1.0
    warmup: int = 20  # steps before the gate opens
    probe_lr: float = 1e-4  # CARE's probe (al-rule.sh): AdamW, no weight decay
    probe_train_steps: int = 3  # passes per learner step over the queried prompts + a buffer draw
    probe_buffer: int = 2048  # replay buffer of queried prompts
    probe_batch: int = 16  # buffer prompts drawn per pass
    probe_aux_weight: float = 1.5  # stage 1's per-response correctness loss
    len_norm: int = 4000  # response lengths / this (the paper's max response length), clipped to 1


class Care(Plugin):
    """CARE: majority-vote pseudo-labels; the verifier's reward only for the prompts the acquisition selects.

    With `acquisition="probe"`, `setup` builds the probe (or `make_probe`), which every step trains on the
    queried prompts; it is checkpointed with the run (`state_dict`)."""

    name = "care"
    Config = CareConfig
    presets = {  # the paper's baselines (module docstring)
        "care_pseudo_label": {"plugins": {"care": {"acquisition": "pseudo_label"}}},
        "care_random": {"plugins": {"care": {"acquisition": "random"}}},
    }

    def __init__(self, config: CareConfig | None = None):
        super().__init__(config)
        self.probe: CareProbe | None = None
        self._scale: Tensor | None = None
        self._seed = 0  # the run's seed (setup): "random" draws from a generator keyed by (seed, step)

    def make_probe(self, hidden_size: int, group_size: int, seed: int) -> CareProbe | None:
        """The probe for this policy's hidden size and `group_size` responses per prompt; None unless used."""
        c = self.config
        if c.acquisition == "probe":
            self.probe = CareProbe(hidden_size, group_size, seed=seed, lr=c.probe_lr, train_steps=c.probe_train_steps,
                                   buffer_size=c.probe_buffer, batch_size=c.probe_batch, aux_weight=c.probe_aux_weight)
        return self.probe

    def setup(self, model: torch.nn.Module, tokenizer: Any, *, group_size: int, seed: int) -> None:
        self._seed = seed
        self.make_probe(model.config.hidden_size, group_size, seed)

    def rewards(self, rewards: Tensor, episodes: Sequence[Any], ctx: StepContext) -> Tensor:
        c = self.config
        groups = torch.tensor([int(e.group_id) for e in episodes], dtype=torch.long)
        answers = answer_ids([final_answer(e.messages) for e in episodes])
        features = None
        if c.acquisition == "probe":
            if ctx.model is None or self.probe is None:
                raise ValueError("care with acquisition='probe' needs the policy model in the step context "
                                 "(StepContext(cfg, model=...)) and its probe (Care.setup or make_probe)")
            features = probe_features(answers, groups, *care_hidden_states(ctx.model, episodes, ctx.cfg), len_norm=c.len_norm)
        rewards, self._scale, _ = care_labels(rewards, answers, groups, acquisition=c.acquisition, top_pct=c.top_pct,
                                              prob_gate=c.prob_gate, soft_adv=c.soft_adv, gate=ctx.step >= c.warmup,
                                              probe=self.probe, features=features, mask_non_gt=c.random_mask_non_gt,
                                              generator=torch.Generator().manual_seed(self._seed * 1_000_003 + ctx.step))
        return rewards

    def advantages(self, adv: Tensor, episodes: Sequence[Any], ctx: StepContext) -> Tensor:
        return adv * self._scale

    def state_dict(self) -> dict[str, Any]:
        return {"probe": self.probe.state_dict()} if self.probe is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.probe is not None and "probe" in state:
            self.probe.load_state_dict(state["probe"])
