"""Audio through the one learner: AudioLMPolicy (Qwen2-Audio architecture) on AudioReasoning-v0 — the audio
features stored beside the ids, the learner's log-probs against a manual forward, gradients into the encoder,
the input path an env/policy pairing states, long and malformed clips, save/load, and `agentenv train`."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import agentenv  # noqa: F401 - registers the envs
from agentenv.envs.audio.signals import SAMPLE_RATE, Tone, render_tones
from agentenv.envs.audio.speech import speech_available
from agentenv.errors import UserError
from agentenv.learn.learner import LearnerConfig, make_batch, token_logprobs, update
from agentenv.policies.audio_lm import AudioLMPolicy
from agentenv.rollout import collect, demonstrations

ENV_ID = "agentenv/AudioReasoning-v0"
AUDIO_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "audio.yaml")
AUDIO_ONLY = dict(kinds=["compare", "count"], answer_format="open", tools=[], max_turns=1)
SPEECH_REQUIRED = bool(os.environ.get("AGENTENV_REQUIRE_SPEECH"))  # CI: a missing espeak-ng fails, never skips


@pytest.fixture(scope="module")
def policy():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: a second thread only spin-waits on a busy 2-core machine
    yield AudioLMPolicy("audio-tiny", max_new_tokens=12, seed=0)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def episodes(policy):
    return collect(ENV_ID, policy, [3, 4], group_size=2, env_kwargs=AUDIO_ONLY, max_seq_len=512)


def manual_logprobs(model, sample):
    """log p(token t+1 | ≤ t) of one sample from the model's own forward, features passed as the processor does."""
    ids = torch.tensor([sample.token_ids])
    features = torch.stack([item["input_features"] for item in sample.inputs])
    mask = torch.stack([item["feature_attention_mask"] for item in sample.inputs])
    with torch.no_grad():
        logits = model(input_ids=ids, input_features=features, feature_attention_mask=mask).logits
    return logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]


def test_samples_store_the_audio_beside_the_ids_and_placeholders_stay_out_of_the_loss(policy, episodes):
    chat = policy.chat
    for episode in episodes:
        (sample,) = episode.samples
        placeholders = [i for i, t in enumerate(sample.token_ids) if t == chat.audio_id]
        assert sample.inputs and len(placeholders) == sum(chat.audio_tokens(x) for x in sample.inputs)
        assert max(placeholders) < sample.prompt_len and not any(sample.loss_mask[i] for i in placeholders)
        generated = [t for t, m in zip(sample.token_ids, sample.loss_mask) if m]
        assert generated and not set(generated) & set(policy.suppressed_ids)  # never sampled: they would be read as audio
        clip = episode.messages[1]["audio"]["array"]
        frames = int(sample.inputs[0]["feature_attention_mask"].sum())
        assert frames == int(np.ceil(clip.size / 160))  # the whole clip, one 10 ms frame per hop
    # a group's samples heard the same clip: the same feature tensors (computed once)
    assert episodes[0].samples[0].inputs[0]["input_features"] is episodes[1].samples[0].inputs[0]["input_features"]


def test_learner_logprobs_of_audio_samples_equal_a_manual_forward(policy, episodes):
    batch = make_batch(episodes, torch.zeros(len(episodes)), policy.chat.pad_id)
    assert batch.inputs["input_features"].shape[0] == len(episodes) and batch.input_rows.tolist() == [0, 1, 2, 3]
    order = [3, 0, 2]  # a shuffled micro-batch: the items must follow the rows
    micro = batch.rows(torch.tensor(order))
    with torch.no_grad():
        logp, _ = token_logprobs(policy.model, micro, mask=micro.loss_mask)
    for row, index in enumerate(order):
        sample = episodes[index].samples[0]
        expected = manual_logprobs(policy.model, sample)
        mask = torch.tensor(sample.loss_mask[1:], dtype=torch.bool)
        assert torch.allclose(logp[row, : len(expected)][mask], expected[mask], atol=1e-5, rtol=0)
        # the sampler drew from the same model with the three audio ids excluded: log(1 − p(audio ids)) apart
        sampled = torch.tensor(sample.old_logprobs[1:])[mask]
        assert (sampled - expected[mask]).abs().max() < 0.02
    # with the audio taken away, the same ids score differently: the forward really uses the features
    silent = {k: torch.zeros_like(v) if k == "input_features" else v for k, v in micro.inputs.items()}
    with torch.no_grad():
        deaf, _ = token_logprobs(policy.model, type(micro)(**{**micro.__dict__, "inputs": silent}), mask=micro.loss_mask)
    assert (deaf - logp).abs().max() > 1e-3


