"""`agentenv train`: warm-start SFT on scripted demonstrations, then GRPO on an agentenv env.

The loop, top to bottom: build the policy → (resume from the last checkpoint, or SFT warm start and a
held-out evaluation) → for each step: collect N tasks × G samples → advantages → update → log metrics
→ checkpoint every K steps → final held-out evaluation, reward-curve plot.

Everything a run writes lives in `out_dir`: `metrics.jsonl` (one line per step, rewritten atomically on
resume so no step is lost or repeated), TensorBoard events in `tb/` (if tensorboard is installed),
`checkpoint/` (model, optimizer, step, every RNG state; replaced atomically), `eval.json` and
`reward_curve.png`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import random
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import torch
import yaml

from agentenv.config import apply_overrides, validate_choices
from agentenv.core import qualified_env_id
from agentenv.errors import UserError
from agentenv.learn import distributed as D
from agentenv.learn.learner import LearnerConfig, episode_advantages, make_batch, sft_update, update
from agentenv.learn.plugin import StepContext, build_plugins, with_env_options
from agentenv.learn.sampler import AsyncRollouts, Sampler
from agentenv.rollout import collect, demonstrations, input_path

__all__ = ["TrainConfig", "RolloutConfig", "load_config", "train", "trained_policy", "held_out_seeds"]

HELD_OUT_SEED_BASE = 1_000_000_000  # evaluation seeds start here; training seeds are always below it


def held_out_seeds(n_tasks: int) -> list[int]:
    """The env seeds of the first `n_tasks` held-out (evaluation) tasks, in order; never trained on."""
    return [HELD_OUT_SEED_BASE + i for i in range(n_tasks)]


def train_task_seed(run_seed: int, step: int, tasks_per_step: int, index: int) -> int:
    """The env seed of training task `index` of `step`: in [0, HELD_OUT_SEED_BASE) for every run seed, so a
    held-out (evaluation) task is never trained on. (Unwrapped, run seed 10 reached the held-out range.)"""
    return (run_seed * 100_000_000 + step * tasks_per_step + index) % HELD_OUT_SEED_BASE


@dataclass
class RolloutConfig:
    """Where rollouts come from: the engine that samples them, and how fresh its weights are."""

    engine: Literal["hf", "vllm"] = "hf"  # hf (the learner's own model) | vllm (an engine, weights pushed each step)
    backend: Literal["local", "ray"] = "local"  # local: envs in this process | ray: envs in Ray actors (extra `ray`)
    workers: int = 2  # ray: env worker actors
    engines: int = 0  # ray: generation engine actors (`engine` in each, one per GPU on CUDA); 0: generate in this process
    envs_per_worker: int | None = None  # ray: at most workers × this many episodes live at once (None: all)
    address: str | None = None  # ray: the cluster to join ("auto", "ray://head:10001"); None: a local one
    stale_steps: int = 0  # the sampler's weights lag the learner's by exactly this many steps (0: always current)
    max_staleness: int = 0  # > 0: rollouts generated in a background thread, up to this many updates behind
    vllm: dict[str, Any] = field(default_factory=dict)  # extra `VLLMPolicy` keyword arguments (e.g. gpu_memory_utilization)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise UserError(f"rollout.workers must be >= 1, got {self.workers}")
        if self.engines < 0:
            raise UserError(f"rollout.engines must be >= 0, got {self.engines}")
        if self.engines and self.backend != "ray":
            raise UserError("rollout.engines (generation in Ray actors) needs --rollout.backend=ray")
        if self.stale_steps < 0 or self.max_staleness < 0:
            raise UserError("rollout.stale_steps and rollout.max_staleness must be >= 0")
        if self.stale_steps and self.max_staleness:
            raise UserError("rollout.stale_steps (a fixed lag) and rollout.max_staleness (asynchronous rollouts) exclude each other")


@dataclass
class TrainConfig:
    """A training run. Load from YAML with `load_config`; override with `--key=value` (`--learner.lr=1e-4`)."""

    env_id: str = "agentenv/ToolReasoning-v0"
    env_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"tools": ["calculator"], "kinds": ["counting"], "difficulty": 1, "max_turns": 3}
    )
    model: str = "tiny"  # "tiny" | "small" | "audio-tiny" | "audio-small" (random init from a config) | a local HF model directory
    freeze_audio_encoder: bool = False  # audio models: keep the audio encoder's weights fixed
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto | cpu | cuda
    seed: int = 0
    steps: int = 120  # GRPO steps (benchmarks/default_train.md)
    tasks_per_step: int = 8
    group_size: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 48
    max_seq_len: int = 1024
    sft_episodes: int = 1024
    sft_steps: int = 800  # long enough to learn copying numbers at every seed tried (benchmarks/default_train.md)
    sft_batch_size: int = 32
    # Options of the env's scripted demonstrator; none given: the ones its class gives for warm starts
    # (`WARM_START_OPTIONS`). ToolReasoning-v0's shows every counting question three times, once with each formula
    # (ScriptedPolicy(every_formula=True)): the warm start learns the call format and the copying, and its best
    # fit leaves the formula choice uniform, which is the decision RL makes. (The previous default, a wrong
    # formula chosen by a hash of the question for 2/3 of them, was learnt by heart and sampled deterministically
    # at some seeds: no GRPO signal. benchmarks/default_train.md.) `every_formula: false` for the plain agent.
    sft_teacher: dict[str, Any] = field(default_factory=dict)
    sft_lr: float = 3e-3
    eval_tasks: int = 200
    checkpoint_every: int = 5
    out_dir: str = "runs/default"
    # Under torchrun: ddp (every rank a whole copy; gradients all-reduced) | fsdp2 (parameters, gradients and
    # optimizer state sharded over the ranks with fully_shard, for models that do not fit one device)
    parallel: Literal["ddp", "fsdp2"] = "ddp"
    learner: LearnerConfig = field(default_factory=lambda: LearnerConfig(lr=3e-4, micro_batch_size=32))
    rollout: RolloutConfig = field(default_factory=RolloutConfig)


def load_config(path: str | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Defaults, then the YAML file, then `key=value` overrides (dotted keys reach nested configs)."""
    cfg = TrainConfig()
    if path:
        with open(path, encoding="utf-8") as fh:
            apply_overrides(cfg, yaml.safe_load(fh) or {})
    for item in overrides:
        key, sep, value = item.lstrip("-").partition("=")
        if not sep:
            raise UserError(f"expected --key=value, got {item!r}")
        apply_overrides(cfg, {key: value})
    validate_choices(cfg)
    # the env settings the plug-ins' methods need, so config.yaml and every env of the run show them
    cfg.env_kwargs = with_env_options(cfg.env_kwargs, build_plugins(cfg.learner))
    return cfg


