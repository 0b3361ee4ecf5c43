"""Does the plug-in wiring slow the default GRPO step? `update()` timed before and after, on one fixed batch.

- before: the working tree's `agentenv/policies/learner.py` with every plug-in hook cut out of its source,
  loaded as a separate module. Every `if` statement whose condition reads `cfg.plugins` is removed, so what
  is left is the same learner (HRR, shared prefixes, …) as it would be without the plug-ins.
  `--baseline-ref REF` instead takes learner.py as of a git commit, unchanged.
- after: the working tree's learner with `plugins=[]`, i.e. every hook present but disabled.

Both use the working tree's `objectives.py`, the same tiny random Qwen2 (`tiny_model("tiny")`), their own
copy of its weights and their own AdamW, and the same batch: 4 prompts (40–70 tokens) × 8 sampled
completions (30–100 tokens), with GRPO advantages. Three settings are timed: `agentenv train`'s learner
default (one epoch, one mini-batch, micro-batch 32); 4 mini-batches, the off-policy path; and 2 rows of
the same batch, an update so small that Python overhead, where the hooks live, is a large share of it.

Timing: one torch thread, a few warm-up updates, then before and after alternated (A B B A A B …, so
drift cancels). Both the process's CPU time and the wall time are taken. CPU time is the primary
figure: on a machine shared with other jobs, the wall time also counts the time this process waits for a
core. The report gives medians, B/A, and the median of the per-pair ratios. An A/A row (before against
itself) shows the noise floor. The acceptance bar is B/A ≤ 1.05.

`--with-plugins` also times each plug-in switched on. Its preset's extra work (e.g. the 4 mini-batches)
is not added: the settings are the default ones.

    python benchmarks/bench_plugins_overhead.py [--repeats 30] [--baseline-ref REF] [--with-plugins] [--json OUT]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import ast  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import torch  # noqa: E402

from agentenv.policies import learner as current  # noqa: E402
from agentenv.policies import plugins as P  # noqa: E402
from agentenv.policies.tiny import tiny_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LEARNER = "agentenv/policies/learner.py"
# name -> (LearnerConfig overrides, rows); 2 short rows make the update Python-bound, where hooks would show most
SETTINGS = {"default": (dict(micro_batch_size=32, lr=5e-4), 32),
            "mini_batches=4": (dict(micro_batch_size=32, lr=5e-4, mini_batches=4), 32),
            "2 rows": (dict(micro_batch_size=32, lr=5e-4), 2)}


class _CutHooks(ast.NodeTransformer):
    """Cut the plug-in hooks: every `if` (statement or expression) on `cfg.plugins` becomes its `else`, and
    `x or "name" in cfg.plugins` becomes `x`."""

    def visit_If(self, node: ast.If):
        self.generic_visit(node)
        return node.orelse or None if "plugins" in ast.unparse(node.test) else node

    def visit_IfExp(self, node: ast.IfExp):
        self.generic_visit(node)
        return node.orelse if "plugins" in ast.unparse(node.test) else node

    def visit_BoolOp(self, node: ast.BoolOp):
        self.generic_visit(node)
        kept = [value for value in node.values if "plugins" not in ast.unparse(value)]
        return node if len(kept) == len(node.values) else kept[0] if len(kept) == 1 else ast.BoolOp(node.op, kept)


def baseline_source(ref: str | None) -> tuple[str, str]:
    """(what, source) of the learner before the plug-in hooks: the working tree with them cut, or git `ref`."""
    if ref:
        return f"{LEARNER} @ {ref}", subprocess.run(["git", "show", f"{ref}:{LEARNER}"], cwd=ROOT, check=True,
                                                    capture_output=True, text=True).stdout
    tree = _CutHooks().visit(ast.parse((ROOT / LEARNER).read_text(encoding="utf-8")))
    if any(isinstance(node, ast.Attribute) and node.attr == "plugins" for node in ast.walk(tree)):
        raise SystemExit("a plug-in hook survived the cut; update _CutHooks")
    return f"{LEARNER} (working tree) with the plug-in hooks cut", ast.unparse(ast.fix_missing_locations(tree))


def load_module(name: str, source: str) -> types.ModuleType:
    module = types.ModuleType(name)
    sys.modules[name] = module  # dataclasses look their module up
    exec(compile(source, f"<{name}>", "exec"), module.__dict__)
    return module


def episodes(rows: int, seed: int = 0) -> list[SimpleNamespace]:
    g = torch.Generator().manual_seed(seed)
    out = []
    prompts = [torch.randint(10, 3000, (40 + 10 * k,), generator=g).tolist() for k in range(4)]
    for i in range(rows):
        completion = torch.randint(10, 3000, (30 + int(torch.randint(0, 71, (1,), generator=g)),), generator=g).tolist()
        ids, prompt = prompts[i // 8] + completion, len(prompts[i // 8])
        sample = SimpleNamespace(token_ids=ids, loss_mask=[0] * prompt + [1] * len(completion),
                                 old_logprobs=[0.0] * len(ids), control_mask=[0] * len(ids))
        out.append(SimpleNamespace(group_id=i // 8, reward=float(torch.rand(1, generator=g) < 0.5), samples=[sample],
                                   truncated=False, messages=[]))
    return out


class Side:
    """One learner module with its own model, optimizer and batch."""

    def __init__(self, module: types.ModuleType, base: torch.nn.Module, setting: tuple[dict, int], plugins: list[str]):
        settings, rows = setting
        self.module = module
        self.cfg = module.LearnerConfig(**settings, **({"plugins": plugins} if plugins else {}))
        self.model = copy.deepcopy(base)
        self.ref = copy.deepcopy(base) if "owpo" in plugins else None
        if "occ" in plugins:
            P.attach_mtp_head(self.model)
        if "ih_grpo" in plugins:
            self.cfg.ih_token_id = 5
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr)
        eps = episodes(rows)
        self.batch = module.make_batch(eps, module.episode_advantages(eps, self.cfg), pad_id=0)
        if "amr_sd" in plugins:
            hints = [[7, 8, 9]] * len(self.batch)
            self.batch.extras["teacher_logp"] = module.teacher_logprobs(self.model, self.batch, hints, self.cfg)
        self.generator = torch.Generator()
        self.steps = 0

    def update(self) -> tuple[float, float]:
        """(wall s, CPU s) of one update."""
        self.generator.manual_seed(self.steps)
        kwargs = {"ref_model": self.ref} if self.ref is not None else {}
        wall, cpu = time.perf_counter(), time.process_time()
        self.module.update(self.model, self.optimizer, self.batch, self.cfg, generator=self.generator, **kwargs)
        self.steps += 1
        return time.perf_counter() - wall, time.process_time() - cpu


def interleaved(a: Side, b: Side, repeats: int, warmup: int) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    for _ in range(warmup):
        a.update(), b.update()
    times_a, times_b = [], []
    for rep in range(repeats):
        for side, times in ((a, times_a), (b, times_b)) if rep % 2 == 0 else ((b, times_b), (a, times_a)):
            times.append(side.update())
    return times_a, times_b


def summary(times_a: list[tuple[float, float]], times_b: list[tuple[float, float]]) -> dict[str, float]:
    """Medians (ms) of CPU and wall time, their ratios b/a, and the median per-pair CPU ratio."""
    out = {}
    for kind, k in (("cpu", 1), ("wall", 0)):
        a, b = [t[k] for t in times_a], [t[k] for t in times_b]
        out[f"{kind}_a_ms"], out[f"{kind}_b_ms"] = 1e3 * statistics.median(a), 1e3 * statistics.median(b)
        out[f"{kind}_ratio"] = statistics.median(b) / statistics.median(a)
        out[f"{kind}_paired"] = statistics.median(y / x for x, y in zip(a, b))
    out["cpu_a_all_ms"] = [round(1e3 * t[1], 2) for t in times_a]
    out["cpu_b_all_ms"] = [round(1e3 * t[1], 2) for t in times_b]
    return out


def row(name: str, r: dict[str, float]) -> str:
    return (f"{name:<16}{r['cpu_a_ms']:>10.1f}{r['cpu_b_ms']:>10.1f}{r['cpu_ratio']:>9.3f}{r['cpu_paired']:>9.3f}"
            f"{r['wall_ratio']:>9.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--baseline-ref", default=None)
    parser.add_argument("--with-plugins", action="store_true")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results_plugins_overhead.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    what, source = baseline_source(args.baseline_ref)
    before = load_module("learner_before_plugins", source)
    base = tiny_model("tiny", seed=0).train()
    results = {"before": what, "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
               "cpus": os.cpu_count(), "load_avg": os.getloadavg(), "threads": torch.get_num_threads(),
               "repeats": args.repeats, "settings": {}}
    header = f"{'':<16}{'CPU ms':>10}{'CPU ms':>10}{'CPU':>9}{'CPU':>9}{'wall':>9}"
    print(f"A (before): {what}\nB (after): the working tree with plugins=[]; tiny model, 1 torch thread; medians")
    print(f"{header}\n{'setting':<16}{'A':>10}{'B':>10}{'B/A':>9}{'paired':>9}{'B/A':>9}")
    pairs = [(name, setting, current) for name, setting in SETTINGS.items()] + [("A/A default", SETTINGS["default"], before)]
    for name, setting, after in pairs:
        r = summary(*interleaved(Side(before, base, setting, []), Side(after, base, setting, []), args.repeats, args.warmup))
        results["settings"][name] = r
        print(row(name, r))
    if args.with_plugins:
        repeats = max(args.repeats // 3, 5)
        print(f"\neach plug-in on, default setting, {repeats} repeats: A = plugins=[], B = plugins=[name]")
        print(f"{header}\n{'plug-in':<16}{'off':>10}{'on':>10}{'on/off':>9}{'paired':>9}{'on/off':>9}")
        results["plugins_on"] = {}
        for plugin in P.PLUGINS:
            off, on = Side(current, base, SETTINGS["default"], []), Side(current, base, SETTINGS["default"], [plugin])
            r = summary(*interleaved(off, on, repeats, 1))
            results["plugins_on"][plugin] = r
            print(row(plugin, r))
    Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
