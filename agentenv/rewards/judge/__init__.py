"""LLM-as-judge rewards: any `Policy` as a pointwise or pairwise judge with a rubric, mitigations of its biases,
bias probes on synthetic pairs with known answers, and the env reward built from a spec string."""

from agentenv.rewards.judge.judges import (Judgement, PairItem, PairJudge, PairwiseJudge, Panel, PointItem, PointwiseJudge,
                                           SwapAveraged, verdict_of)
from agentenv.rewards.judge.rubrics import RUBRICS, Rubric, get_rubric, parse_score, parse_verdict

__all__ = ["Judgement", "PairItem", "PairJudge", "PairwiseJudge", "Panel", "PointItem", "PointwiseJudge", "SwapAveraged",
           "verdict_of", "RUBRICS", "Rubric", "get_rubric", "parse_score", "parse_verdict"]
