"""Tiny model assets, HFPolicy and the rollout engine: token-in/token-out records that match what happened."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gymnasium as gym
import pytest
import torch

import agentenv  # noqa: F401 - registers the envs
from agentenv.errors import UserError
from agentenv.policies.hf import HFPolicy, sample_tokens
from agentenv.rollout import Episode, collect, demonstrations
from agentenv.policies.tiny import TINY_TOKENIZER_DIR, tiny_model, tiny_tokenizer
from agentenv.runner import run_episodes

ENV = "agentenv/ToolReasoning-v0"
CALC = {"tools": ["calculator"]}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return tiny_model("tiny", seed=0)


def policy(model, seed=0, **kwargs):
    kwargs.setdefault("max_new_tokens", 12)
    return HFPolicy(model, tiny_tokenizer(), seed=seed, **kwargs)


@pytest.fixture(scope="module")
def episodes(model):
    """3 tasks × 2 samples, up to 3 turns of up to 12 random tokens each."""
    return collect(ENV, policy(model), [0, 1, 2], group_size=2, env_kwargs=CALC, max_turns=3)


def render(messages, generation_prompt=False):
    return tiny_tokenizer().apply_chat_template(
        [{"role": m["role"], "content": m["content"]} for m in messages], tokenize=False, add_generation_prompt=generation_prompt
    )


# -- assets ----------------------------------------------------------------------------------------


def test_tiny_tokenizer_is_small_chatml_and_offline():
    tok = tiny_tokenizer()
    assert sum(p.stat().st_size for p in TINY_TOKENIZER_DIR.iterdir()) < 1_000_000
    assert 1000 <= len(tok) <= 4096
    # one token per digit, wherever the number stands (question, expression, tool result)
    for text in (" 13", "(13", "\n715", "<answer>7920"):
        digits = [tok.decode([i]) for i in tok.encode(text, add_special_tokens=False) if tok.decode([i]).isdigit()]
        assert digits == [c for c in text if c.isdigit()], text
    assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<|im_start|>", "<|im_end|>", "<|pad|>"]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|pad|>"
    text = render([{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"}], generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>tool\n42<|im_end|>\n<|im_start|>assistant\n"
    for tag in ("<tool_call>", "</tool_call>", "<answer>", "</answer>", "<execute/>"):
        assert len(tok.encode(tag, add_special_tokens=False)) == 1, tag


def test_tiny_model_is_seeded_and_matches_the_tokenizer():
    a, b, c = tiny_model(seed=3), tiny_model(seed=3), tiny_model(seed=4)
    assert a.config.vocab_size == len(tiny_tokenizer()) and a.config.tie_word_embeddings
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    assert tiny_model("small").config.num_hidden_layers > a.config.num_hidden_layers


# -- rendering -------------------------------------------------------------------------------------


def test_prompt_plus_turns_plus_deltas_equals_one_tokenization_of_the_chat():
    """Scripted text round-trips, so appending ids turn by turn gives exactly the whole chat's ids."""
    tok = tiny_tokenizer()
    p = HFPolicy(tiny_model(), tok)
    for execution in ("immediate", "delayed"):
        for log in run_episodes(ENV, agentenv.policies.ScriptedPolicy(), 4, env_kwargs={"execution": execution}):
            messages = log.messages
            ids = p.render_prompt(messages[:2])
            i = 2
            while i < len(messages):
                assert messages[i]["role"] == "assistant"
                ids += p.chat.turn(messages[i]["content"])
                j = i + 1
                while j < len(messages) and messages[j]["role"] != "assistant":
                    j += 1
                if j < len(messages):
                    ids += p.render_delta(messages[i + 1 : j])
                i = j
            whole = tok.encode(render(messages), add_special_tokens=False)
            assert ids == whole[:-1]  # the chat's trailing "\n" after the last <|im_end|> is never generated


# -- HFPolicy --------------------------------------------------------------------------------------


def test_generate_returns_ids_logprobs_and_text(model):
    p = policy(model, max_new_tokens=8)
    env = gym.make(ENV, **CALC)
    contexts = [env.reset(seed=s)[0] for s in range(3)]
    generations = p.generate(contexts)
    for context, g in zip(contexts, generations):
        assert g.prompt_ids == p.render_prompt(context)
        assert len(g.token_ids) == len(g.logprobs) <= 8
        assert all(lp <= 0.0 for lp in g.logprobs)
        stopped = g.token_ids[-1] == p.chat.end_id
        assert g.finish_reason == ("stop" if stopped else "length")
        assert g.text == p.chat.decode(g.token_ids[:-1] if stopped else g.token_ids)
    limited = p.generate_ids([g.prompt_ids for g in generations], max_new_tokens=[1, 3, 0])
    assert [len(g.token_ids) for g in limited][2] == 0 and len(limited[0].token_ids) == 1 and len(limited[1].token_ids) <= 3


