"""Recommend-v0 figures: learned-scorer quality, baseline ranking by the hybrid reward, scoring throughput.

1. Learned scorers, trained from scratch (timed: the cost of a first use without a cache), on held-out synthetic data (users and requests from a seed never trained on):
   behaviour model click/order AUC (with the oracle AUC of the simulator's true probabilities on the
   same kind of rows, the ceiling), relevance model AUC/accuracy against the lexical-overlap AUC.
2. Random, popularity and constraint-aware baselines over N seeded episodes (the same seeds for all):
   mean hybrid reward ± standard error, mean of each component, and the paired margins with 95% CIs.
3. Scoring throughput in episodes/s, single process (the answers of step 2, parsed and scored): the
   rule-based dimensions alone (format, if, fc), each learned one, and the full hybrid.

    python benchmarks/bench_recommend.py [--episodes 200] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time

import gymnasium as gym
import numpy as np

import agentenv  # noqa: F401 - registers the envs
from agentenv.envs.recommend.answer import parse_recommendation
from agentenv.envs.recommend.baselines import BASELINES
from agentenv.envs.recommend.catalog import generate_catalog
from agentenv.envs.recommend.hybrid import HybridReward
from agentenv.envs.recommend.scorers import make_scorer
from agentenv.envs.recommend.train import (
    BehaviourConfig, DataConfig, RelevanceConfig, auc, default_datasets, evaluate_click_model, evaluate_relevance, train_click_model,
    train_relevance,
)
from agentenv.envs.recommend.users import click_probabilities, sample_user, simulate_impressions
from agentenv.runner import run_episodes
from agentenv.tools.parsing import parse_action


def learned_scorers() -> dict[str, dict[str, float]]:
    """Held-out quality of the default models, retrained here from scratch (what a first use costs)."""
    t0 = time.perf_counter()
    train, held_out = default_datasets()
    synth_s = time.perf_counter() - t0
    relevance = train_relevance(train.relevance, RelevanceConfig())
    relevance_s = time.perf_counter() - t0 - synth_s
    click = train_click_model(train, BehaviourConfig())
    click_s = time.perf_counter() - t0 - synth_s - relevance_s
    data = DataConfig()
    catalog = generate_catalog(data.catalog_items, data.catalog_seed)
    rng = np.random.default_rng(data.eval_seed + 100)
    truth, labels = [], []
    for u in range(data.n_users // 3):
        user = sample_user(rng, catalog, f"oracle-{u}")
        shown = simulate_impressions(user, catalog, rng, 40)
        truth += list(click_probabilities(user, catalog, [row for row, _ in shown]))
        labels += [action != "ignore" for _, action in shown]
    return {"behaviour": {**evaluate_click_model(click, held_out), "oracle_click_auc": auc(truth, labels)},
            "relevance": evaluate_relevance(relevance, held_out.relevance),
            "first_use_s": {"synthesize": synth_s, "train_relevance": relevance_s, "train_behaviour": click_s}}


def baselines(episodes: int) -> tuple[dict[str, dict[str, float]], dict[str, list[str]]]:
    """Per-baseline summaries and paired margins, and each baseline's final answers (episode i = seed i)."""
    results, answers, rewards = {}, {}, {}
    for name, policy in BASELINES.items():
        logs = list(run_episodes("agentenv/Recommend-v0", policy(), episodes, seed=0, batch_size=1))
        rewards[name] = np.array([log.reward for log in logs])
        keys = logs[0].reward_components.keys()
        results[name] = {"mean": float(rewards[name].mean()), "stderr": float(rewards[name].std(ddof=1) / np.sqrt(episodes)),
                         **{k: float(np.mean([log.reward_components[k] for log in logs])) for k in keys},
                         "mean_turns": float(np.mean([log.turns for log in logs]))}
        answers[name] = [parse_action(log.messages[-1]["content"]).answer or "" for log in logs]
    for hi, lo in (("constraint-aware", "popularity"), ("popularity", "random")):
        diff = rewards[hi] - rewards[lo]
        half = 1.96 * diff.std(ddof=1) / np.sqrt(len(diff))
        results[f"margin {hi} - {lo}"] = {"mean": float(diff.mean()), "ci95": [float(diff.mean() - half), float(diff.mean() + half)],
                                          "wins": float((diff > 0).mean())}
    return results, answers


def episode_contexts(episodes: int) -> list:
    """The scoring context of episodes 0..N-1 (the seeds `run_episodes` used)."""
    env = gym.make("agentenv/Recommend-v0").unwrapped
    contexts = []
    for seed in range(episodes):
        env.reset(seed=seed)
        contexts.append(env.context)
    return contexts


def throughput(contexts: list, answers: dict[str, list[str]], min_s: float = 1.0) -> dict[str, float]:
    pairs = [(c, a) for name in answers for c, a in zip(contexts, answers[name])]
    setups = {"rule-based (format+if+fc)": (["format", "if", "fc"], {"if": 0.6, "fc": 0.4}),
              "qir (learned)": (["format", "qir"], {"qir": 1.0}), "ub (learned)": (["format", "ub"], {"ub": 1.0}),
              "hybrid (all five)": (["format", "if", "fc", "qir", "ub"], None)}
    out = {}
    for label, (names, weights) in setups.items():
        reward = HybridReward([make_scorer(n) for n in names], weights)
        for c, a in pairs[:50]:  # warm-up: model load, item vectors, query vectors of the first requests
            reward.score(c, parse_recommendation(a))
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < min_s:
            for c, a in pairs:
                reward.score(c, parse_recommendation(a))
            n += len(pairs)
        out[label] = n / (time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args()
    report = {"learned": learned_scorers()}
    print(json.dumps(report["learned"], indent=2))
    ranking, answers = baselines(args.episodes)
    report["baselines"] = ranking
    print(json.dumps(ranking, indent=2))
    report["episodes_per_s"] = throughput(episode_contexts(args.episodes), answers)
    print(json.dumps(report["episodes_per_s"], indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
