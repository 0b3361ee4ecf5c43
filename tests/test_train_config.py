"""Training configs: dataclass defaults, YAML, then --key=value overrides (dotted for nested ones)."""

import pytest

from agentenv.cli import main
from agentenv.errors import UserError
from agentenv.learn.train import HELD_OUT_SEED_BASE, TrainConfig, load_config, train_task_seed


def test_yaml_then_cli_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("steps: 7\nlearner:\n  lr: 1.0e-5\n  loss: cispo\nenv_kwargs:\n  execution: delayed\n")
    cfg = load_config(str(path), ["--learner.lr=7e-4", "--group_size=4", "--env_kwargs.kinds=[counting]"])
    assert cfg.steps == 7 and cfg.group_size == 4
    assert cfg.learner.lr == pytest.approx(7e-4) and cfg.learner.loss == "cispo"
    assert cfg.env_kwargs["execution"] == "delayed" and cfg.env_kwargs["kinds"] == ["counting"]
    assert TrainConfig().learner.lr != cfg.learner.lr  # defaults are not shared between instances


@pytest.mark.parametrize("override", ["--stepz=3", "--learner.nope=1", "steps"])
def test_bad_keys_are_user_errors(override):
    with pytest.raises(UserError):
        load_config(None, [override])


@pytest.mark.parametrize("argv", [["train", "--stepz=3"], ["train", "--learner.nope=1"], ["run", "ToolReasoning-v0", "--policy", "bogus"],
                                  ["run", "ToolReasoning-v0", "--env-arg", "novalue"], ["list", "--extra"],
                                  ["run", "ToolReasoning-v0", "--batch-size", "0"], ["run", "ToolReasoning-v0", "--episodes", "0"],
                                  ["run", "NoSuchEnv-v0"], ["run", "ToolReasoning-v0", "--env-arg", "max_turns=0"],
                                  ["run", "ToolReasoning-v0", "--env-arg", "bogus=1"], ["train", "no/such/config.yaml"],
                                  ["stress", "no/such/scenario.yaml"]])
def test_cli_user_errors_are_one_line_and_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"agentenv {argv[0]}: error: ") and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("run_seed", [0, 1, 9, 10, 11, 99, 12345])
def test_training_tasks_never_reach_the_held_out_range(run_seed):
    # every step of a long run, every task of a step: below the first held-out seed
    seeds = [train_task_seed(run_seed, step, 64, i) for step in range(0, 20_000, 7) for i in (0, 63)]
    assert max(seeds) < HELD_OUT_SEED_BASE and min(seeds) >= 0
    assert train_task_seed(run_seed, 3, 8, 5) == train_task_seed(run_seed, 3, 8, 5)  # deterministic


def test_training_seeds_of_small_runs_are_unchanged():
    # runs with seed < 10 drew these seeds before the fix: their episodes and metrics stay the same
    assert [train_task_seed(0, 2, 8, i) for i in range(3)] == [16, 17, 18]
    assert train_task_seed(3, 5, 8, 1) == 300_000_041