def test_generation_is_reproducible_with_the_same_seed(model):
    prompts = [[0, 5, 6, 7], [0, 9, 10]]
    first = policy(model, seed=1).generate_ids(prompts)
    again = policy(model, seed=1).generate_ids(prompts)
    other = policy(model, seed=2).generate_ids(prompts)
    assert [g.token_ids for g in first] == [g.token_ids for g in again]
    assert [g.logprobs for g in first] == [g.logprobs for g in again]
    assert [g.token_ids for g in first] != [g.token_ids for g in other]


def test_sampled_logprobs_follow_temperature_and_top_p():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]] * 200)
    gen = torch.Generator().manual_seed(0)
    tokens, logp = sample_tokens(logits, 0.5, 1.0, gen)
    expected = (logits / 0.5).log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1)
    torch.testing.assert_close(logp, expected)
    tokens, logp = sample_tokens(logits, 1.0, 0.8, gen)  # nucleus {0, 1}: p = 0.644 + 0.237 ≥ 0.8
    assert set(tokens.tolist()) <= {0, 1}
    kept = logits[0, :2].log_softmax(-1)
    torch.testing.assert_close(logp, kept[tokens])
    tokens, logp = sample_tokens(logits, 0.0, 1.0, gen)
    assert tokens.eq(0).all() and logp.eq(0).all()


def test_hf_policy_runs_through_the_episode_runner(model):
    logs = list(run_episodes(ENV, policy(model, max_new_tokens=6), 3, batch_size=3, env_kwargs={**CALC, "max_turns": 2}))
    assert len(logs) == 3 and all(log.turns == 2 and log.truncated for log in logs)


# -- rollout ---------------------------------------------------------------------------------------


def test_groups_share_their_task_and_order(episodes):
    assert [(e.group_id, e.seed) for e in episodes] == [(0, 0), (0, 0), (1, 1), (1, 1), (2, 2), (2, 2)]
    questions = [e.messages[1]["content"] for e in episodes]
    assert questions[0] == questions[1] and questions[2] == questions[3] and questions[0] != questions[2]
    assert episodes[0].samples[0].token_ids != episodes[1].samples[0].token_ids  # different samples of one task


def test_sample_ids_decode_to_the_transcript(episodes):
    tok = tiny_tokenizer()
    for e in episodes:
        assert len(e.samples) == 1 and len(e.turns) == 3 and e.truncated
        last = max(i for i, m in enumerate(e.messages) if m["role"] == "assistant")
        transcript = render(e.messages[: last + 1])  # what the env said after the last turn was never fed back
        text = tok.decode(e.samples[0].token_ids, skip_special_tokens=False)
        assert transcript.startswith(text) and transcript[len(text) :] in ("\n", "<|im_end|>\n")


def test_multi_turn_sample_is_prompt_plus_turns_plus_deltas(episodes, model):
    p = policy(model)
    for e in episodes:
        sample = e.samples[0]
        assert sample.prompt_len == len(p.render_prompt(e.messages[:2]))
        ids = list(sample.token_ids[: sample.prompt_len])
        assistant = [i for i, m in enumerate(e.messages) if m["role"] == "assistant"]
        for k, turn in enumerate(e.turns):
            assert turn["start"] == len(ids)
            generated = sample.token_ids[turn["start"] : turn["end"]]
            ids += generated
            assert e.messages[assistant[k]]["content"] == p.chat.decode(generated[:-1] if turn["finish_reason"] == "stop" else generated)
            if k + 1 < len(e.turns):
                ids += ([] if turn["finish_reason"] == "stop" else [p.chat.end_id]) + p.render_delta(e.messages[assistant[k] + 1 : assistant[k + 1]])
        assert ids == sample.token_ids


def test_loss_mask_covers_exactly_the_generated_tokens(episodes):
    for e in episodes:
        sample = e.samples[0]
        n = len(sample)
        assert len(sample.loss_mask) == len(sample.old_logprobs) == len(sample.control_mask) == n
        generated = {i for t in e.turns for i in range(t["start"], t["end"])}
        assert sample.loss_mask == [int(i in generated) for i in range(n)]
        assert all(lp == 0.0 for lp, m in zip(sample.old_logprobs, sample.loss_mask) if not m)
        assert all(lp < 0.0 for lp, m in zip(sample.old_logprobs, sample.loss_mask) if m)


