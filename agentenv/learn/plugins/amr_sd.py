"""AMR-SD — Asymmetric Meta-Reflective Self-Distillation (arXiv 2605.18529). [R] This is the
reconstruction in docs/anchors-learner.md §2.10, built from the abstract. The exact rule, the annealing
schedule and the hint prompt are unknown.

The policy reflects on each rollout: it is shown the verifier's outcome and a peer's successful answer,
and writes a short hint h_i (a "reflection bottleneck", so the teacher never sees raw oracle traces). The
same model conditioned on h_i is the teacher. The teacher/student likelihood ratio, the Causal Information
Gain, turns into sparse token-level advantage modulations through an asymmetric ReLU gate:

    CIG_t = sg(log π_θ(y_t | x, h_i, y_<t) − log π_θ(y_t | x, y_<t))
    g_t   = ReLU(CIG_t − τ⁺)    if A_i > 0     (the hint makes the token more likely: extra credit)
    g_t   = ReLU(−CIG_t − τ⁻)   if A_i ≤ 0     (the hint makes the token less likely: extra blame)
    Ã_t   = A_i + λ(step)·sign(A_i)·g_t    ("add")     or     A_i·(1 + λ(step)·g_t)    ("mul")

λ(step) anneals linearly to 0, so the environment reward alone drives the end of training. λ = 0 is GRPO,
g = 0 wherever CIG is inside its threshold, and sign(Ã) = sign(A).

The hint sits just before the first generated token of each row (`insert_hint`). The teacher pass is one
no-grad forward per rollout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
from torch import Tensor

from agentenv.learn.learner import Batch, recompute_logprobs
from agentenv.learn.plugin import Plugin, StepContext
from agentenv.tools.parsing import final_answer

__all__ = ["AmrSd", "reflection_hints", "teacher_logprobs", "MODES", "annealed_lambda", "cig_gate", "amr_sd_advantages", "insert_hint"]

MODES = ("add", "mul")


def annealed_lambda(step: int, lam: float, anneal_steps: int) -> float:
    """λ(step) = λ·max(0, 1 − step/anneal_steps): linear decay to 0 (anneal_steps ≤ 0: constant λ)."""
    return lam if anneal_steps <= 0 else lam * max(0.0, 1.0 - step / anneal_steps)


def cig_gate(cig: Tensor, adv: Tensor, tau_pos: float, tau_neg: float) -> Tensor:
    """g_t ≥ 0: ReLU(CIG − τ⁺) where A > 0, ReLU(−CIG − τ⁻) where A ≤ 0. [B, T] (adv broadcastable) -> [B, T]."""
    return torch.where(adv > 0, torch.relu(cig - tau_pos), torch.relu(-cig - tau_neg))


def amr_sd_advantages(
    adv: Tensor, teacher_logp: Tensor, logp: Tensor, lam: float, tau_pos: float, tau_neg: float, mode: str = "add"
) -> Tensor:
    """Ã_t (see the module docstring). adv: [B, T] or [B, 1]; teacher_logp, logp: [B, T] -> [B, T]."""
    gate = cig_gate((teacher_logp - logp).detach(), adv, tau_pos, tau_neg)
    if mode == "add":
        return adv + lam * torch.sign(adv) * gate
    if mode == "mul":
        return adv * (1 + lam * gate)
    raise ValueError(f"amr_sd_mode must be one of {MODES}, got {mode!r}")


def insert_hint(
    input_ids: Tensor, attention_mask: Tensor, loss_mask: Tensor, hints: Sequence[Sequence[int]], pad_id: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """The teacher's rows: each row's hint ids inserted just before its first generated token.

    input_ids, attention_mask: [B, L]; loss_mask: [B, L-1] (column t = token t+1, as in `learner.Batch`);
    hints: B id lists -> (ids [B, L'], attention [B, L'], column [B, L-1] long). `column` maps every target
    column of the original rows to the teacher's target column of the same token:
    teacher_logp.gather(1, column) lines up with the student's logp.
    """
    rows, length = input_ids.shape
    first = torch.where(loss_mask.any(-1), loss_mask.float().argmax(-1) + 1, attention_mask.sum(-1))
    width = length + max((len(h) for h in hints), default=0)
    ids = torch.full((rows, width), pad_id, dtype=input_ids.dtype, device=input_ids.device)
    attention = torch.zeros((rows, width), dtype=attention_mask.dtype, device=input_ids.device)
    column = torch.arange(length - 1, device=input_ids.device).repeat(rows, 1)
    for i, hint in enumerate(hints):
        start, size, real = int(first[i]), len(hint), int(attention_mask[i].sum())
        hint_ids = torch.as_tensor(list(hint), dtype=input_ids.dtype, device=input_ids.device)
        ids[i, : real + size] = torch.cat([input_ids[i, :start], hint_ids, input_ids[i, start:real]])
        attention[i, : real + size] = 1
        column[i, start - 1 :] += size  # target column t predicts token t+1: shifted from token `start` on
    return ids, attention, column


def teacher_logprobs(model: torch.nn.Module, batch: Batch, hints: Sequence[Sequence[int]], cfg: Any) -> torch.Tensor:
    """The self-teacher: log π_θ(y_t | x, hint, y_<t) of every target of `batch`, aligned with it, `[B, L-1]`.

    `hints` holds one id list per row, inserted before the row's first generated token (`insert_hint`).
    It is one no-grad forward (`cfg`: the `LearnerConfig`, for micro-batching and temperature).
    """
    device = next(model.parameters()).device
    ids, attention, column = insert_hint(batch.input_ids, batch.attention_mask, batch.loss_mask, hints)
    every_token = attention[:, 1:].float()  # score every position: the hint shifts where the loss mask lies
    teacher = Batch(ids, attention, ids[:, 1:], every_token, torch.zeros_like(every_token), batch.advantages)
    return recompute_logprobs(model, teacher, cfg).gather(1, column.to(device)).to(batch.input_ids.device)


REFLECTION_PROMPT = ("The verifier judged your final answer {verdict}.{peer} In one short sentence, write a hint "
                     "that would help to solve this task, without stating the answer.")


def reflection_hints(policy: Any, episodes: Sequence[Any], max_new_tokens: int) -> list[list[int]]:
    """The reflection bottleneck: the policy's own short hint per episode, as token ids, written from the
    verifier's outcome and the answer of a solved episode of the same group (a peer rollout)."""
    solved = {}
    for e in episodes:
        if e.success:
            solved.setdefault(e.group_id, final_answer(e.messages))
    prompts = []
    for e in episodes:
        peer = solved.get(e.group_id)
        note = f" Another attempt, judged correct, answered {peer}." if peer is not None and not e.success else ""
        ask = REFLECTION_PROMPT.format(verdict="correct" if e.success else "wrong", peer=note)
        prompts.append(policy.render_prompt(list(e.messages) + [{"role": "user", "content": ask}]))
    generations = policy.generate_ids(prompts, max_new_tokens=max_new_tokens)
    return [policy.tokenizer.encode(f"Hint: {g.text.strip()}\n", add_special_tokens=False) for g in generations]


