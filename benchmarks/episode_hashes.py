"""Hash the scripted episodes of every env (and compressor) so two versions of the code can be compared.

    python benchmarks/episode_hashes.py [REPO_ROOT]   # REPO_ROOT: a checkout of another commit (default: this one)

Same seeds, same scripted agents, 24 episodes per case: equal hashes mean byte-identical episodes.
"""
import sys, hashlib, json, warnings
sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else str(__import__("pathlib").Path(__file__).resolve().parents[1]))
warnings.simplefilter("ignore")
import agentenv
from agentenv.runner import run_episodes
from agentenv.registration import scripted_policy
cases = [("agentenv/ToolReasoning-v0", {}), ("agentenv/ToolReasoning-v0", {"execution": "delayed"}),
         ("agentenv/Ledger-v0", {"turns": 48}), ("agentenv/Ledger-v0", {"turns": 48, "compressor": "zip", "budget_tokens": 1024}),
         ("agentenv/Ledger-v0", {"turns": 48, "compressor": "window", "budget_tokens": 1024}),
         ("agentenv/Recommend-v0", {}), ("agentenv/AudioReasoning-v0", {})]
for env_id, kw in cases:
    h = hashlib.sha256()
    for log in run_episodes(env_id, scripted_policy(env_id), 24, seed=0, batch_size=8, env_kwargs=kw):
        d = log.as_dict()
        h.update(json.dumps(d, sort_keys=True, default=str).encode())
    print(env_id, kw, h.hexdigest()[:16])