def test_old_logprobs_equal_a_fresh_forward_pass(episodes, model):
    for e in episodes:
        sample = e.samples[0]
        ids = torch.tensor([sample.token_ids])
        with torch.no_grad():
            logp = model(input_ids=ids).logits.float().log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None]).squeeze(-1)
        mask = torch.tensor(sample.loss_mask[1:], dtype=torch.bool)
        old = torch.tensor(sample.old_logprobs[1:])
        assert mask.sum() > 0
        torch.testing.assert_close(old[mask], logp[mask], atol=1e-5, rtol=0)


def test_rollout_is_reproducible(model):
    kwargs = dict(env_kwargs=CALC, max_turns=2)
    a = collect(ENV, policy(model, seed=5), [7, 8], 2, **kwargs)
    b = collect(ENV, policy(model, seed=5), [7, 8], 2, **kwargs)
    assert [e.samples[0].token_ids for e in a] == [e.samples[0].token_ids for e in b]


def test_max_seq_len_truncates_cleanly(model):
    prompt_len = len(policy(model).render_prompt(gym.make(ENV, **CALC).reset(seed=0)[0]))
    limit = prompt_len + 40
    eps = collect(ENV, policy(model, max_new_tokens=30), [0, 1], 2, env_kwargs=CALC, max_seq_len=limit)
    for e in eps:
        assert e.truncated and not e.terminated and e.reward == 0.0
        assert all(len(s) <= limit for s in e.samples)
        assert len(e.turns) >= 1
    too_long = collect(ENV, policy(model), [0], 1, env_kwargs=CALC, max_seq_len=prompt_len)
    assert too_long[0].truncated and too_long[0].samples == [] and too_long[0].turns == []


class KeepLastMessage(gym.Wrapper):
    """A stand-in compressor: after each step the history is system + question + the last message."""

    def step(self, action):
        obs, *rest = self.env.step(action)
        return obs[:2] + obs[-1:], *rest


def test_rewritten_history_starts_a_new_sample(model):
    p = policy(model)
    [e] = collect(lambda: KeepLastMessage(gym.make(ENV, **CALC)), p, [0], 1, max_turns=3)
    assert len(e.samples) == 3 and [t["sample"] for t in e.turns] == [0, 1, 2]
    for sample, turn in zip(e.samples, e.turns):
        assert sample.loss_mask == [0] * sample.prompt_len + [1] * (len(sample) - sample.prompt_len)
        assert turn["start"] == sample.prompt_len


# -- text-only policies ----------------------------------------------------------------------------


@pytest.mark.parametrize("execution", ["immediate", "delayed"])
def test_demonstrations_record_scripted_turns_with_control_masks(execution):
    tok = tiny_tokenizer()
    demos = demonstrations(ENV, 6, tok, env_kwargs={"execution": execution})
    assert len(demos) == 6 and all(isinstance(e, Episode) and e.success for e in demos)
    kinds = set()
    for e in demos:
        [sample] = e.samples
        assert tok.decode(sample.token_ids, skip_special_tokens=False) == render(e.messages)[:-1]
        assert all(lp == 0.0 for lp in sample.old_logprobs)
        assert all(c <= m for c, m in zip(sample.control_mask, sample.loss_mask))
        actions = [m["content"] for m in e.messages if m["role"] == "assistant"]
        for action, turn in zip(actions, e.turns):
            assert sample.token_ids[turn["end"] - 1] == tok.eos_token_id
            assert sum(sample.loss_mask[turn["start"] : turn["end"]]) == turn["end"] - turn["start"]
            for (start, end, kind), (a, b, _) in zip(turn["control_spans"], turn["control_positions"]):
                assert tok.decode(sample.token_ids[a:b]) == action[start:end]
                assert sample.control_mask[a:b] == [1] * (b - a)
                kinds.add(kind)
    assert {"tool_call", "answer"} <= kinds and ("execute" in kinds) == (execution == "delayed")


