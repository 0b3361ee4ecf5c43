"""HFPolicy's prefix cache: the same rollouts as without it, the learner's log-probs, staleness and memory."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

import agentenv  # noqa: F401 - registers the envs
from agentenv.learn.learner import make_batch, token_logprobs
from agentenv.policies.hf import HFPolicy
from agentenv.policies.kv_cache import PrefixStore
from agentenv.policies.tiny import tiny_model, tiny_tokenizer
from agentenv.rollout import collect

ENV = "agentenv/ToolReasoning-v0"
CALC = {"tools": ["calculator"], "max_turns": 4}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return tiny_model("tiny", seed=0)


def policy(model, cache=True, seed=0, **kwargs):
    kwargs.setdefault("max_new_tokens", 10)
    return HFPolicy(model, tiny_tokenizer(), seed=seed, prefix_cache=cache, **kwargs)


def rollout(p, tasks=(0, 1, 2), group_size=3, **options):
    return collect(ENV, p, list(tasks), group_size=group_size, env_kwargs=CALC, **options)


def ids(episodes):
    return [[s.token_ids for s in e.samples] for e in episodes]


def max_logprob_gap(a, b):
    return max(abs(x - y) for ea, eb in zip(a, b) for sa, sb in zip(ea.samples, eb.samples)
               for x, y in zip(sa.old_logprobs, sb.old_logprobs))


def test_greedy_rollouts_are_identical_and_the_prompts_are_not_rerun(model):
    plain, cached = policy(model, cache=False, temperature=0.0), policy(model, temperature=0.0)
    a, b = rollout(plain), rollout(cached)
    assert ids(a) == ids(b)
    assert all(len(e.turns) == 4 for e in b)  # a random model never answers: every episode runs 4 turns
    assert cached.stats["prompt_tokens"] == plain.stats["prompt_tokens"]
    assert cached.stats["generated_tokens"] == plain.stats["generated_tokens"]
    assert cached.stats["prefill_tokens"] < plain.stats["prefill_tokens"] / 8


@pytest.mark.parametrize("batch_size,seeds", [(None, (0, 1, 2)), (4, (0,))])
def test_sampled_rollouts_match_token_for_token_on_fixed_seeds(model, batch_size, seeds):
    """With `batch_size` episodes start while others are mid-way: their prompts reuse other episodes' entries.
    Observed: identical tokens on every seed, log-probs within ~1e-6 (float rounding of other matmul shapes)."""
    for seed in seeds:
        a = rollout(policy(model, cache=False, seed=seed, max_new_tokens=8), tasks=(0, 1), batch_size=batch_size)
        b = rollout(policy(model, seed=seed, max_new_tokens=8), tasks=(0, 1), batch_size=batch_size)
        assert ids(a) == ids(b)
        assert max_logprob_gap(a, b) < 1e-5


def test_reported_logprobs_equal_the_learners_recompute(model):
    episodes = rollout(policy(model, max_new_tokens=12), tasks=(3, 4))
    batch = make_batch(episodes, torch.zeros(len(episodes)), tiny_tokenizer().pad_token_id)
    with torch.no_grad():
        logp, _ = token_logprobs(model, batch)
    mask = batch.loss_mask.bool()
    assert int(mask.sum()) > 100
    assert torch.allclose(logp[mask], batch.old_logp[mask], atol=1e-5)


def test_same_prefix_with_different_continuations(model):
    plain, cached = policy(model, cache=False, max_new_tokens=6), policy(model, max_new_tokens=6)
    stem = cached.render_prompt([{"role": "system", "content": "You are a careful calculator. " * 3},
                                 {"role": "user", "content": "What is 12 + 30?"}])
    first = [stem, stem, stem[:-5]]
    a, b = plain.generate_ids(first), cached.generate_ids(first)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    # row 0 goes on; row 1 branches off its own sequence; row 2 is the stem with another ending; row 3 is new
    second = [stem + b[0].token_ids + [5, 6, 7], stem + b[1].token_ids[:2] + [9, 9], stem[:-5] + [11, 12], stem[:40] + [3]]
    a, b = plain.generate_ids(second), cached.generate_ids(second)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert max(abs(x - y) for ga, gb in zip(a, b) for x, y in zip(ga.logprobs, gb.logprobs)) < 1e-5
    # mixed limits, a one-token prompt, and a row with nothing to generate
    third = [second[0] + b[0].token_ids, [0], stem]
    a = plain.generate_ids(third, max_new_tokens=[3, 4, 0])
    b = cached.generate_ids(third, max_new_tokens=[3, 4, 0])
    assert [g.token_ids for g in a] == [g.token_ids for g in b] and b[2].token_ids == []


def test_the_store_keeps_only_the_last_calls_sequences(model):
    p = policy(model, max_new_tokens=5)
    prompts = [p.render_prompt([{"role": "user", "content": f"What is {n} + 1?"}]) for n in range(4)]
    gens = p.generate_ids(prompts)
    assert len(p._store) == 4
    # two episodes go on, two ended: only the two sequences of this call are kept
    p.generate_ids([g.prompt_ids + g.token_ids + [7, 8] for g in gens[:2]])
    assert len(p._store) == 2
    assert all(e.kv[0][0].shape[1] == len(e.ids) for e in p._store.entries)


def test_memory_cap_is_respected_and_changes_nothing(model):
    plain = rollout(policy(model, cache=False, seed=5), tasks=(0,), group_size=2)
    for cap in (0, 300, 10_000):
        p = policy(model, seed=5, cache_max_tokens=cap)
        seen = []
        inner = p.generate_ids

        def spy(prompts, max_new_tokens=None):
            out = inner(prompts, max_new_tokens)
            seen.append(p._store.tokens)
            return out

        p.generate_ids = spy
        assert ids(rollout(p, tasks=(0,), group_size=2)) == ids(plain)
        assert max(seen) <= cap
        if cap == 0:
            assert seen == [0] * len(seen)
    store = PrefixStore(max_tokens=5)
    kv = [(torch.zeros(1, 4, 2), torch.zeros(1, 4, 2))]
    assert store.add([1, 2, 3, 4], kv) and not store.add([1, 2, 3, 4], kv) and store.tokens == 4


def _extend_with_a_turn(p, prompt):
    (gen,) = p.generate_ids([prompt])
    return prompt + gen.token_ids + [5, 6, 7]


def test_an_optimizer_step_invalidates_the_cache():
    model = tiny_model("tiny", seed=0)
    p = policy(model, max_new_tokens=6)
    prompt = p.render_prompt([{"role": "user", "content": "What is 3 + 4?"}])
    follow_up = _extend_with_a_turn(p, prompt)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.5)  # a large step: stale keys/values would show
    inputs = torch.tensor([follow_up])
    model(inputs, labels=inputs).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    before = p.stats["prefill_tokens"]
    fresh_policy = policy(model, cache=False, max_new_tokens=6)
    fresh_policy.generator.set_state(p.generator.get_state())
    (after_step,) = p.generate_ids([follow_up])
    assert p.stats["prefill_tokens"] - before == len(follow_up)  # nothing reused: the store was dropped
    (fresh,) = fresh_policy.generate_ids([follow_up])
    assert after_step.token_ids == fresh.token_ids
    assert max(abs(x - y) for x, y in zip(after_step.logprobs, fresh.logprobs)) < 1e-5


def test_other_weight_writes_invalidate_and_clear_cache_forgets(model):
    local = tiny_model("tiny", seed=0)
    p = policy(local, max_new_tokens=4)
    prompt = p.render_prompt([{"role": "user", "content": "What is 2 * 21?"}])
    for change in (lambda: local.load_state_dict(tiny_model("tiny", seed=1).state_dict()),
                   lambda: _in_place(local),
                   lambda: p.clear_cache()):
        follow_up = _extend_with_a_turn(p, prompt)
        assert len(p._store) == 1
        change()
        before = p.stats["reused_tokens"]
        p.generate_ids([follow_up])
        assert p.stats["reused_tokens"] == before


def _in_place(model):
    with torch.no_grad():
        next(model.parameters()).add_(0.1)


def test_a_stale_cache_would_be_wrong_so_the_check_matters(model, monkeypatch):
    """Control: with the staleness check defeated, the same step makes the cached logits differ."""
    import agentenv.policies.hf as hf

    local = tiny_model("tiny", seed=0)
    p = policy(local, max_new_tokens=6)
    prompt = p.render_prompt([{"role": "user", "content": "What is 3 + 4?"}])
    follow_up = _extend_with_a_turn(p, prompt)
    monkeypatch.setattr(hf, "weights_version", lambda *models: ())
    p._store_version = ()
    _in_place(local)
    fresh_policy = policy(local, cache=False, max_new_tokens=6)
    fresh_policy.generator.set_state(p.generator.get_state())
    (stale,) = p.generate_ids([follow_up])
    (fresh,) = fresh_policy.generate_ids([follow_up])
    assert p.stats["reused_tokens"] > 0
    assert abs(stale.logprobs[0] - fresh.logprobs[0]) > 1e-3


def test_growing_layer_writes_in_place_and_grows_when_full():
    from agentenv.policies.kv_cache import cache_from_layers, cache_layers

    keys, values = torch.randn(3, 2, 6, 4), torch.randn(3, 2, 6, 4)
    cache = cache_from_layers([(keys, values)], length=4)  # 4 filled positions, room for 2
    assert cache.get_seq_length() == 4
    new = [torch.randn(3, 2, 1, 4) for _ in range(3)]
    for k in new:  # the third write passes the room: the buffer grows
        cache.update(k, k, 0)
    expected = torch.cat([keys[:, :, :4]] + new, dim=2)
    (got_keys, got_values), = cache_layers(cache)
    assert torch.equal(got_keys, expected) and torch.equal(got_values[:, :, 4:], torch.cat(new, dim=2))
    cache.batch_select_indices(torch.tensor([2, 0]))
    assert torch.equal(cache_layers(cache)[0][0], expected[[2, 0]]) and cache.get_seq_length() == 7
    cache.crop(-2)
    assert torch.equal(cache_layers(cache)[0][0], expected[[2, 0], :, :5])
