"""LLM-as-judge bias before and after mitigation, with bootstrap 95% CIs: `python benchmarks/judge_bias.py`.

Judges (all tiny Qwen2-shaped models from `agentenv.policies.tiny`; nothing downloaded):
* random-init: a degenerate judge (no training);
* under-trained: SFT'd 60 steps on the judge tasks (`benchmarks/judge_models.py`);
* trained: SFT'd 150 steps (seeds 0, 1, 2; seed 0 is "the" judge, seeds 0–2 the panel);
* an exact checker, as a reference row (a program, not an LLM judge).

Probe set: `arithmetic_items(N, seed=0)` (N = 240 questions, each judged in both orders), their wrong answers
padded with filler for the verbosity probe, and, for self-preference, the judge model's own answers (greedy)
against the seed-1 judge's answers to the same questions, where both are equally correct and differ.

Mitigations: swap-and-average (text verdicts, and log-prob verdicts = the order-averaged, PINE-style scoring),
a 3-judge panel (majority), the panel after one debate round, the panel with a meta-judge, and a debate
whose first member is a swap-averaged judge (the seed paper's "bias-free agent" in a debate).

Writes `benchmarks/judge_bias.md` (its "Reading" section is written by hand from the run). Flags: --questions N, --steps S (trained judges), --out PATH.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]  # this checkout's agentenv
from judge_models import solver_chat, train_judge  # noqa: E402

from agentenv.rewards.judge import Judgement, PairItem, PairwiseJudge, Panel, SwapAveraged  # noqa: E402
from agentenv.rewards.judge.probes import (arithmetic_items, bootstrap, equal_correctness_pairs, pad,  # noqa: E402
                                           position_stats, preferences, self_preference, verbosity_shift)

_LAST_NUMBER = re.compile(r"-?\d+")


class ExactChecker:
    """Reference row, not an LLM: prefers the response whose last number is the true sum (a tie otherwise)."""

    def compare(self, items):
        def right(item, text):
            a, b = map(int, re.findall(r"\d+", item.question))
            numbers = _LAST_NUMBER.findall(text)
            return bool(numbers) and int(numbers[-1]) == a + b

        return [Judgement(0.5 + 0.5 * (right(i, i.response_a) - right(i, i.response_b))) for i in items]


def measure(name: str, judge, items, self_pairs) -> dict:
    start = time.perf_counter()
    terse_pairs = [(i.question, i.right, i.wrong) for i in items]
    padded_pairs = [(i.question, i.right, pad(i.wrong, k)) for k, i in enumerate(items)]
    terse, padded = preferences(judge, terse_pairs), preferences(judge, padded_pairs)
    own = preferences(judge, self_pairs) if self_pairs else None
    stats = position_stats(terse)
    unparsed = _unparsed_rate(judge, items[:40])
    row = {
        "judge": name,
        "accuracy": bootstrap(stats["accuracy"]),
        "position": bootstrap(stats["first"]),
        "consistent": bootstrap(stats["consistent"]),
        "verbosity": bootstrap(verbosity_shift(terse, padded)),
        "self": bootstrap(self_preference(own)) if own is not None else None,
        "unparsed": unparsed,
        "seconds": time.perf_counter() - start,
    }
    print(f"{name:58s} acc {row['accuracy']}  pos {row['position']}  consistent {row['consistent']}  verb {row['verbosity']}  "
          f"self {row['self']}  unparsed {unparsed:.2f}  {row['seconds']:.0f} s", flush=True)
    return row


def _unparsed_rate(judge, items) -> float:
    judged = judge.compare([PairItem(i.question, i.right, i.wrong) for i in items])
    return sum(not j.parsed for j in judged) / len(judged)


def own_answers(policy, questions) -> list[str]:
    return [g.text.strip() for g in policy.generate([solver_chat(q) for q in questions])]


def table(rows) -> str:
    head = ("| judge | accuracy | position bias (P(first) − 0.5) | swap consistency | verbosity shift | self-preference (n) "
            "| unparsed | wall |\n|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        self_cell = f"{r['self']} (n={r['self'].n})" if r["self"] is not None else "n/a"
        lines.append(f"| {r['judge']} | {r['accuracy']} | {r['position']} | {r['consistent']} | {r['verbosity']} | {self_cell} "
                     f"| {r['unparsed']:.2f} | {r['seconds']:.0f} s |")
    return head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--questions", type=int, default=240)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--weak-steps", type=int, default=60)
    parser.add_argument("--out", default=str(Path(__file__).with_name("judge_bias.md")))
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    items = arithmetic_items(args.questions, seed=0)
    questions = [i.question for i in items]
    right = {k: i.right for k, i in enumerate(items)}
    is_right = lambda k, answer: answer.strip() == right[k]  # noqa: E731

    from agentenv.policies.hf import HFPolicy
    from agentenv.policies.tiny import tiny_model

    print("training judges ...", flush=True)
    t0 = time.perf_counter()
    trained = [train_judge(seed, steps=args.steps) for seed in (0, 1, 2)]
    weak = train_judge(3, steps=args.weak_steps)
    train_s = time.perf_counter() - t0
    random_init = HFPolicy(tiny_model("tiny", seed=0), temperature=0.0, max_new_tokens=12)

    other = own_answers(trained[1], questions)  # "another model": the seed-1 judge's answers

    def self_pairs(policy):
        return equal_correctness_pairs(questions, own_answers(policy, questions), other, is_right)

    pairs_random, pairs_weak, pairs_trained = self_pairs(random_init), self_pairs(weak), self_pairs(trained[0])
    solvers = {name: own_answers(p, questions) for name, p in
               (("trained seed 0", trained[0]), ("trained seed 1", trained[1]), ("under-trained", weak), ("random-init", random_init))}
    solver = "; ".join(f"{name}: right {sum(is_right(k, a) for k, a in enumerate(answers)) / len(items):.2f}, ends in an even "
                       f"digit {sum(bool(re.search(r'[02468]$', a)) for a in answers) / len(items):.2f}"
                       for name, answers in solvers.items())

    text = [PairwiseJudge(p, "pairwise", method="text") for p in trained]
    logprob0 = PairwiseJudge(trained[0], "pairwise", method="logprob")
    rows = [measure("exact checker (reference, not an LLM)", ExactChecker(), items, pairs_trained)]
    for name, policy, pairs in (("random-init", random_init, pairs_random), ("under-trained (60 steps)", weak, pairs_weak)):
        rows.append(measure(f"{name}, text verdict", PairwiseJudge(policy, "pairwise", method="text"), items, pairs))
        if name != "random-init":  # its text replies are never verdicts: swapping ties with ties shows nothing
            rows.append(measure(f"{name}, text + swap-and-average", SwapAveraged(PairwiseJudge(policy, "pairwise", method="text")),
                                items, pairs))
        rows.append(measure(f"{name}, log-prob verdict", PairwiseJudge(policy, "pairwise", method="logprob"), items, pairs))
        rows.append(measure(f"{name}, log-prob + swap-average (PINE-style)",
                            SwapAveraged(PairwiseJudge(policy, "pairwise", method="logprob")), items, pairs))
    rows += [
        measure("trained, text verdict", text[0], items, pairs_trained),
        measure("trained, text + swap-and-average", SwapAveraged(text[0]), items, pairs_trained),
        measure("trained, log-prob verdict", logprob0, items, pairs_trained),
        measure("trained, log-prob + swap-average (PINE-style)", SwapAveraged(logprob0), items, pairs_trained),
        measure("panel of 3 trained (text, majority)", Panel(text), items, pairs_trained),
        measure("panel + 1 debate round (majority)", Panel(text, debate_rounds=1), items, pairs_trained),
        measure("panel + meta-judge (trained seed 0)", Panel(text, meta_judge=text[0]), items, pairs_trained),
        measure("debate with a swap-averaged member", Panel([SwapAveraged(text[0])] + text[1:], debate_rounds=1),
                items, pairs_trained),
    ]
    wall = time.perf_counter() - started
    report = f"""# LLM-as-judge bias before and after mitigation