@pytest.mark.parametrize("override, needle", [
    ("--learner.loss=cispoo", "did you mean 'cispo'"),
    ("--learner.plugins=fipo,owpoo", "did you mean 'owpo'"),
    ("--device=cdua", "did you mean 'cuda'"),
    ("--learner.lrr=1e-4", "did you mean 'lr'"),
    ("--learner.plugins.owpo.kapa=2", "did you mean 'kappa'"),
    ("--learner.plugins.care.acquisition=oracel", "did you mean 'oracle'"),
    ("--learner.preset=dappo", "did you mean 'dapo'"),
])
def test_a_misspelt_choice_or_key_fails_at_once_naming_the_choices(override, needle, capsys):
    import time

    start = time.perf_counter()
    assert main(["train", override]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err, err
    assert time.perf_counter() - start < 5.0  # before the model, the SFT warm start or any step


def test_agentenv_run_extrapolates_an_rl_model_from_its_base(tmp_path, capsys):
    """Δlog p at test time from the command line: --policy hf:RL --extrapolate-from hf:BASE --alpha A."""
    import json

    from agentenv.policies.tiny import tiny_model, tiny_tokenizer

    for name, seed in (("base", 0), ("rl", 1)):
        tiny_model("tiny", seed=seed).save_pretrained(tmp_path / name)
        tiny_tokenizer().save_pretrained(tmp_path / name)
    common = ["run", "ToolReasoning-v0", "--policy", f"hf:{tmp_path / 'rl'}", "--episodes", "2", "--quiet", "--env-arg", "max_turns=1"]
    assert main([*common, "--out", str(tmp_path / "plain.jsonl")]) == 0
    assert main([*common, "--extrapolate-from", f"hf:{tmp_path / 'base'}", "--alpha", "1.0",
                 "--out", str(tmp_path / "extrapolated.jsonl")]) == 0
    plain, extrapolated = ([json.loads(line)["messages"] for line in (tmp_path / f).read_text().splitlines()]
                           for f in ("plain.jsonl", "extrapolated.jsonl"))
    assert plain != extrapolated  # the base model's log-probs changed what was sampled
    assert main(["run", "ToolReasoning-v0", "--policy", "scripted", "--extrapolate-from", "hf:x"]) == 2
    assert "needs an HF policy" in capsys.readouterr().err


def test_eval_json_keeps_each_held_out_task_in_seed_order(tmp_path, capsys):
    """Per-task outcomes (0/1, held-out seed order) before and after, so two runs can be compared task by task
    (benchmarks/ablation.py's paired bootstrap); their means are the reported success rates. The log line stays short."""
    import json

    from agentenv.learn.train import train

    cfg = load_config(None, ["--steps=1", "--sft_steps=2", "--sft_episodes=8", "--eval_tasks=5", "--tasks_per_step=2",
                             "--group_size=2", "--max_new_tokens=8", f"--out_dir={tmp_path}"])
    logged = []
    summary = train(cfg, log=logged.append)
    saved = json.loads((tmp_path / "eval.json").read_text())
    for when in ("before", "after"):
        outcomes = saved[f"held_out_{when}"]
        assert len(outcomes) == 5 and set(outcomes) <= {0.0, 1.0}
        assert saved[f"success_{when}"] == pytest.approx(sum(outcomes) / 5) == summary[f"success_{when}"]
    assert "held_out" not in logged[-1]


def test_each_step_reports_its_truncated_episodes(tmp_path):
    """`truncated_rate`: the share of the step's episodes cut by the turn limit or by max_seq_len (a Ledger-v0 run at
    1,024 ids once trained on first turns only, unseen). A max_seq_len below every first prompt is a one-line
    UserError, in the warm start and in a step, not a crash in the batch."""
    import json

    from agentenv.errors import UserError
    from agentenv.learn.train import train

    common = ["--steps=1", "--sft_episodes=4", "--eval_tasks=0", "--tasks_per_step=2", "--group_size=2", "--max_new_tokens=8"]
    rows = {}
    for max_seq_len in (240, 1024):  # first prompts are ~230 ids: 240 leaves room for one short turn only
        out = tmp_path / str(max_seq_len)
        train(load_config(None, [*common, "--sft_steps=1", f"--max_seq_len={max_seq_len}", f"--out_dir={out}"]),
              log=lambda m: None)
        rows[max_seq_len] = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert rows[240]["truncated_rate"] == 1.0 and rows[240]["turns_mean"] == 1.0
    assert rows[1024]["turns_mean"] > 1.0  # the same untrained policy, with room, takes more turns
    for sft_steps in (1, 0):
        with pytest.raises(UserError, match="max_seq_len=64 leaves no room"):
            train(load_config(None, [*common, f"--sft_steps={sft_steps}", "--max_seq_len=64",
                                     f"--out_dir={tmp_path / f'tiny{sft_steps}'}"]), log=lambda m: None)


def test_resume_takes_the_learning_rate_from_the_config_not_the_checkpoint(tmp_path):
    """An arm resumed from a shared warm start (benchmarks/ablation.py) with another --learner.lr trains at that lr:
    the optimizer's moments come from the checkpoint, its settings from the run's config."""
    import torch

    from agentenv.learn.train import train

    common = ["--sft_steps=1", "--sft_episodes=4", "--eval_tasks=0", "--tasks_per_step=2", "--group_size=2",
              "--max_new_tokens=8", f"--out_dir={tmp_path}"]
    train(load_config(None, [*common, "--steps=0", "--learner.lr=5e-4"]), log=lambda m: None)
    assert torch.load(tmp_path / "checkpoint" / "state.pt", weights_only=False)["optimizer"]["param_groups"][0]["lr"] == 5e-4
    train(load_config(None, [*common, "--steps=1", "--learner.lr=1e-4", "--learner.weight_decay=0.5"]), resume=True,
          log=lambda m: None)
    group = torch.load(tmp_path / "checkpoint" / "state.pt", weights_only=False)["optimizer"]["param_groups"][0]
    assert (group["lr"], group["weight_decay"]) == (1e-4, 0.5)


def test_trained_policy_loads_a_runs_newest_checkpoint(tmp_path):
    """Benchmarks evaluate finished runs again (benchmarks/ledger_decisions.py, bench_audio_train.py): the policy has
    the checkpoint's weights, and a directory without a checkpoint is a UserError."""
    import torch

    from agentenv.errors import UserError
    from agentenv.learn.train import held_out_seeds, train, trained_policy

    cfg = load_config(None, ["--steps=1", "--sft_steps=1", "--sft_episodes=4", "--eval_tasks=0", "--tasks_per_step=2",
                             "--group_size=2", "--max_new_tokens=8", f"--out_dir={tmp_path}"])
    train(cfg, log=lambda m: None)
    saved = torch.load(tmp_path / "checkpoint" / "state.pt", weights_only=False)["model"]
    _, model = trained_policy(cfg, tmp_path)
    assert all(torch.equal(model.state_dict()[name], value) for name, value in saved.items())
    with pytest.raises(UserError, match="no complete checkpoint"):
        trained_policy(cfg, tmp_path / "empty")
    assert held_out_seeds(3) == [HELD_OUT_SEED_BASE, HELD_OUT_SEED_BASE + 1, HELD_OUT_SEED_BASE + 2]


def test_warm_start_teacher_defaults_belong_to_the_envs_scripted_agent():
    """An unset `sft_teacher` gives each env's scripted agent its own warm-start options (ToolReasoning-v0: every
    formula for every question); an env whose agent takes none (Ledger-v0) still gets its agent, not an error."""
    from agentenv.envs.ledger.scripted import LedgerReader
    from agentenv.registration import scripted_policy

    assert TrainConfig().sft_teacher == {}
    assert scripted_policy("agentenv/ToolReasoning-v0", warm_start=True).every_formula is True
    assert scripted_policy("agentenv/ToolReasoning-v0", warm_start=True, wrong_formula=0.5).every_formula is False
    assert isinstance(scripted_policy("agentenv/Ledger-v0", warm_start=True), LedgerReader)