# -- small utilities -------------------------------------------------------------------------------


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _rng_state(policy) -> dict[str, Any]:
    """Every RNG a run draws from, the sampling policy's own generator (torch or `random.Random`) included."""
    generator = getattr(policy, "generator", None)
    own = generator.get_state() if hasattr(generator, "get_state") else generator.getstate() if hasattr(generator, "getstate") else None
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(), "policy": own}


def _set_rng_state(state: dict[str, Any], policy) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("policy") is not None:
        generator = policy.generator
        generator.set_state(state["policy"]) if hasattr(generator, "set_state") else generator.setstate(state["policy"])


COMPLETE_MARKER = "COMPLETE"  # written (and synced) last: a checkpoint directory without it is partial


def save_checkpoint(out_dir: Path, step: int, model_state: dict[str, Any], optimizer_state: dict[str, Any], policy,
                    extra: dict[str, Any], rng_ranks: list[dict[str, Any]] | None = None) -> None:
    """Write `checkpoint.tmp/` (state, then the completion marker), then swap it in for `checkpoint/`.

    A crash at any point leaves a complete checkpoint in one of checkpoint/, checkpoint.tmp/ (between the
    two renames) or checkpoint.old/; `find_checkpoint` picks it."""
    final, tmp = out_dir / "checkpoint", out_dir / "checkpoint.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {"step": step, "model": model_state, "optimizer": optimizer_state, "rng": _rng_state(policy), "extra": extra}
    if rng_ranks is not None and len(rng_ranks) > 1:
        state["rng_ranks"] = rng_ranks
    torch.save(state, tmp / "state.pt")
    with open(tmp / "state.pt", "rb") as fh:
        os.fsync(fh.fileno())
    _atomic_write_text(tmp / COMPLETE_MARKER, f"{step}\n")
    old = out_dir / "checkpoint.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint directory after any crash of `save_checkpoint`, moved to
    `checkpoint/` if it was left as `checkpoint.tmp/` or `checkpoint.old/`; None if there is none."""
    final, tmp, old = out_dir / "checkpoint", out_dir / "checkpoint.tmp", out_dir / "checkpoint.old"
    for candidate in (final, tmp, old):  # newest first: tmp is complete only between the two renames
        if (candidate / COMPLETE_MARKER).exists() and (candidate / "state.pt").exists():
            if candidate != final:
                shutil.rmtree(final, ignore_errors=True)
                os.replace(candidate, final)
            return final
    return None


def _checkpoint(out_dir: Path, step: int, model, optimizer, engine: "Sampler", extra: dict[str, Any]) -> None:
    """Rank 0 writes the checkpoint, with every rank's RNG states (each samples with its own generators). Model and
    optimizer state are whole tensors in either parallel mode (FSDP2's shards are gathered to rank 0 first)."""
    rng_ranks = D.gather_objects(_rng_state(engine.policy))
    model_state, optimizer_state = D.whole(model.state_dict()), D.whole(optimizer.state_dict())
    if D.is_main():
        save_checkpoint(out_dir, step, model_state, optimizer_state, engine.policy,
                        {**extra, "sampler_history": engine.history}, rng_ranks=rng_ranks)


class MetricsLog:
    """`metrics.jsonl`, one record per step; on resume, records at or past the checkpoint step are dropped."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        rows = []
        if resume_step is not None and path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a line cut by a crash
                if row.get("step", -1) < resume_step:
                    rows.append(row)
        _atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
        self.rows = rows
        self._fh = open(path, "a", encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        self._fh.write(json.dumps(row) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.rows.append(row)

    def close(self) -> None:
        self._fh.close()


def _tensorboard(out_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional: metrics.jsonl always has everything
        return None
    return SummaryWriter(str(out_dir / "tb"))


def plot_curves(rows: list[dict[str, Any]], evals: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = [r["step"] for r in rows]
    left.plot(steps, [r["reward_mean"] for r in rows], label="reward (train rollouts)")
    left.plot(steps, [r["success_rate"] for r in rows], label="success (train rollouts)")
    left.set_xlabel("GRPO step")
    left.legend()
    left.grid(alpha=0.3)
    names = list(evals)
    right.bar(names, [evals[n] for n in names], color=["#999999", "#3366cc"][: len(names)])
    right.set_ylim(0, 1)
    right.set_title("held-out success")
    for i, n in enumerate(names):
        right.text(i, evals[n] + 0.02, f"{evals[n]:.3f}", ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the run ---------------------------------------------------------------------------------------


def _device(cfg: TrainConfig) -> str:
    return cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")


@contextmanager
def _whole_weights(model, policy) -> Iterator[None]:
    """The learner's whole weights for sampling or scoring with its own policy (FSDP2: gathered once, on entry;
    a no-op otherwise). The policy's prefix cache is dropped: it is keyed on parameter version counters, which
    FSDP's all-gather does not bump."""
    with D.gathered(model):
        if D.is_sharded(model):
            policy.clear_cache()
        yield


