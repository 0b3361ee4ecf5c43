"""Every registered env: Gymnasium's checker, seeded determinism, and vectorised use."""

import pickle

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import agentenv
from agentenv.registration import ENV_IDS

ACTIONS = ["Let me look at this first.", '<tool_call>{"name": "nope", "arguments": {}}</tool_call>', "<answer>42</answer>"]
FAST = {"agentenv/Ledger-v0": {"turns": 12}}  # keep the stream short


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_check_env_passes(env_id):
    env = gym.make(env_id, **FAST.get(env_id, {}))
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_the_same_seed_gives_the_same_episode(env_id):
    def episode(seed):
        env = gym.make(env_id, **FAST.get(env_id, {}))
        out = [env.reset(seed=seed)[0]]
        for action in ACTIONS:
            obs, reward, terminated, truncated, info = env.step(action)
            out.append((obs, reward, terminated, truncated, info["error"]))
            if terminated or truncated:
                break
        env.close()
        return out

    same = lambda a, b: pickle.dumps(a) == pickle.dumps(b)  # noqa: E731 - observations may hold waveforms (arrays)
    assert same(episode(7), episode(7))
    assert not same(episode(7)[0], episode(8)[0])


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_make_vec_uses_the_vector_entry_point(env_id):
    envs = gym.make_vec(env_id, num_envs=2, vectorization_mode="vector_entry_point", **FAST.get(env_id, {}))
    obs, info = envs.reset(seed=0)
    assert len(obs) == 2 and pickle.dumps(obs[0]) != pickle.dumps(obs[1])  # seeds 0 and 1
    obs, reward, terminated, truncated, info = envs.step(["<answer>42</answer>", "Thinking."])
    assert len(reward) == 2 and bool(terminated[0]) and not bool(terminated[1])
    envs.close()


def test_async_vector_envs_work_without_shared_memory_and_say_so_with_it():
    make = lambda: gym.make("agentenv/ToolReasoning-v0", tools=["calculator"])  # noqa: E731
    with pytest.raises(ValueError, match="shared_memory=False"):
        gym.vector.AsyncVectorEnv([make, make])
    envs = gym.vector.AsyncVectorEnv([make, make], shared_memory=False)
    obs, _ = envs.reset(seed=0)
    _obs, reward, terminated, _trunc, _info = envs.step(["<answer>0</answer>", "<answer>0</answer>"])
    assert len(obs) == 2 and all(terminated)
    envs.close()
