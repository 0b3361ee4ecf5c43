"""Peer side of benchmarks/bench_env.py: time `gem-llm` and `skyrl-gym` on the same math task.

Run it with the PEER venv's interpreter (see benchmarks/setup_peers.sh), never the project's:

    .venv-peers/bin/python benchmarks/peers_env.py [--quick]

It prints one JSON line per measurement:

    {"peer": "gem-llm", "version": "0.1.0", "what": "step_no_tool" | "python_call",
     "median_us": float | null, "n": int, "primary": bool, "env": "...", "action": "...", "note": "..."}

`primary: true` marks the one line per (peer, what) that is the like-for-like comparison: the peer's own
tool-using math env, built the way the peer's own recipes build it, stepped with

* `step_no_tool`: the plain, non-final text NO_TOOL_ACTION below (no tool call, no answer marker);
* `python_call`:  an action holding one `print(1+1)` python call in the peer's own tool syntax.

Lines with `primary: false` are extra context (another env of the same peer, another grading mode).
Only `env.step(action)` is inside the timed region; building / resetting envs is not. Each (peer, what)
gets a warm-up, then up to N timed steps or a per-measurement time cap, whichever comes first, so the
whole script stays well under 60 s on a 2-core machine.

Both peers run the python tool as `subprocess.run(["python", "-c", code])`, i.e. they resolve `python`
through PATH. We put this interpreter's bin directory first on PATH, exactly what activating the venv
does, so the child is the peer venv's CPython rather than whatever `python` shim the shell has (a pyenv
shim is a bash script and would add tens of ms that are not the peer's fault).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from importlib.metadata import version
from typing import Any, Callable

# --- environment the peers' subprocesses see ------------------------------------------------------------
def _prepare_process() -> str:
    """Run only as a script: bench_env.py imports this module for the task constants alone."""
    bin_dir = os.path.dirname(os.path.abspath(sys.executable))
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    # gem's sandbox does tempfile.mkdtemp(dir=".") per python call: keep that out of the caller's cwd.
    workdir = tempfile.mkdtemp(prefix="agentenv-peers-bench-")
    os.chdir(workdir)
    warnings.filterwarnings("ignore")
    return workdir

# --- the task (same word problem for every peer) --------------------------------------------------------
QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)
ANSWER = "72"
NO_TOOL_ACTION = "Let me think step by step. In May she sold 48 / 2 = 24 clips, so I still need to add April and May."
CODE = "print(1+1)"

N_FAST = 2000  # target repetitions for in-process steps
N_TOOL = 200  # target repetitions for steps that spawn a python process
WARMUP_FAST = 50
WARMUP_TOOL = 5
CAP_S = 6.0  # per-measurement wall-clock cap for the timed loop


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except Exception:
        return None


def emit(peer: str, what: str, samples_ns: list[int] | None, *, primary: bool, env: str, action: str,
         note: str, reason: str | None = None) -> None:
    rec: dict[str, Any] = {
        "peer": peer,
        "version": _version(peer),
        "what": what,
        "median_us": round(statistics.median(samples_ns) / 1000.0, 2) if samples_ns else None,
        "n": len(samples_ns or []),
        "primary": primary,
        "env": env,
        "action": action,
        "note": note if reason is None else f"{note} | NOT MEASURED: {reason}",
    }
    if samples_ns:
        s = sorted(samples_ns)
        rec["p10_us"] = round(s[len(s) // 10] / 1000.0, 2)
        rec["p90_us"] = round(s[(len(s) * 9) // 10] / 1000.0, 2)
    print(json.dumps(rec), flush=True)


def timed_steps(make_env: Callable[[], Any], step: Callable[[Any], Any], check: Callable[[Any], None],
                needs_reset: Callable[[Any, Any], bool], n: int, warmup: int, cap_s: float) -> list[int]:
    """Time `step(env)` n times (after `warmup` untimed ones); rebuild the env when `needs_reset` says so."""
    env = make_env()
    samples: list[int] = []
    deadline = None
    i = 0
    while len(samples) < n:
        t0 = time.perf_counter_ns()
        out = step(env)
        t1 = time.perf_counter_ns()
        if i == 0:
            check(out)  # once: make sure the step did what we claim it did
        if i >= warmup:
            samples.append(t1 - t0)
            if deadline is None:
                deadline = time.perf_counter() + cap_s
            elif time.perf_counter() > deadline:
                break
        i += 1
        if needs_reset(env, out):
            _close(env)
            env = make_env()
    _close(env)
    return samples


def _close(env: Any) -> None:
    try:
        env.close()
    except Exception:
        pass


# ======================================================================================================
# gem-llm
# ======================================================================================================

def bench_gem(n_fast: int, n_tool: int, cap_s: float) -> None:
    peer = "gem-llm"
    try:
        from datasets import Dataset
        from gem.envs.math_env import MathEnv
        from gem.wrappers.wrapper_factory import WRAPPER_FACTORY
    except Exception as e:  # pragma: no cover - depends on the peer venv
        for what in ("step_no_tool", "python_call"):
            emit(peer, what, None, primary=True, env="?", action="?", note="", reason=f"import failed: {e!r}")
        return

    dataset = Dataset.from_list([{"problem": QUESTION, "answer": ANSWER}])
    env_desc = ('WRAPPER_FACTORY["python_tool"](MathEnv(dataset=Dataset.from_list([...]), question_key="problem", '
                'answer_key="answer"))  == ToolEnvWrapper(MathEnv, tools=[PythonCodeTool(timeout=5)], '
                'tool_reward=0.05, tool_success_reward=0.25, max_tool_uses=5)')

    pools: list[Any] = []

    def make(use_mp: bool = True):
        def _make():
            base = MathEnv(dataset=dataset, question_key="problem", answer_key="answer", use_mp=use_mp)
            if use_mp:
                pools.append(base.mp_pool)
            env = WRAPPER_FACTORY["python_tool"](base)
            env.reset()
            return env
        return _make

    # MathEnv builds a multiprocessing.Pool(1) per instance (use_mp=True default): reuse one env and
    # reset it instead of rebuilding, as a trainer would.
    def reset_inplace(env, out):
        obs, reward, terminated, truncated, info = out
        if terminated or truncated or env.tool_use_counter >= env.max_tool_uses:
            env.reset()
        return False

    def check_terminal(out):
        obs, reward, terminated, truncated, info = out
        assert terminated and not info.get("tool_type"), out

    # (a) step with no tool call. gem's MathEnv is single-turn: any action that is not a tool call goes to
    # MathEnv.step, which grades it and ends the episode. There is no non-terminal, no-tool step in gem.
    s = timed_steps(make(True), lambda e: e.step(NO_TOOL_ACTION), check_terminal, reset_inplace,
                    n_fast, WARMUP_FAST, cap_s)
    emit(peer, "step_no_tool", s, primary=True, env=env_desc, action=NO_TOOL_ACTION,
         note="gem has no non-terminal no-tool step: a non-tool action falls through ToolEnvWrapper to "
              "MathEnv.step, which grades it (boxed_reward_fn via math_verify) in its multiprocessing.Pool(1) "
              "(use_mp=True, the default) and ends the episode (reset untimed). This action has no \\boxed{}, so "
              "grading is the cheap 'cannot parse' path; the cost is mostly the pool round-trip.")

    s = timed_steps(make(True), lambda e: e.step(NO_TOOL_ACTION + " \\boxed{71}"), check_terminal,
                    reset_inplace, n_fast // 4, WARMUP_FAST, cap_s / 2)
    emit(peer, "step_no_tool", s, primary=False, env=env_desc, action=NO_TOOL_ACTION + " \\boxed{71}",
         note="variant: a WRONG final answer, so the grader does full math_verify/sympy comparison; terminal.")

    s = timed_steps(make(False), lambda e: e.step(NO_TOOL_ACTION), check_terminal, reset_inplace,
                    n_fast, WARMUP_FAST, cap_s / 2)
    emit(peer, "step_no_tool", s, primary=False, env=env_desc.replace('answer_key="answer")', 'answer_key="answer", use_mp=False)'),
         action=NO_TOOL_ACTION,
         note="variant: MathEnv(use_mp=False) grades in-process under signal.alarm instead of the pool.")

    # (b) one python tool call.
    tool_action = f"I'll compute it.\n<python>\n{CODE}\n</python>"

    def check_tool(out):
        obs, reward, terminated, truncated, info = out
        assert not terminated and info.get("tool_type") == "python_code", out
        assert obs.startswith("Code execution result: 2"), repr(obs)

    s = timed_steps(make(True), lambda e: e.step(tool_action), check_tool, reset_inplace,
                    n_tool, WARMUP_TOOL, cap_s)
    emit(peer, "python_call", s, primary=True, env=env_desc, action=tool_action,
         note="ToolEnvWrapper.step -> PythonCodeTool.execute_action (regex <python>..</python>) -> "
              "gem.utils.sandbox.run_python(code, sandbox_type='none'): substring blacklist check, then "
              "tempfile.mkdtemp(dir='.') + subprocess.run(['python','-c',code], cwd=tmp, env=minimal, "
              "timeout=5) + shutil.rmtree: one fresh CPython process per call, no isolation "
              "('bwrap' is opt-in). Non-terminal; env reset (untimed) every max_tool_uses=5 calls.")

    for p in pools:
        try:
            p.terminate()
        except Exception:
            pass


# ======================================================================================================
# skyrl-gym
# ======================================================================================================

def bench_skyrl(n_fast: int, n_tool: int, cap_s: float) -> None:
    peer = "skyrl-gym"
    try:
        import logging

        import skyrl_gym
        from skyrl_gym.envs.rlm.env import BaseRLMEnv

        # SearchCodeEnv.__init__ builds a SearchToolGroup that logs one INFO line per env (untimed noise)
        logging.getLogger("skyrl_gym.tools.search").setLevel(logging.WARNING)
    except Exception as e:  # pragma: no cover
        for what in ("step_no_tool", "python_call"):
            emit(peer, what, None, primary=True, env="?", action="?", note="", reason=f"import failed: {e!r}")
        return

    prompt = [{"role": "user", "content": QUESTION}]
    extras = {"reward_spec": {"method": "rule", "ground_truth": ANSWER}, "extra_info": {}}

    def make(env_id: str, extra: dict | None = None):
        def _make():
            env = skyrl_gym.make(env_id, env_config=None, extras={**extras, **(extra or {})})
            env.init([dict(m) for m in prompt])
            return env
        return _make

    def before_terminal(env, out):
        # rebuild (untimed) when the episode ended or the NEXT step would hit max_turns, so that every timed
        # step is a non-terminal one
        return out["done"] or env.turns + 1 >= env.max_turns

    env_desc = ('skyrl_gym.make("searchcode", env_config=None, extras={"reward_spec": {"method": "rule", '
                '"ground_truth": "72"}, "extra_info": {}}) -> SearchCodeEnv (tools: SearchToolGroup, '
                'PythonCodeExecutorToolGroup; max_turns=2); env.init([{"role": "user", "content": question}])')

    # (a) no tool: SearchCodeEnv, plain text -> not done (no <solution>, turns < max_turns), _parse_action
    # raises ValueError("No <tool>...</tool> block ...") which step() turns into the observation.
    def check_no_tool(out):
        assert not out["done"] and out["observations"] and "No <tool>" in out["observations"][0]["content"], out

    s = timed_steps(make("searchcode"), lambda e: e.step(NO_TOOL_ACTION), check_no_tool, before_terminal,
                    n_fast, WARMUP_FAST, cap_s)
    emit(peer, "step_no_tool", s, primary=True, env=env_desc, action=NO_TOOL_ACTION,
         note="non-terminal: SearchCodeEnv.step appends to chat_history, _is_done() False, reward 0, "
              "_parse_action raises 'No <tool>...</tool> block found' and the error text is the observation. "
              "Default max_turns=2 leaves one non-terminal step per episode, so the env is rebuilt (untimed) "
              "after each timed step.")

    def check_mt(out):
        assert not out["done"] and out["observations"], out

    s = timed_steps(make("gsm8k_multi_turn"), lambda e: e.step(NO_TOOL_ACTION), check_mt, before_terminal,
                    n_fast, WARMUP_FAST, cap_s / 2)
    emit(peer, "step_no_tool", s, primary=False,
         env='skyrl_gym.make("gsm8k_multi_turn", env_config=None, extras=...) -> GSM8kMultiTurnEnv (max_turns=5, no tools)',
         action=NO_TOOL_ACTION,
         note="variant: skyrl's multi-turn math env without tools: regex '#### N' grading (no match -> 0), "
              "non-terminal, returns a fixed 'please answer' user message.")

    # (b) python tool call through SearchCodeEnv -> PythonCodeExecutorToolGroup.python
    tool_action = f"I'll compute it.\n<tool><python>{CODE}</python></tool>"

    def check_tool(out):
        assert not out["done"] and out["metadata"].get("tool_name") == "python", out
        assert out["observations"][0]["content"] == "2", out

    s = timed_steps(make("searchcode"), lambda e: e.step(tool_action), check_tool, before_terminal,
                    n_tool, WARMUP_TOOL, cap_s)
    emit(peer, "python_call", s, primary=True, env=env_desc, action=tool_action,
         note="SearchCodeEnv.step -> _parse_action (regex <tool><python>..</python></tool>) -> "
              "BaseTextEnv._execute_tool -> PythonCodeExecutorToolGroup.python(code): "
              "subprocess.run(['python','-c',code], timeout=10, text=True): one fresh CPython process per call, "
              "inherits the parent's env and cwd, no sandbox. Non-terminal; env rebuilt (untimed) per episode.")

    # variant: skyrl's RLM env runs model code IN-PROCESS (exec in a PersistentREPL under SIGALRM).
    rlm_action = f"I'll compute it.\n```repl\n{CODE}\n```"

    def make_rlm():
        env = BaseRLMEnv(env_config=None, extras={**extras})
        chat, _ = env.init([dict(m) for m in prompt])
        env._bench_chat = chat
        return env

    def rlm_step(env):
        return env.step(rlm_action)

    def rlm_after(env, out):
        # emulate the generator: it appends the assistant turn and the observations to chat_history
        env._bench_chat.extend(out["observations"])
        return before_terminal(env, out)

    def check_rlm(out):
        assert not out["done"] and "REPL output:\n\n2" in out["observations"][0]["content"], out

    def rlm_timed():
        env = make_rlm()
        samples: list[int] = []
        i = 0
        deadline = None
        while len(samples) < n_fast // 2:
            t0 = time.perf_counter_ns()
            out = rlm_step(env)
            t1 = time.perf_counter_ns()
            if i == 0:
                check_rlm(out)
            if i >= WARMUP_FAST:
                samples.append(t1 - t0)
                if deadline is None:
                    deadline = time.perf_counter() + cap_s / 2
                elif time.perf_counter() > deadline:
                    break
            i += 1
            if rlm_after(env, out):
                env.repl.cleanup()
                env = make_rlm()
        env.repl.cleanup()
        return samples

    try:
        s = rlm_timed()
        emit(peer, "python_call", s, primary=False,
             env='BaseRLMEnv(env_config=None, extras=...) from skyrl_gym.envs.rlm.env (not in the registry; '
                 'max_turns=10, no lm_callback)',
             action=rlm_action,
             note="variant: RLM env, PersistentREPL.execute = exec() in THIS process with restricted builtins, "
                  "redirect_stdout and a SIGALRM timeout. No process isolation. A different task shape "
                  "(context REPL), shown only as the in-process lower bound of skyrl's code execution.")
    except Exception as e:
        emit(peer, "python_call", None, primary=False, env="BaseRLMEnv", action=rlm_action, note="variant",
             reason=repr(e))


def main() -> None:
    workdir = _prepare_process()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny N, for smoke tests")
    ap.add_argument("--peer", choices=["gem-llm", "skyrl-gym"], action="append",
                    help="only this peer (repeatable); default both")
    args = ap.parse_args()
    n_fast, n_tool, cap = (60, 8, 1.0) if args.quick else (N_FAST, N_TOOL, CAP_S)
    peers = args.peer or ["gem-llm", "skyrl-gym"]
    try:
        if "gem-llm" in peers:
            bench_gem(n_fast, n_tool, cap)
        if "skyrl-gym" in peers:
            bench_skyrl(n_fast, n_tool, cap)
    finally:
        os.chdir(tempfile.gettempdir())
        try:
            os.rmdir(workdir)
        except OSError:
            pass


if __name__ == "__main__":
    main()