def _build(cfg: TrainConfig, rank: int = 0):
    """The learner's policy (its model is the one trained; its tokenizer renders every batch). Each data-parallel
    rank samples with its own seed (rank 0 with the run's)."""
    from agentenv.policies.audio_lm import AudioLMPolicy, is_audio_model
    from agentenv.policies.hf import HFPolicy
    from agentenv.policies.tiny import TINY_SIZES, tiny_model

    if is_audio_model(cfg.model):  # hears the waveforms: audio features beside the ids, through the same learner
        if cfg.rollout.engines:  # the Ray engine actors build text policies from the model spec
            raise UserError("rollout.engines (generation in Ray actors) does not build audio-language models yet: "
                            "leave it at 0 (rollout.engine=vllm runs one engine in this process)")
        if cfg.rollout.stale_steps or cfg.rollout.max_staleness:  # the Sampler's lagging copy is a text HFPolicy
            raise UserError("rollout.stale_steps / rollout.max_staleness sample with a separate HF copy of the model, which "
                            "is not built for audio-language models yet: leave both at 0")
        policy = AudioLMPolicy(cfg.model, device=_device(cfg), temperature=cfg.temperature, top_p=cfg.top_p,
                               max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 1_000_003 * rank, model_seed=cfg.seed,
                               freeze_audio_encoder=cfg.freeze_audio_encoder)
        return policy, policy.model
    model = tiny_model(cfg.model, seed=cfg.seed) if cfg.model in TINY_SIZES else cfg.model  # the run's seed sets the init too
    policy = HFPolicy(model, device=_device(cfg), temperature=cfg.temperature, top_p=cfg.top_p,
                      max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 1_000_003 * rank)
    return policy, policy.model