`python benchmarks/judge_bias.py` ({args.questions} questions, each judged in both orders; judges trained
{args.steps} SFT steps, the under-trained one {args.weak_steps}; 1 torch thread on a shared 2-core machine).
Wall time {wall / 60:.1f} min, of which {train_s / 60:.1f} min training the four tiny judges in-process.

Values are means with bootstrap 95% intervals over questions (2,000 resamples). Accuracy: P(right answer
preferred), both orders averaged (0.5 = chance). Position bias: P(the answer shown first preferred) − 0.5.
Swap consistency: share of pairs given the same decisive verdict on the content in both orders (a tie is
never consistent). Verbosity shift: P(wrong preferred | wrong answer padded with confident filler) −
P(wrong preferred | terse). Self-preference: P(judge model's own answer preferred) − 0.5 over pairs of its
own and the seed-1 judge's greedy answers to the same question with equal correctness and different text
(panels: their seed-0 member's answers). Unparsed: share of text replies the reader could not read (those
count as a tie, the fallback 0.5).

{table(rows)}
Setup. Synthetic set `agentenv.rewards.judge.probes.arithmetic_items`: "What is a + b?" with an even sum in
[10, 98]; the wrong answer is the sum ± 1 or ± 3. Right and wrong answers therefore differ in last-digit
parity, and that is the cue the tiny judges learn. What else was tried with the 0.65 M-parameter model (SFT,
batch 32–64, lr 1e-3–1e-2, CPU): judging single-digit sums without a reference (600 steps), picking the
answer equal to a shown reference (chat prompt, 1,200 steps; also mixed with the ToolReasoning warm-start
demonstrations, 400 steps), and, in an 11-token prompt, which of two digits equals a third (1,000 steps) or
the parity of two digits' sum (400 steps): all stayed at chance. The parity of one digit is learnt within
200 steps. The probe questions are drawn from the same 2,385 possible questions as the judges'
training questions (different draws), so accuracy is in-distribution.

The judges are also trained to answer the questions. Their greedy answers on the probe questions ({solver})
are mostly wrong, so the self-preference pairs are mostly both-wrong pairs. The judges were trained with two
or three other judges' (noisy, 70% right) verdicts in some prompts, so a debate round (2 shown) and the
meta-judge (3 shown) see a prompt format they have been trained on.

The reading at the end is written by hand from this run (the run is deterministic: seeded data, init and
sampling, one thread).
"""
    Path(args.out).write_text(report, encoding="utf-8")
    print(f"wrote {args.out} ({wall:.0f} s)")


if __name__ == "__main__":
    main()