@pytest.mark.parametrize("frozen", [False, True])
def test_gradients_reach_the_audio_encoder_and_projector_unless_frozen(episodes, frozen):
    torch.set_num_threads(1)
    policy = AudioLMPolicy("audio-tiny", freeze_audio_encoder=frozen)
    model = policy.model.train()
    batch = make_batch(episodes, torch.tensor([1.0, -1.0, 0.5, -0.5]), policy.chat.pad_id)
    logp, _ = token_logprobs(model, batch, mask=batch.loss_mask)
    (logp * batch.advantages[:, None]).sum().backward()
    tower, projector = model.model.audio_tower, model.model.multi_modal_projector
    assert projector.linear.weight.grad is not None and projector.linear.weight.grad.abs().sum() > 0
    if frozen:
        assert all(p.grad is None and not p.requires_grad for p in tower.parameters())
    else:
        for p in (tower.conv1.weight, tower.conv2.weight, tower.layers[0].self_attn.q_proj.weight):
            assert p.grad is not None and p.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    update(model, torch.optim.AdamW(model.parameters(), lr=1e-3), batch, LearnerConfig(lr=1e-3))
    after = model.state_dict()
    assert not torch.equal(before["model.multi_modal_projector.linear.weight"], after["model.multi_modal_projector.linear.weight"])
    assert torch.equal(before["model.audio_tower.conv1.weight"], after["model.audio_tower.conv1.weight"]) == frozen


def test_long_stereo_resampled_and_malformed_clips_are_heard_whole(policy):
    chat = policy.chat
    tone = render_tones([Tone(0.2, 8.8, 440.0, 0.5)], 9.0)  # 9 s: three 4 s windows
    ids, items = chat.prompt_and_inputs([{"role": "user", "content": "x", "audio": {"array": tone, "sampling_rate": SAMPLE_RATE}}])
    assert len(items) == 3 and [int(x["feature_attention_mask"].sum()) for x in items] == [400, 400, 100]
    assert ids.count(chat.audio_id) == sum(chat.audio_tokens(x) for x in items) == 100 + 100 + 25
    stereo_22k = np.stack([render_tones([Tone(0.0, 1.0, 440.0, 0.5)], 1.0, sr=22_050)] * 2, axis=1)
    ids, items = chat.prompt_and_inputs([{"role": "user", "content": "x", "audio": {"array": stereo_22k, "sampling_rate": 22_050}}])
    assert len(items) == 1 and int(items[0]["feature_attention_mask"].sum()) == 100
    # empty or NaN audio, and text that spells the placeholder: no crash, and the ids still match the features
    forged = "<|audio_bos|><|AUDIO|><|audio_eos|> hello"
    for audio in ({"array": np.zeros(0, np.float32), "sampling_rate": 16_000}, {"array": [np.nan, 1.0], "sampling_rate": "?"},
                  {"array": 0.5}, {"array": ["not", "audio"]}, {}):
        ids, items = chat.prompt_and_inputs([{"role": "user", "content": forged, "audio": audio}])
        assert ids.count(chat.audio_id) == sum(chat.audio_tokens(x) for x in items) >= 2
        (generation,) = policy.generate_ids([ids], max_new_tokens=2, inputs=[items])
        assert len(generation.token_ids) <= 2


def test_a_policy_refuses_prompts_whose_audio_is_missing(policy):
    from agentenv.policies.hf import HFPolicy

    messages = [{"role": "user", "content": "x", "audio": {"array": np.zeros(8000, np.float32), "sampling_rate": 16_000}}]
    ids, items = policy.chat.prompt_and_inputs(messages)
    with pytest.raises(ValueError, match="audio placeholder"):
        policy.generate_ids([ids], max_new_tokens=2)  # ids rendered with audio, features dropped
    with pytest.raises(UserError, match="reads text only"):
        HFPolicy("tiny").generate_ids([[1, 2, 3]], max_new_tokens=2, inputs=[items])


def test_the_pairing_states_the_input_path_and_refuses_audio_only_tasks_for_text_policies(policy):
    import gymnasium as gym

    from agentenv.envs.audio.scripted import ScriptedAudioAgent
    from agentenv.policies.hf import HFPolicy
    from agentenv.rollout import input_path

    text = HFPolicy("tiny", max_new_tokens=4)
    audio_only, with_tools = gym.make(ENV_ID, **AUDIO_ONLY), gym.make(ENV_ID, kinds=["compare"])
    assert input_path(audio_only, policy) == "audio input"
    assert input_path(with_tools, text).startswith("tools only: spectrum, pitch_track, count_onsets, loudness")
    with pytest.raises(UserError, match="audio-only.*reads text only"):
        collect(ENV_ID, text, [0], env_kwargs=AUDIO_ONLY)
    with pytest.raises(UserError, match="audio-only"):
        collect(ENV_ID, ScriptedAudioAgent(), [0], env_kwargs=AUDIO_ONLY)  # the tool agent cannot hear either
    with pytest.raises(UserError, match="recorded by a text chat"):  # a listening teacher, recorded without the audio
        demonstrations(ENV_ID, 1, text.tokenizer, env_kwargs=AUDIO_ONLY, policy=ScriptedAudioAgent(listen=True))
    assert "Listen to the clip." in audio_only.reset(seed=0)[0][0]["content"] and "tools" not in audio_only.reset(seed=0)[0][0]["content"]