def trained_policy(cfg: TrainConfig, out_dir: str | Path):
    """(policy, model) of run `cfg` with the weights of its newest complete checkpoint in `out_dir` (for evaluating
    a finished run again)."""
    checkpoint = find_checkpoint(Path(out_dir))
    if checkpoint is None:
        raise UserError(f"no complete checkpoint in {out_dir}")
    policy, model = _build(cfg)
    model.load_state_dict(torch.load(checkpoint / "state.pt", weights_only=False)["model"])
    return policy, model


def _input_path(cfg: TrainConfig, policy) -> str | None:
    """How the env's non-text observations reach the policy ("audio input", "tools only: …"; None for text envs);
    a `UserError` before anything runs when they cannot (an audio-only task for a text policy)."""
    import gymnasium as gym

    env = gym.make(qualified_env_id(cfg.env_id), **cfg.env_kwargs)
    try:
        return input_path(env, policy)
    finally:
        env.close()


def evaluate(cfg: TrainConfig, policy, n_tasks: int) -> list[float]:
    """Success (0/1) on each of `n_tasks` held-out seeds (never used for training), in seed order, sampling as in
    training; data-parallel ranks each run every world-th task and every rank gets them all. Paired comparisons
    of two runs (benchmarks/ablation.py) match tasks by position."""
    rank, world = D.rank_and_world()
    seeds = held_out_seeds(n_tasks)[rank::world]
    episodes = collect(cfg.env_id, policy, seeds, group_size=1, env_kwargs=cfg.env_kwargs, max_seq_len=cfg.max_seq_len)
    mine = {e.seed: float(e.reward_components.get("success", 0.0)) for e in episodes}
    every = {seed: value for part in D.gather_objects(mine) for seed, value in part.items()}
    return [every[seed] for seed in held_out_seeds(n_tasks)]


def _mean(values: Sequence[float]) -> float:
    """The mean over every data-parallel rank's values."""
    if D.rank_and_world()[1] == 1:
        return float(np.mean(values))
    return D.global_sum(sum(values)) / max(D.global_sum(len(values)), 1.0)


def _check_room(episodes: Sequence[Any], cfg: TrainConfig) -> None:
    """A clear error, not a crash in the batch, when max_seq_len leaves no room for any episode's first turn."""
    if episodes and not any(e.samples for e in episodes):
        raise UserError(f"max_seq_len={cfg.max_seq_len} leaves no room to generate: every episode's first prompt is at "
                        "least that long; raise --max_seq_len")


