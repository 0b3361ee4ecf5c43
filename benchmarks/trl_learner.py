"""TRL side of benchmarks/bench_learner.py: one GRPO update through TRL's own loss/update path.

Run it with the TRL venv's interpreter (benchmarks/setup_trl.sh builds `.venv-trl`), never the project's:

    .venv-trl/bin/python benchmarks/trl_learner.py WORKDIR --threads 1

WORKDIR holds what bench_learner.py wrote: `model/` (a saved Qwen2ForCausalLM, the same weights our side
loads), `trl_inputs.pt` (TRL's batch dict: left-padded `prompt_ids`/`prompt_mask`, right-padded
`completion_ids`/`completion_mask`, `advantages` [B], `num_items_in_batch`) and `config.json` (lr,
epsilons, max_grad_norm, temperature). The tokenizer is the project's shipped tiny tokenizer, read from
`agentenv/assets/tiny_tokenizer` as plain files (agentenv itself is not importable here).

It builds a real `GRPOTrainer` (loss_type="dapo", beta=0, num_iterations=1: TRL's defaults, with
epsilon_high set to ours) and then, per `step` command on stdin, runs exactly what `Trainer` runs for one
optimizer step, minus generation:

    trainer.training_step(model, inputs, num_items_in_batch)   # model.train(), compute_loss (TRL
                                                               # `_compute_loss`: fused chunked LM head,
                                                               # ratios, clip, dapo aggregation, metrics),
                                                               # accelerator.backward
    trainer._clip_grad_norm(model); trainer.optimizer.step(); trainer.lr_scheduler.step(); model.zero_grad()

`_prepare_inputs` (which would generate completions) is replaced by the identity, so the precomputed
completions are what the loss sees. Gradient checkpointing is off (GRPOConfig defaults it to True; it
trades compute for memory, which a like-for-like speed comparison must not charge to TRL).

Protocol: one JSON line per command. `ready` after setup; for `step`: {"seconds", "loss", "grad_norm"};
`quit` exits.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
warnings.filterwarnings("ignore")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    work = Path(args.workdir)

    import torch

    torch.set_num_threads(args.threads)
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging
    from trl import GRPOConfig, GRPOTrainer

    hf_logging.set_verbosity_error()
    cfg = json.loads((work / "config.json").read_text())
    tokenizer = PreTrainedTokenizerFast.from_pretrained(cfg["tokenizer_dir"])
    model = AutoModelForCausalLM.from_pretrained(str(work / "model"), dtype=torch.float32, local_files_only=True)
    inputs = torch.load(work / "trl_inputs.pt", weights_only=True)
    batch = inputs["completion_ids"].shape[0]

    targs = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="agentenv-bench-trl-"),
        per_device_train_batch_size=batch,
        num_generations=cfg["group_size"],
        max_completion_length=inputs["completion_ids"].shape[1],
        learning_rate=cfg["lr"],
        beta=0.0,
        epsilon=cfg["eps_low"],
        epsilon_high=cfg["eps_high"],
        loss_type="dapo",
        temperature=cfg["temperature"],
        max_grad_norm=cfg["max_grad_norm"],
        weight_decay=0.0,
        lr_scheduler_type="constant",
        gradient_checkpointing=False,
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        seed=0,
        dataloader_num_workers=0,
    )
    dataset = Dataset.from_list([{"prompt": "unused"}] * batch)
    trainer = GRPOTrainer(model=model, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=targs,
                          train_dataset=dataset, processing_class=tokenizer)
    trainer.create_optimizer_and_scheduler(num_training_steps=1000)
    trainer.current_gradient_accumulation_steps = 1
    trainer._prepare_inputs = lambda generation_batch: generation_batch  # completions are precomputed
    model = trainer.model
    num_items = inputs["num_items_in_batch"]
    print(json.dumps({"ready": True, "trl": trl.__version__, "transformers": __import__("transformers").__version__,
                      "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "optimizer": type(trainer.optimizer).__name__}), flush=True)

    for line in sys.stdin:
        command = line.strip()
        if command == "quit":
            break
        if command != "step":
            continue
        step_inputs = dict(inputs)  # training_step deletes its reference; keep ours
        t0 = time.perf_counter()
        loss = trainer.training_step(model, step_inputs, num_items)
        grad_norm = trainer._clip_grad_norm(model)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        model.zero_grad()
        seconds = time.perf_counter() - t0
        print(json.dumps({"seconds": seconds, "loss": float(loss), "grad_norm": float(grad_norm)}), flush=True)


if __name__ == "__main__":
    main()