def test_one_loop_for_text_records_token_records_and_agentenv_run():
    """Without a tokenizer a text-only policy gets text records (no samples) from the same loop; with one, the
    same episodes plus token records; `agentenv run`'s summaries are views of the same episodes."""
    from agentenv.runner import EpisodeLog, run_episodes

    policy = agentenv.policies.ScriptedPolicy()
    text = collect(ENV, policy, range(6), batch_size=4)
    tokens = collect(ENV, policy, range(6), tokenizer=tiny_tokenizer(), batch_size=4)
    assert all(not e.samples for e in text) and all(e.samples for e in tokens)
    for a, b in zip(text, tokens):
        assert (a.seed, a.messages, a.reward, a.reward_components) == (b.seed, b.messages, b.reward, b.reward_components)
        assert [t["tool_calls"] for t in a.turns] == [t["tool_calls"] for t in b.turns]
    logs = sorted(run_episodes(ENV, policy, 6, batch_size=4), key=lambda log: log.seed)
    assert [log.as_dict() for log in logs] == [EpisodeLog.of(ENV, e).as_dict() for e in text]
    assert sum(log.tool_calls for log in logs) > 0 and all(log.turns == len(e.turns) for log, e in zip(logs, text))


def test_cli_builds_the_tiny_hf_policy():
    from agentenv.cli import _make_policy

    assert isinstance(_make_policy("hf:tiny", ENV), HFPolicy)
    with pytest.raises(UserError, match="not a model directory"):
        _make_policy("hf:/no/such/dir", ENV)


def test_a_saved_policy_reloads_with_the_same_weights_and_token_ids(model, tmp_path):
    # transformers 5's AutoTokenizer would reload the tiny tokenizer as Qwen2Tokenizer and split digits
    # differently: a trained checkpoint would then read every prompt with the wrong ids.
    original = policy(model)
    model.save_pretrained(tmp_path)
    original.tokenizer.save_pretrained(tmp_path)
    reloaded = HFPolicy(str(tmp_path))
    messages = [{"role": "user", "content": "In how many ways can 3 of 15 books be arranged? perm(15, 3) = 2730"}]
    assert reloaded.render_prompt(messages) == original.render_prompt(messages)
    ids = torch.tensor([original.render_prompt(messages)])
    assert torch.equal(reloaded.model(ids).logits, model(ids).logits)


def test_dlogp_extrapolation_with_the_base_itself_is_plain_sampling(model):
    prompts = [policy(model).render_prompt([{"role": "user", "content": q}]) for q in ("How many 12?", "What is 3*4?")]
    plain = policy(model, max_new_tokens=10).generate_ids(prompts)
    same = policy(model, max_new_tokens=10, extrapolate_from=model).generate_ids(prompts)  # Δlog p = 0: never triggers
    assert [g.token_ids for g in same] == [g.token_ids for g in plain]
    assert [g.logprobs for g in same] == [g.logprobs for g in plain]


def test_dlogp_extrapolation_draws_every_triggered_token_from_the_mixed_distribution(model):
    from agentenv.learn.plugins.direction import extrapolation_logits

    rl_model = tiny_model("tiny", seed=1)
    alpha, top_k = 0.1, 40
    sampler = policy(rl_model, max_new_tokens=8, extrapolate_from=model, extrapolate_alpha=alpha,
                     extrapolate_tau=float("inf"), extrapolate_top_k=top_k)  # τ = +∞: every token is resampled
    prompt = sampler.render_prompt([{"role": "user", "content": "How many 12?"}])
    (gen,) = sampler.generate_ids([prompt])
    ids = torch.tensor([prompt + gen.token_ids])
    with torch.no_grad():
        mixed = extrapolation_logits(model(ids).logits[0], rl_model(ids).logits[0], alpha, top_k).log_softmax(-1)
    steps = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(gen.token_ids))
    expected = mixed[steps, torch.tensor(gen.token_ids)]
    assert torch.allclose(torch.tensor(gen.logprobs), expected, atol=1e-5)


def test_a_model_directory_without_a_tokenizer_is_an_error_not_the_tiny_vocabulary(model, tmp_path):
    model.save_pretrained(tmp_path)  # weights and config only
    with pytest.raises(UserError, match="no tokenizer"):
        HFPolicy(str(tmp_path))
    from agentenv.cli import main

    assert main(["run", "ToolReasoning-v0", "--policy", f"hf:{tmp_path}", "--episodes", "1"]) == 2


def test_generation_and_the_shared_prefix_forward_use_the_current_cache_keyword(model):
    import warnings

    from agentenv.policies.kv_cache import cache_kwargs

    p = policy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # transformers' "past_key_values is deprecated ... use cache" would raise
        p.generate([[{"role": "user", "content": "2 + 2 = ?"}]])
    assert list(cache_kwargs(model, None)) == ["cache" if "cache" in __import__("inspect").signature(model.forward).parameters else "past_key_values"]
