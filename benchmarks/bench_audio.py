"""AudioReasoning-v0 figures: task generation rates (tones and speech), tool latency, reference-agent accuracy.

- generation: `env.reset()` episodes/s per tone kind and mixed, at difficulty 1 and 3 (one process);
- speech: episodes/s of the espeak-ng kinds (synthesis cache cleared first) and seconds of audio per second;
- tools: median ms per call of each audio tool on a level-2 clip;
- agents: the scripted tool-using agent's accuracy per tone kind, level and answer format; the chance agent's
  accuracy on the binary (nli) tasks; the scripted agent beyond level 3 (an SNR sweep down to 1 dB).

    python benchmarks/bench_audio.py [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import gymnasium as gym
import numpy as np

import agentenv  # noqa: F401 - registers the envs
from agentenv.envs.audio import speech
from agentenv.envs.audio.scripted import ChanceAgent, ScriptedAudioAgent
from agentenv.envs.audio.tasks import SPEECH_KINDS, TONE_KINDS, Difficulty
from agentenv.runner import run_episodes

ENV_ID = "agentenv/AudioReasoning-v0"
# beyond level 3: where the energy-envelope onset detector (and so the tool agent) breaks down
STRESS_SNR_DB = (3.0, 2.0, 1.0)


def stress(snr_db: float) -> Difficulty:
    return Difficulty(snr_db=snr_db, max_tones=12, min_gap_s=0.04, distractors=3, min_semitones=1.0, min_duration_ratio=1.15)


def reset_rate(kinds, difficulty, n: int) -> tuple[float, float]:
    """(episodes/s, seconds of audio per second of wall time) over `n` resets."""
    env = gym.make(ENV_ID, kinds=kinds, difficulty=difficulty)
    env.reset(seed=0)
    audio_s = 0.0
    start = time.perf_counter()
    for seed in range(1, n + 1):
        obs, _ = env.reset(seed=seed)
        audio_s += obs[1]["audio"]["array"].size / 16_000
    elapsed = time.perf_counter() - start
    return n / elapsed, audio_s / elapsed


def tool_latency(n: int) -> dict[str, float]:
    env = gym.make(ENV_ID, kinds=["count"], difficulty=2)
    env.reset(seed=0)
    tools = env.unwrapped.toolbox.tools
    out = {}
    for name, args in [("count_onsets", {}), ("spectrum", {"start": 0.2, "end": 0.4}), ("pitch_track", {}), ("loudness", {})]:
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            result = tools[name].invoke(args)
            samples.append(time.perf_counter() - t0)
            assert result.ok, result
        out[name] = 1000 * statistics.median(samples)
    out["clip_s"] = env.unwrapped.task.duration
    return out


def accuracy(policy, n: int, seed: int = 10_000, **env_kwargs) -> float:
    logs = list(run_episodes(ENV_ID, policy, n, seed=seed, batch_size=32, env_kwargs=env_kwargs))
    return float(np.mean([log.success for log in logs]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer episodes (a smoke run)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    n_gen, n_speech, n_agent = (200, 10, 20) if args.quick else (1000, 40, 100)
    results: dict = {"generation": {}, "speech": {}, "tools_ms": {}, "scripted": {}, "chance": {}}

    print("Tone task generation (env.reset, episodes/s)")
    for level in (1, 3):
        for kind in TONE_KINDS + ("all tones",):
            kinds = TONE_KINDS if kind == "all tones" else [kind]
            rate, realtime = reset_rate(kinds, level, n_gen if kind == "all tones" else n_gen // 3)
            results["generation"][f"{kind} L{level}"] = {"episodes_per_s": rate, "audio_s_per_s": realtime}
            print(f"  {kind:<12} level {level}: {rate:8.0f} episodes/s  ({realtime:6.0f} s of audio/s)")

    if speech.speech_available():
        print("Speech tasks (espeak-ng, synthesis cache cleared)")
        for kind in SPEECH_KINDS:
            speech._synthesize.cache_clear()
            rate, realtime = reset_rate([kind], 2, n_speech)
            results["speech"][kind] = {"episodes_per_s": rate, "audio_s_per_s": realtime}
            print(f"  {kind:<12}: {rate:8.1f} episodes/s  ({realtime:6.1f} s of audio/s)")
    else:
        print(f"Speech tasks: skipped ({speech.INSTALL_HINT})")

    latency = tool_latency(20 if args.quick else 100)
    results["tools_ms"] = latency
    print(f"Tool latency (median ms per call, {latency['clip_s']:.2f} s clip): "
          + ", ".join(f"{k} {v:.2f}" for k, v in latency.items() if k != "clip_s"))

    print(f"Scripted tool agent accuracy ({n_agent} episodes per cell)")
    for answer_format in ("nli", "open"):
        for level in (1, 2, 3):
            row = {kind: accuracy(ScriptedAudioAgent(), n_agent, kinds=[kind], difficulty=level, answer_format=answer_format)
                   for kind in TONE_KINDS}
            results["scripted"][f"{answer_format} L{level}"] = row
            print(f"  {answer_format:<4} level {level}: " + "  ".join(f"{k} {v:.2f}" for k, v in row.items())
                  + f"  | mean {np.mean(list(row.values())):.3f}")
    for snr_db in STRESS_SNR_DB:
        row = {kind: accuracy(ScriptedAudioAgent(), n_agent, kinds=[kind], difficulty=stress(snr_db), answer_format="open")
               for kind in TONE_KINDS}
        results["scripted"][f"open stress {snr_db:g} dB"] = row
        print(f"  open stress {snr_db:g} dB SNR, 40 ms gaps, 1 semitone: " + "  ".join(f"{k} {v:.2f}" for k, v in row.items())
              + f"  | mean {np.mean(list(row.values())):.3f}")

    n_chance = 200 if args.quick else 2000
    results["chance"]["nli tones"] = accuracy(ChanceAgent(seed=0), n_chance, kinds=TONE_KINDS, difficulty=None)
    print(f"Chance agent on binary (nli) tone tasks, {n_chance} episodes: {results['chance']['nli tones']:.3f}")
    if speech.speech_available():
        results["chance"]["nli syllogism"] = accuracy(ChanceAgent(seed=1), n_speech * 5, kinds=["syllogism"])
        results["scripted"]["syllogism (guesses)"] = accuracy(ScriptedAudioAgent(), n_speech * 5, kinds=["syllogism"])
        print(f"Syllogisms ({n_speech * 5} episodes): chance agent {results['chance']['nli syllogism']:.3f}, "
              f"scripted agent (cannot transcribe, guesses) {results['scripted']['syllogism (guesses)']:.3f}")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