@dataclass
class AmrSdConfig:
    lam: float = 0.5  # guess; annealed linearly to 0 over anneal_steps
    anneal_steps: int = 50  # guess
    tau_pos: float = 0.2  # guess
    tau_neg: float = 0.5  # guess
    mode: Literal["add", "mul"] = "add"  # add | mul
    hint_tokens: int = 24  # length limit of the self-generated reflection hint


class AmrSd(Plugin):
    """AMR-SD: CIG-gated credit from a teacher pass conditioned on the policy's own reflection."""

    name = "amr_sd"
    Config = AmrSdConfig

    def prepare_batch(self, batch: Batch, episodes: Sequence[Any], advantages: Tensor, ctx: StepContext) -> None:
        if ctx is None or ctx.model is None or ctx.policy is None:
            raise ValueError("amr_sd needs the step's model and policy (make_batch(..., ctx=StepContext(cfg, model=..., "
                             "policy=...))) for its reflection hints and teacher pass")
        hints = reflection_hints(ctx.policy, episodes, self.config.hint_tokens)
        rows = [hint for e, hint in zip(episodes, hints) for _ in e.samples]
        batch.extras["teacher_logp"] = teacher_logprobs(ctx.model, batch, rows, ctx.cfg)

    def token_advantages(self, adv: Tensor, logp: Tensor, micro: Batch, ctx: StepContext) -> Tensor:
        c = self.config
        lam = annealed_lambda(ctx.step, c.lam, c.anneal_steps)
        return amr_sd_advantages(adv, micro.extras["teacher_logp"], logp, lam, c.tau_pos, c.tau_neg, c.mode)