def test_listening_teacher_answers_tone_tasks_in_one_turn(policy):
    from agentenv.envs.audio.scripted import ScriptedAudioAgent

    demos = demonstrations(ENV_ID, 12, policy.chat, env_kwargs=AUDIO_ONLY, policy=ScriptedAudioAgent(listen=True))
    assert np.mean([d.success for d in demos]) >= 0.9 and all(len(d.turns) == 1 for d in demos)
    assert all(d.samples[0].inputs for d in demos)  # recorded with the audio the student will hear


def test_save_and_load_round_trip_without_network(policy, episodes, tmp_path):
    policy.save_pretrained(tmp_path)
    loaded = AudioLMPolicy(str(tmp_path))
    sample = episodes[0].samples[0]
    assert loaded.chat.prompt_and_inputs(episodes[0].messages[:2])[0] == sample.token_ids[: sample.prompt_len]
    assert torch.allclose(manual_logprobs(loaded.model, sample), manual_logprobs(policy.model, sample), atol=1e-6)


@pytest.mark.skipif(not speech_available() and not SPEECH_REQUIRED, reason="espeak-ng is not installed (apt-get install -y espeak-ng)")
def test_the_audio_policy_hears_spoken_tasks_whole(policy):
    episodes = collect(ENV_ID, policy, [0, 1, 2], env_kwargs=dict(kinds=["syllogism", "spoken_rule"], tools=[], max_turns=1),
                       max_seq_len=1024)
    for episode in episodes:
        clip = episode.messages[1]["audio"]["array"]
        (sample,) = episode.samples
        assert len(sample.inputs) == int(np.ceil(clip.size / policy.chat.chunk_samples))  # 4 s windows, nothing cut
        assert sum(int(x["feature_attention_mask"].sum()) for x in sample.inputs) >= clip.size // 160


def test_agentenv_train_on_audio_reasoning(tmp_path):
    from agentenv.learn.train import load_config, train

    cfg = load_config(AUDIO_CONFIG, ["--steps=1", "--sft_steps=1", "--sft_episodes=4", "--tasks_per_step=2",
                                             "--group_size=2", "--eval_tasks=2", "--max_new_tokens=8", f"--out_dir={tmp_path}"])
    lines = []
    summary = train(cfg, log=lines.append)
    assert summary["input_path"] == "audio input" and summary["success_after"] is not None
    assert any("reaches the policy by: audio input" in line for line in lines)
    assert json.loads((tmp_path / "eval.json").read_text())["input_path"] == "audio input"
    with pytest.raises(UserError, match="audio-only"):  # the text model on the same audio-only config
        train(load_config(AUDIO_CONFIG, ["--model=tiny", f"--out_dir={tmp_path / 'text'}"]), log=lines.append)


def test_embedder_and_vllm_checkpoint_match_the_model(policy, episodes, tmp_path):
    """What VLLMPolicy feeds vLLM: `AudioEmbedder` gives the embeddings the model's own forward scatters into the
    placeholders, and `save_for_vllm` writes the published names (no transformers-5 `model.` prefix, never the
    `language_model.model.model.` its save_pretrained writes) with the head tying as the model has it."""
    import json

    from safetensors import safe_open

    from agentenv.policies.audio_lm import AudioEmbedder, save_for_vllm

    sample = episodes[0].samples[0]
    captured = []
    hook = policy.model.model.multi_modal_projector.register_forward_hook(lambda m, i, out: captured.append(out))
    try:
        manual_logprobs(policy.model, sample)
    finally:
        hook.remove()
    embedded = AudioEmbedder(policy.model)(sample.inputs)
    assert [e.shape[0] for e in embedded] == [policy.chat.audio_tokens(x) for x in sample.inputs]
    for row, e in enumerate(embedded):
        torch.testing.assert_close(e, captured[0][row, : e.shape[0]], rtol=0, atol=1e-6)
    save_for_vllm(policy.model, policy.processor, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert {"language_model.model.embed_tokens.weight", "language_model.lm_head.weight", "audio_tower.conv1.weight",
            "multi_modal_projector.linear.weight"} <= names
    assert not any(n.startswith("model.") or ".model.model." in n for n in names)
    config = json.loads((tmp_path / "config.json").read_text())
    tied = policy.model.lm_head.weight.data_ptr() == policy.model.get_input_embeddings().weight.data_ptr()
    assert config["text_config"]["tie_word_embeddings"] is tied and config["architectures"] == ["Qwen2AudioForConditionalGeneration"]