def warm_start(cfg: TrainConfig, policy, model, log, plugins: Sequence[Any] = ()) -> None:
    """Supervised steps on scripted demonstrations (tokenized once; env tokens masked out); `plugins` may add
    their own supervised terms (`Plugin.sft_loss`)."""
    from agentenv.registration import scripted_policy

    env_id = qualified_env_id(cfg.env_id)
    try:
        teacher = scripted_policy(env_id, warm_start=True, **cfg.sft_teacher)  # the env's own scripted agent
    except ValueError:
        teacher = None
    except TypeError as err:
        raise UserError(f"sft_teacher {cfg.sft_teacher} does not fit the scripted agent of {env_id}: {err}") from None
    # recorded by the policy's own chat: an audio policy's demonstrations keep the audio beside the ids. A teacher
    # with variants (ScriptedPolicy(every_formula=True)) records each task once per variant, sft_episodes in all.
    teachers = teacher.variants() if hasattr(teacher, "variants") else [teacher]
    tasks = max(cfg.sft_episodes // len(teachers), 1)
    demos = [episode for variant in teachers  # cut at the run's max_seq_len, like its rollouts
             for episode in demonstrations(cfg.env_id, tasks, policy.chat, env_kwargs=cfg.env_kwargs,
                                           seed=cfg.seed + 7_000_000, policy=variant, max_seq_len=cfg.max_seq_len)]
    _check_room(demos, cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.sft_lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    zeros = torch.zeros(len(demos))
    for step in range(cfg.sft_steps):
        pick = torch.randperm(len(demos), generator=gen)[: cfg.sft_batch_size].tolist()
        batch = make_batch([demos[i] for i in pick], zeros[: len(pick)], policy.chat.pad_id)
        loss = sft_update(model, optimizer, batch, cfg.learner, plugins=plugins)
        if step % 10 == 0 or step == cfg.sft_steps - 1:
            log(f"sft step {step + 1}/{cfg.sft_steps} loss {loss:.3f}")


def train(cfg: TrainConfig, resume: bool = False, log=print) -> dict[str, Any]:
    """Run (or resume) a training run; returns the summary also written to `eval.json`.

    Under `torchrun` (WORLD_SIZE > 1) every rank runs this: each collects its share of the step's tasks
    (whole GRPO groups), the update sums gradients over ranks (`distributed.py`), and only rank 0 logs and
    writes files."""
    rank, world = D.init_from_env(_device(cfg))
    main = rank == 0
    if not main:
        log = lambda message: None  # noqa: E731 - one voice
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    started = time.perf_counter()
    policy, model = _build(cfg, rank)
    path = _input_path(cfg, policy)
    if path is not None:
        log(f"{qualified_env_id(cfg.env_id)} reaches the policy by: {path}")
    policy_keys = set(model.state_dict())  # what a rollout engine needs (not a plug-in's extra head)
    plugins = build_plugins(cfg.learner)
    # the env settings the plug-ins' methods need (a clash with the run's own is an error), for every env this
    # run makes: demonstrations, training rollouts and held-out evaluation alike
    cfg = dataclasses.replace(cfg, env_kwargs=with_env_options(cfg.env_kwargs, plugins))
    for plugin in plugins:  # before the optimizer: a plug-in may add trained parameters (a head)
        plugin.setup(model, policy.tokenizer, group_size=cfg.group_size, seed=cfg.seed)
    engine = Sampler(cfg, policy, model, policy_keys)
    start_step, extra, state = 0, {}, None
    found = find_checkpoint(out_dir) if resume and main else None  # rank 0 repairs a crashed swap, then all read
    found = D.gather_objects(found)[0]
    if resume and found is None:
        raise UserError(f"nothing to resume in {out_dir}: no complete checkpoint/ (nor .tmp/ or .old/); run without --resume to start")
    # The model's weights are settled (loaded, or warm-started on rank 0 and broadcast) while it is whole on every
    # rank; then it may be sharded, and the optimizer is built over the parameters it will update.
    if found is not None:
        state = torch.load(found / "state.pt", weights_only=False)
        model.load_state_dict(state["model"])
        start_step, extra = state["step"], state["extra"]
    else:
        if main:
            _atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
            if cfg.sft_steps > 0:
                warm_start(cfg, policy, model, log, plugins)
        D.broadcast_model(model)  # every rank starts RL from rank 0's warm start
    ref_model = None  # the reference policy: frozen for a KL term, or kept for a plug-in; saved in checkpoints
    if cfg.learner.kl_coef > 0 or any(plugin.needs_ref_model for plugin in plugins):
        ref_model = copy.deepcopy(model).requires_grad_(False)
        if "ref_model" in extra:
            ref_model.load_state_dict(extra["ref_model"])
        extra["ref_model"] = ref_model.state_dict()
        if cfg.parallel == "fsdp2":  # a copy on rank 0, the one that writes it: references would keep every rank's whole tensors alive
            extra["ref_model"] = {key: value.cpu() for key, value in extra["ref_model"].items()} if main else {}
    if cfg.parallel == "fsdp2":
        D.shard(model)
        if ref_model is not None:
            D.shard(ref_model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learner.lr, weight_decay=cfg.learner.weight_decay)
    if state is not None:
        D.load_optimizer_state_dict(optimizer, state["optimizer"])
        for group in optimizer.param_groups:  # the run's config sets them (no schedule changes them), not the checkpoint
            group["lr"], group["weight_decay"] = cfg.learner.lr, cfg.learner.weight_decay
        _set_rng_state(state.get("rng_ranks", [state["rng"]] * world)[rank], engine.policy)
        engine.resume(extra.pop("sampler_history", []), model)
        del state
        log(f"resumed from step {start_step}")
    else:
        engine.sync(model)
        with _whole_weights(model, policy):
            extra["held_out_before"] = evaluate(cfg, engine.policy, cfg.eval_tasks) if cfg.eval_tasks else None
            extra["success_before"] = float(np.mean(extra["held_out_before"])) if cfg.eval_tasks else None
        extra["seconds_before"] = time.perf_counter() - started
        log(f"held-out success after warm start: {extra['success_before']}")
        _checkpoint(out_dir, 0, model, optimizer, engine, extra)
    for plugin in plugins:
        plugin.load_state_dict(extra.get("plugins", {}).get(plugin.name, {}))
    metrics = MetricsLog(out_dir / "metrics.jsonl", resume_step=start_step) if main else None
    board = _tensorboard(out_dir) if main else None
    sampler = torch.Generator().manual_seed(cfg.seed)

    envs = None  # the Ray backend's env actors, kept for the whole run
    if cfg.rollout.backend == "ray":
        from agentenv.distributed import RayRollout

        envs = RayRollout(cfg.env_id, env_kwargs=cfg.env_kwargs, workers=cfg.rollout.workers,
                          envs_per_worker=cfg.rollout.envs_per_worker, address=cfg.rollout.address)

    def collect_step(step: int) -> list:
        seeds = [train_task_seed(cfg.seed, step, cfg.tasks_per_step, i) for i in range(cfg.tasks_per_step)][rank::world]
        if envs is not None:
            return envs.collect(engine.policy, seeds, group_size=cfg.group_size, max_seq_len=cfg.max_seq_len)
        return collect(cfg.env_id, engine.policy, seeds, group_size=cfg.group_size, env_kwargs=cfg.env_kwargs,
                       max_seq_len=cfg.max_seq_len)

    pipeline = None
    if cfg.rollout.max_staleness > 0:  # the next steps' rollouts are generated while this one updates
        pipeline = AsyncRollouts(engine, collect_step, start_step, cfg.steps, cfg.rollout.max_staleness)
        pipeline.publish(start_step, model)
    try:
        for step in range(start_step, cfg.steps):
            t0 = time.perf_counter()
            sampler.manual_seed(cfg.seed * 1_000_003 + step)  # mini-batch order depends only on (seed, step)
            with _whole_weights(model, policy):  # rollouts and plug-ins sample (and score) with the learner's policy
                episodes, lag = pipeline.next(step) if pipeline is not None else (collect_step(step), None)
                _check_room(episodes, cfg)
                t1 = time.perf_counter()
                # plug-ins that sample use the learner's own policy: the engine may be busy or stale
                ctx = StepContext(cfg.learner, step, model=model, policy=policy, ref_model=ref_model, generator=sampler)
                adv = episode_advantages(episodes, cfg.learner, plugins=plugins, ctx=ctx)
                batch = make_batch(episodes, adv, policy.chat.pad_id, plugins=plugins, ctx=ctx)
            stats = update(model, optimizer, batch, cfg.learner, plugins=plugins, ref_model=ref_model, generator=sampler,
                           step=step, ctx=ctx)
            if pipeline is not None:
                pipeline.publish(step + 1, model)
            else:
                engine.sync(model)
            t2 = time.perf_counter()
            tokens = int(D.global_sum(batch.attention_mask.sum()))
            row = {
                "step": step,
                "reward_mean": _mean([e.reward for e in episodes]),
                "success_rate": _mean([e.reward_components.get("success", 0.0) for e in episodes]),
                "turns_mean": _mean([len(e.turns) for e in episodes]),
                "truncated_rate": _mean([float(e.truncated) for e in episodes]),  # turn limit or max_seq_len reached
                "generated_tokens": int(D.global_sum(batch.loss_mask.sum())),
                "tokens": tokens,
                "rollout_s": t1 - t0,
                "update_s": t2 - t1,
                "throughput_tok_s": tokens / (t2 - t0),
                **stats,
            }
            if lag is not None:
                row["weights_lag"] = lag  # updates between the sampler's weights and the learner's
            if main:
                metrics.write(row)
            if board is not None:
                for key, value in row.items():
                    board.add_scalar(key, value, step)
            log(f"step {step + 1}/{cfg.steps} reward {row['reward_mean']:.3f} success {row['success_rate']:.3f} "
                f"truncated {row['truncated_rate']:.2f} loss {row['loss']:+.4f} ({t2 - t0:.1f} s)")
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
                extra["plugins"] = {plugin.name: plugin.state_dict() for plugin in plugins}  # their state as of this step
                _checkpoint(out_dir, step + 1, model, optimizer, engine, extra)
    finally:
        if pipeline is not None:
            pipeline.close()
        if envs is not None:
            envs.close()
        if metrics is not None:
            metrics.close()
        if board is not None:
            board.close()
    try:
        if engine.separate:  # evaluate the learner's final weights, not a lagging copy
            engine.push(engine.snapshot(model))
        with _whole_weights(model, policy):
            held_out_after = evaluate(cfg, engine.policy, cfg.eval_tasks) if cfg.eval_tasks else None
        success_after = float(np.mean(held_out_after)) if held_out_after else None
        summary = {"input_path": path, "success_before": extra.get("success_before"), "success_after": success_after,
                   "steps": cfg.steps, "eval_tasks": cfg.eval_tasks, "wall_s_this_process": time.perf_counter() - started,
                   "held_out_before": extra.get("held_out_before"), "held_out_after": held_out_after}
    finally:
        engine.close()
    if summary["success_before"] is not None and summary["success_after"] is not None:
        summary["gain"] = summary["success_after"] - summary["success_before"]
        if main:
            plot_curves(metrics.rows, {"warm start": summary["success_before"], "after GRPO": summary["success_after"]},
                        out_dir / "reward_curve.png")
    if main:
        _atomic_write_text(out_dir / "eval.json", json.dumps(summary, indent=1))
    log(json.dumps({key: value for key, value in summary.items() if not key.startswith("held_out_")}))
    return summary
