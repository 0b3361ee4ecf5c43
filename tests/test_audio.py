"""AudioReasoning-v0: the env contract, labels checked independently of the generators, the audio tools, the
corrected SoundMind reward, the ALR loader and reference agents (an audio-language policy trained on it by the
learner: tests/test_audio_lm.py)."""

import itertools
import json
import os
import re
import wave
from collections import Counter

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view

import agentenv
from agentenv.envs.audio import analysis, logic
from agentenv.envs.audio.reward import RewardWeights, check_format, read_typed_answer, parse_nli_label, score_response
from agentenv.envs.audio.scripted import ChanceAgent, ScriptedAudioAgent
from agentenv.envs.audio.signals import SAMPLE_RATE, Tone, read_wav, render_tones, resample, wav_to_array, write_wav
from agentenv.envs.audio.speech import Voice, speak, speech_available
from agentenv.envs.audio.tasks import LEVELS, TONE_KINDS, Difficulty, generate_task
from agentenv.runner import run_episodes

ENV_ID = "agentenv/AudioReasoning-v0"
INFO_KEYS = {"turn", "tools", "tool_calls", "tool_results", "error", "pending", "delay_call_rate"}
# CI installs espeak-ng and sets AGENTENV_REQUIRE_SPEECH=1 (.ci/run): there a missing binary fails these tests
# instead of skipping them, so the spoken task kinds are always generated and checked in CI.
SPEECH_REQUIRED = bool(os.environ.get("AGENTENV_REQUIRE_SPEECH"))
needs_speech = pytest.mark.skipif(not speech_available() and not SPEECH_REQUIRED,
                                  reason="espeak-ng is not installed (apt-get install -y espeak-ng)")


def call(name, **arguments):
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def make(**kwargs):
    kwargs.setdefault("kinds", TONE_KINDS)
    return gym.make(ENV_ID, **kwargs)


# -- an analyser independent of the generators' bookkeeping and of the tools -----------------------------
# Short-time spectra (32 ms Hann, 8 ms hop, zero-padded to 4096): a frame is active when its strongest bin
# stands 15 dB above that of the quietest frames; a segment is a run of ≥ 3 active frames, its pitch the
# median of the per-frame peak frequencies. (The tools use an energy envelope and one FFT per event.)

WIN, HOP, NFFT = 512, 128, 4096


def stft_segments(x, sr=SAMPLE_RATE):
    frames = sliding_window_view(np.pad(x, (0, WIN)), WIN)[::HOP] * np.hanning(WIN)
    mag = np.abs(np.fft.rfft(frames, NFFT))
    peak_bin = mag.argmax(axis=1)
    peak = mag.max(axis=1) ** 2
    threshold = max(np.percentile(peak, 5) * 10**1.5, peak.max() * 1e-4)
    active = np.concatenate([[False], peak > threshold, [False]])
    edges = np.flatnonzero(np.diff(active.astype(int)))
    segments = []
    for start, end in zip(edges[::2], edges[1::2]):
        if end - start >= 3:
            hz = float(np.median(peak_bin[start:end])) * sr / NFFT
            segments.append({"start": start * HOP / sr, "end": end * HOP / sr, "hz": hz})
    return segments


def recompute(kind, question, segments):
    """The answer to a tone task from the segments alone (open-format value)."""
    hz = [s["hz"] for s in segments]
    if kind == "count":
        return sum(f > 600 for f in hz)
    if kind == "compare":
        assert len(hz) == 2
        return "higher" if hz[1] > hz[0] else "lower"
    if kind == "highest":
        return int(np.argmax(hz)) + 1
    if kind == "longest":
        return int(np.argmax([s["end"] - s["start"] for s in segments])) + 1
    if kind == "rhythm":  # the generator's pauses between groups are ≥ 0.45 s, gaps inside a group ≤ 0.25 s
        sizes = [1]
        for a, b in zip(segments, segments[1:]):
            if b["start"] - a["end"] > 0.35:
                sizes.append(1)
            else:
                sizes[-1] += 1
        return tuple(sizes)
    if kind == "arithmetic":
        low, high = sum(f < 600 for f in hz), sum(f > 600 for f in hz)
        expression = re.search(r"(L \+ H|L \* H|\|L - H\|)", question).group(1)
        return {"L + H": low + high, "L * H": low * high, "|L - H|": abs(low - high)}[expression]
    raise AssertionError(kind)


def as_text(value):
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def claimed_value(question):
    """The value an nli claim states, in `recompute`'s types."""
    claim = re.search(r"Claim: (.*?) Is the claim entailed", question).group(1)
    if "groups of" in claim:
        return tuple(int(v) for v in re.findall(r"\d+", claim))
    word = re.search(r"\b(higher|lower)\b", claim)
    return word.group(1) if word else int(re.findall(r"\d+", claim)[-1])


# -- categorical and propositional model checking (independent of logic.py's form tables) -------------------

_CAT = [("some_not", r"Some (.+) are not (.+)\."), ("all", r"All (.+) are (.+)\."), ("no", r"No (.+) are (.+)\."),
        ("some", r"Some (.+) are (.+)\.")]
_NEGATE = {"all": "some_not", "some_not": "all", "no": "some", "some": "no"}
_CLAUSE = r"(the \w+) is (not )?(\w+)"


def parse_categorical(sentence):
    for quantifier, pattern in _CAT:
        m = re.fullmatch(pattern, sentence)
        if m:
            return quantifier, m.group(1), m.group(2)
    return None


def categorical_entails(premises, conclusion):
    """Venn-region model checking: premises ⊨ c iff premises ∧ ¬c has no model (regions free per term set)."""
    statements = premises + [(_NEGATE[conclusion[0]],) + conclusion[1:]]
    terms = sorted({t for _, a, b in statements for t in (a, b)})
    index = {t: i for i, t in enumerate(terms)}
    regions = range(1 << len(terms))

    def has(region, term):
        return bool(region >> index[term] & 1)

    empty = set()
    for q, a, b in statements:
        if q == "all":
            empty |= {r for r in regions if has(r, a) and not has(r, b)}
        if q == "no":
            empty |= {r for r in regions if has(r, a) and has(r, b)}
    for q, a, b in statements:
        if q == "some" and not any(has(r, a) and has(r, b) for r in regions if r not in empty):
            return True
        if q == "some_not" and not any(has(r, a) and not has(r, b) for r in regions if r not in empty):
            return True
    return False


def parse_proposition(sentence):
    def clause(text):
        m = re.fullmatch(_CLAUSE, text.strip())
        return (m.group(1), m.group(3)), m.group(2) is None

    s = sentence[0].lower() + sentence[1:].rstrip(".")
    if m := re.fullmatch(r"if (.+), then (.+)", s):
        return "if", clause(m.group(1)), clause(m.group(2))
    if m := re.fullmatch(r"either (.+) or (.+), or both", s):
        return "or", clause(m.group(1)), clause(m.group(2))
    return "lit", clause(s)


def propositional_entails(premises, conclusion):
    atoms = sorted({lit[0] for s in premises + [conclusion] for lit in s[1:]})

    def holds(statement, world):
        values = [world[a] == positive for a, positive in statement[1:]]
        return {"lit": lambda: values[0], "if": lambda: (not values[0]) or values[1], "or": lambda: values[0] or values[1]}[statement[0]]()

    for bits in itertools.product([False, True], repeat=len(atoms)):
        world = dict(zip(atoms, bits))
        if all(holds(p, world) for p in premises) and not holds(conclusion, world):
            return False
    return True


def model_check(premise_sentences, conclusion_sentence):
    if parse_categorical(conclusion_sentence):
        return categorical_entails([parse_categorical(s) for s in premise_sentences], parse_categorical(conclusion_sentence))
    return propositional_entails([parse_proposition(s) for s in premise_sentences], parse_proposition(conclusion_sentence))


def split_sentences(transcript):
    return [s.strip() + "." for s in transcript.split(".") if s.strip()]


# -- the Gymnasium contract ---------------------------------------------------------------------------------


def test_registered():
    assert ENV_ID in agentenv.list_envs()


@pytest.mark.parametrize("answer_format", ["nli", "open"])
@pytest.mark.parametrize("execution", ["immediate", "delayed"])
def test_check_env_passes(answer_format, execution):
    check_env(make(answer_format=answer_format, execution=execution, difficulty=None).unwrapped)


@needs_speech
def test_check_env_passes_with_speech_kinds():
    check_env(gym.make(ENV_ID, kinds=["syllogism", "spoken_rule"]).unwrapped)


def test_observation_carries_the_waveform_and_the_contract_keys():
    env = make()
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs) and INFO_KEYS <= info.keys()
    assert [m["role"] for m in obs] == ["system", "user"]
    audio = obs[1]["audio"]
    assert audio["sampling_rate"] == 16_000 and audio["array"].dtype == np.float32 and audio["array"].ndim == 1
    assert np.abs(audio["array"]).max() <= 1.0 and obs[1]["content"].startswith("[audio clip: ")
    assert not audio["array"].flags.writeable  # the tools read the same array
    assert {s["function"]["name"] for s in info["tools"]} == {"spectrum", "pitch_track", "count_onsets", "loudness"}


def test_reset_is_reproducible_byte_for_byte():
    env = make(difficulty=None)
    first, _ = env.reset(seed=11)
    env.reset(seed=12)
    again, _ = make(difficulty=None).reset(seed=11)
    assert again[1]["content"] == first[1]["content"]
    assert again[1]["audio"]["array"].tobytes() == first[1]["audio"]["array"].tobytes()
    other, _ = env.reset(seed=12)
    assert other[1]["audio"]["array"].tobytes() != first[1]["audio"]["array"].tobytes()
    seeded, _ = make(difficulty=None, seed=11).reset()
    assert seeded[1]["audio"]["array"].tobytes() == first[1]["audio"]["array"].tobytes()


def test_user_errors_get_messages_that_say_what_to_do():
    with pytest.raises(ValueError, match="choose from"):
        gym.make(ENV_ID, kinds=["telepathy"])
    with pytest.raises(ValueError, match="answer_format"):
        make(answer_format="essay")
    with pytest.raises(ValueError, match="difficulty"):
        make(difficulty=7)
    with pytest.raises(ValueError, match="unknown difficulty fields"):
        make(difficulty={"loudness": 3})
    with pytest.raises(ValueError, match="max_tones"):
        Difficulty(max_tones=1)


def test_difficulty_knobs_change_the_clips():
    rng = np.random.default_rng(0)
    floors = {}
    for level in (1, 3):
        clips = [generate_task(rng, "count", LEVELS[level], "open") for _ in range(20)]
        floors[level] = np.mean([analysis.loudness(t.audio, SAMPLE_RATE)["noise_floor_dbfs"] for t in clips])
        assert all(sum(t.role == "distractor" for t in task.tones) == LEVELS[level].distractors for task in clips)
    assert floors[3] > floors[1] + 15  # 30 dB -> 10 dB SNR
    custom = Difficulty(snr_db=None, max_tones=12, min_gap_s=0.5)
    tasks = [generate_task(rng, "count", custom, "open") for _ in range(30)]
    assert max(int(t.label) for t in tasks) > 8
    assert all(b.start - a.end >= 0.5 - 1e-3 for t in tasks for a, b in zip(t.tones, t.tones[1:]))
    assert all(np.all(np.abs(t.audio[: int(0.19 * SAMPLE_RATE)]) == 0) for t in tasks)  # clean: no noise at all


# -- labels, recomputed independently -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", TONE_KINDS)
def test_tone_labels_match_an_independent_analysis_of_the_waveform(kind):
    rng = np.random.default_rng(100)
    for i in range(24):
        level = LEVELS[1 + i % 3]
        answer_format = "open" if i % 2 else "nli"
        task = generate_task(rng, kind, level, answer_format)
        segments = stft_segments(task.audio)
        assert len(segments) == len(task.tones), (kind, i, segments)
        truth = recompute(kind, task.question, segments)
        if answer_format == "open":
            assert task.label == as_text(truth), (kind, i)
        else:
            assert task.label == ("entailed" if claimed_value(task.question) == truth else "not-entailed"), (kind, i)


def test_generated_arguments_are_labelled_right_by_model_checking():
    rng = np.random.default_rng(7)
    arguments = [logic.draw_argument(rng, distractors=i % 3) for i in range(600)]
    for a in arguments:
        assert model_check(list(a.premises), a.conclusion) == a.entailed, a
    assert 0.45 < np.mean([a.entailed for a in arguments]) < 0.55
    assert {a.form for a in arguments} == {f for table in logic.FORMS.values() for side in table.values() for f in side}


def test_nli_labels_are_balanced_and_the_text_alone_does_not_predict_them():
    """A naive Bayes classifier on the question text (claims, conclusions) stays at chance on held-out items."""
    rng = np.random.default_rng(5)
    items = [(t.question, t.label) for t in (generate_task(rng, TONE_KINDS[i % 6], LEVELS[1 + i % 3]) for i in range(1500))]
    items += [(a.conclusion, "entailed" if a.entailed else "not-entailed") for a in (logic.draw_argument(rng) for _ in range(500))]
    order = rng.permutation(len(items))
    items = [items[i] for i in order]
    assert 0.45 < np.mean([label == "entailed" for _, label in items]) < 0.55

    def words(text):
        return re.findall(r"[a-z]+|\d+", text.lower())

    train, test = items[:1500], items[1500:]
    counts = {label: Counter() for label in ("entailed", "not-entailed")}
    priors = Counter(label for _, label in train)
    for text, label in train:
        counts[label].update(words(text))
    vocab = set(counts["entailed"]) | set(counts["not-entailed"])

    def predict(text):
        def score(label):
            total = sum(counts[label].values()) + len(vocab)
            return np.log(priors[label]) + sum(np.log((counts[label][w] + 1) / total) for w in words(text))

        return max(counts, key=score)

    accuracy = np.mean([predict(text) == label for text, label in test])
    assert accuracy < 0.58, accuracy


@needs_speech
def test_spoken_syllogisms_are_spoken_and_labelled_right():
    rng = np.random.default_rng(1)
    for i in range(6):
        task = generate_task(rng, "syllogism", LEVELS[1 + i % 3], "nli")
        conclusion = re.search(r"Conclusion: (.*?) Is the conclusion", task.question).group(1)
        assert model_check(split_sentences(task.transcript), conclusion) == (task.label == "entailed")
        words = len(task.transcript.split())
        assert words / 300 * 60 < task.duration < words / 80 * 60 + 2.0  # -s 130-180 comes out at ~150-250 wpm
        assert analysis.loudness(task.audio, SAMPLE_RATE)["rms_dbfs"] > -40


@needs_speech
def test_spoken_rule_labels_from_transcript_and_counted_beeps():
    rng = np.random.default_rng(2)
    for i in range(6):
        task = generate_task(rng, "spoken_rule", LEVELS[1 + i % 3], "open")
        op, k = re.search(r"number of beeps (plus|times) (\d+)\.", task.transcript).groups()
        segments = stft_segments(task.audio)
        # the beeps follow the speech after a pause of ≥ 0.4 s; gaps between beeps are < 0.36 s
        last_pause = max(j for j in range(1, len(segments)) if segments[j]["start"] - segments[j - 1]["end"] > 0.38)
        beeps = segments[last_pause:]
        assert all(800 * 0.95 < s["hz"] < 1600 * 1.05 for s in beeps)
        n = len(beeps)
        assert task.label == str(n + int(k) if op == "plus" else n * int(k))


# -- signals and speech ---------------------------------------------------------------------------------------


def test_resample_keeps_duration_and_frequency():
    x = render_tones([Tone(0.0, 1.0, 1000.0, 0.5)], 1.0, sr=22_050)
    y = resample(x, 22_050, 16_000)
    assert y.size == 16_000 and y.dtype == np.float32
    assert analysis.spectrum(y, 16_000)["dominant_hz"] == pytest.approx(1000.0, abs=1.0)
    assert np.sqrt(np.mean(y[1000:-1000] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_wav_round_trip_for_every_pcm_width(tmp_path, width):
    x = render_tones([Tone(0.0, 0.5, 440.0, 0.5)], 0.5, sr=8000)
    stereo = np.stack([x, x], axis=1)
    scale = float(1 << (8 * width - 1))
    ints = np.round(stereo * (scale - 1)).astype(np.int64)
    if width == 1:
        raw = (ints + 128).astype(np.uint8).tobytes()
    else:
        raw = b"".join(int(v).to_bytes(width, "little", signed=True) for v in ints.ravel())
    path = tmp_path / f"w{width}.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(width)
        w.setframerate(8000)
        w.writeframes(raw)
    y, rate = read_wav(path)
    assert rate == 8000 and y.size == x.size
    assert np.abs(y - x).max() < 2.0 / 128 if width == 1 else np.abs(y - x).max() < 1e-3
    assert wav_to_array(path).size == 2 * x.size  # 8 kHz -> 16 kHz
    write_wav(tmp_path / "out.wav", x, 8000)
    assert np.abs(read_wav(tmp_path / "out.wav")[0] - x).max() < 1e-4


@needs_speech
def test_speech_is_16k_and_deterministic():
    a = speak("Some pilots are poets.", Voice("en+f3", 150, 40))
    b = speak("Some pilots are poets.", Voice("en+f3", 150, 40))
    assert a.dtype == np.float32 and np.array_equal(a, b) and abs(np.abs(a).max() - 0.5) < 1e-6
    assert 0.8 < a.size / SAMPLE_RATE < 4.0
    slow = speak("Some pilots are poets.", Voice("en+f3", 100, 40))
    assert slow.size > a.size * 1.2


# -- tools ---------------------------------------------------------------------------------------------------


def test_analysis_on_known_signals():
    tones = [Tone(0.2, 0.4, 440.0, 0.4), Tone(0.55, 0.7, 1320.0, 0.3, "square"), Tone(0.9, 1.3, 220.0, 0.5)]
    x = render_tones(tones, 1.5)
    onsets = analysis.onsets(x, SAMPLE_RATE)
    assert onsets["count"] == 3
    for event, tone in zip(onsets["events"], tones):
        assert event["start"] == pytest.approx(tone.start, abs=0.015) and event["end"] == pytest.approx(tone.end, abs=0.015)
    assert [analysis.spectrum(x, SAMPLE_RATE, t.start, t.end)["dominant_hz"] for t in tones] == pytest.approx([440, 1320, 220], abs=2)
    track = analysis.pitch_track(x, SAMPLE_RATE)
    assert [s["hz"] for s in track["segments"]] == pytest.approx([440, 1320, 220], rel=0.01)
    level = analysis.loudness(render_tones([Tone(0.0, 1.0, 500.0, 0.5)], 1.0), SAMPLE_RATE)
    assert level["rms_dbfs"] == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.3)
    assert level["peak_dbfs"] == pytest.approx(20 * np.log10(0.5), abs=0.1)
    silence = np.zeros(SAMPLE_RATE, dtype=np.float32)
    assert analysis.onsets(silence, SAMPLE_RATE)["count"] == 0 and analysis.pitch_track(silence, SAMPLE_RATE)["count"] == 0


def test_tools_are_bound_to_the_episode_and_errors_are_observations():
    env = make(kinds=["count"], answer_format="open")
    counts = []
    for seed in (0, 1):
        env.reset(seed=seed)
        _, _, _, _, info = env.step(call("count_onsets"))
        counts.append(json.loads(info["tool_results"][0]["content"])["count"])
        assert counts[-1] == len(env.unwrapped.task.tones)
    assert counts[0] != counts[1]
    env.reset(seed=0)
    _, _, terminated, _, info = env.step(call("spectrum", start=2.0, end=1.0) + call("spectrum", start="x") + call("loudness"))
    results = info["tool_results"]
    assert not terminated and [r["ok"] for r in results] == [False, False, True]
    assert "start < end" in results[0]["error"] and "must be number" in results[1]["error"]


def test_user_tools_sit_beside_the_audio_tools():
    @agentenv.tool
    def double(x: int) -> int:
        """Twice x."""
        return 2 * x

    env = make(tools=["count_onsets", double])
    _, info = env.reset(seed=0)
    assert [s["function"]["name"] for s in info["tools"]] == ["count_onsets", "double"]
    _, _, _, _, info = env.step(call("double", x=4))
    assert info["tool_results"][0]["content"] == "8"


actions = st.one_of(
    st.text(max_size=200),
    st.builds(lambda name, args: call(name, **args),
              st.sampled_from(["spectrum", "pitch_track", "count_onsets", "loudness", "nope"]),
              st.dictionaries(st.sampled_from(["start", "end", "x"]),
                              st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**9, 10**9), st.text(max_size=5)),
                              max_size=3)),
    st.builds(lambda a, b: f"<think>{a}</think><answer>{b}</answer>", st.text(max_size=30), st.text(max_size=30)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
@given(action=actions)
def test_step_never_raises(action):
    env = _fuzz_env()
    obs, reward, terminated, truncated, info = env.step(action)
    assert env.observation_space.contains(obs) and isinstance(reward, float) and INFO_KEYS <= info.keys()
    if terminated or truncated:
        env.reset()


_FUZZ = []


def _fuzz_env():
    if not _FUZZ:
        _FUZZ.append(make(difficulty=None, max_turns=4))
        _FUZZ[0].reset(seed=0)
    return _FUZZ[0]


# -- reward: SoundMind's structure, its bugs fixed ------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("not-entailed", "not-entailed"), ("not entailed", "not-entailed"), ("Not Entailed", "not-entailed"),
    ("NOT_ENTAILED", "not-entailed"), ("  not-entailed \n", "not-entailed"), ("non-entailment", "not-entailed"),
    ("The conclusion is not entailed.", "not-entailed"), ("It doesn't entail it", "not-entailed"),
    ("entailed", "entailed"), ("Entailed.", "entailed"), (" ENTAILED\n", "entailed"),
    ("entailed or not entailed", None), ("not entailed, entailed", None), ("yes", None), ("", None),
])
def test_nli_parser_checks_negation_first(text, expected):
    # SoundMind's parse_model_answer tested "'entailed' in s" first, so every "not entailed" came out entailed
    assert parse_nli_label(text) == expected


def test_not_entailed_answer_is_not_rewarded_as_entailed():
    wrong = score_response("<think>The premises leave it open.</think><answer>not entailed</answer>", "entailed")
    right = score_response("<think>The premises leave it open.</think><answer>not entailed</answer>", "not-entailed")
    assert wrong.components["answer"] == 0.0 and not wrong.success
    assert right.components["answer"] == 1.0 and right.success


def test_format_term_fires_on_well_formed_turns():
    # SoundMind looked for "answer:" in the last 5 characters, so its format term never fired
    score = score_response("<think>two beeps, then three</think>\n<answer>entailed</answer>", "entailed", ref_words=4)
    assert score.components == {"format": 1.0, "answer": 1.0, "length": 1.0}
    assert score.reward == pytest.approx(1.0 + 2.0 + 1.0)


@pytest.mark.parametrize("text", [
    "<answer>entailed</answer>",                                     # no think block
    "<think>a</think>",                                              # no answer
    "<think>a</think><answer>entailed",                              # unclosed answer
    "<think>a<answer>entailed</answer>",                             # unclosed think
    "<answer>entailed</answer><think>a</think>",                     # wrong order
    "<think>a</think><think>b</think><answer>entailed</answer>",     # duplicate think
    "<think>a</think><answer>entailed</answer><answer>x</answer>",   # duplicate answer
    "<think>a</think><answer>entailed</answer> trailing words",      # text outside the tags
    "<think> </think><answer>entailed</answer>",                     # empty think
    "<think>a</think><answer> </answer>",                            # empty answer
    "<THINK>a</THINK><ANSWER>entailed</ANSWER>",                     # tags are lower case
])
def test_broken_formats_get_no_format_credit(text):
    assert check_format(text) == (False, "")
    assert score_response(text, "entailed").components["format"] == 0.0
    assert score_response(text, "entailed").components["length"] == 0.0


def test_answer_must_be_inside_the_answer_tags():
    assert score_response("entailed", "entailed").components["answer"] == 0.0
    assert score_response("<think>entailed</think><answer>not-entailed</answer>", "entailed").components["answer"] == 0.0
    # the last answer counts (as the env parses it), but two answers break the format: right, yet unpaid as in
    # SoundMind (the answer term needs a valid structure) unless answer_needs_format=False
    text = "<answer>not-entailed</answer><answer>entailed</answer>"
    score = score_response(text, "entailed")
    assert score.success and score.components == {"format": 0.0, "answer": 0.0, "length": 0.0} and score.reward == 0.0
    lenient = score_response(text, "entailed", weights=RewardWeights(answer_needs_format=False))
    assert lenient.success and lenient.components["answer"] == 1.0 and lenient.reward == pytest.approx(2.0)


def test_require_think_false_accepts_bare_answers_and_weights_apply():
    weights = RewardWeights(format=0.5, answer=1.0, length=0.0)
    score = score_response("<answer>3</answer>", "3", "int", weights=weights, require_think=False)
    assert score.components["format"] == 1.0 and score.reward == pytest.approx(1.5)
    assert check_format("<think>x</think><answer>3</answer>", require_think=False) == (True, "x")
    assert check_format("<think>x<answer>3</answer>", require_think=False)[0] is False


def test_length_term_is_capped_at_the_reference():
    text = "<think>" + " ".join(["word"] * 30) + "</think><answer>entailed</answer>"
    assert score_response(text, "entailed", ref_words=60).components["length"] == pytest.approx(0.5)
    assert score_response(text, "entailed", ref_words=10).components["length"] == 1.0


@pytest.mark.parametrize("answer, answer_type, expected", [
    ("3", "int", "3"), ("three", "int", "3"), ("the 3rd tone", "int", "3"), ("the third one", "int", "3"),
    ("There are 4 beeps.", "int", "4"), ("3 or 4", "int", None), ("2.5", "int", "2.5"), ("none", "int", None),
    ("2 3 1", "int_list", "2 3 1"), ("groups of 2, 3 and 1", "int_list", "2 3 1"), ("two, one", "int_list", "2 1"),
    ("Higher", "choice", "higher"), ("it is lower.", "choice", "lower"), ("higher or lower", "choice", None),
])
def test_open_answers_are_normalised(answer, answer_type, expected):
    assert read_typed_answer(answer, answer_type, ("higher", "lower")) == expected


def test_env_reward_components_and_success():
    env = make(kinds=["compare"], answer_format="open")
    env.reset(seed=0)
    label = env.unwrapped.task.label
    _, reward, terminated, _, info = env.step(f"<think>I compared the two tones.</think><answer>{label.upper()}</answer>")
    assert terminated and info["reward_components"]["success"] == 1.0
    assert info["reward_components"]["format"] == 1.0 and info["reward_components"]["answer"] == 1.0
    assert reward == pytest.approx(3.0 + 5 / 50)  # format + 2·answer + 5 think words of 50
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step(r"\boxed{" + label + "}")  # the env's other answer form: right, no format
    assert terminated and info["reward_components"] == {"format": 0.0, "answer": 0.0, "length": 0.0, "success": 1.0}
    assert reward == 0.0


# -- ALR layout -------------------------------------------------------------------------------------------


def _alr_dir(tmp_path, with_metadata):
    root = tmp_path / ("meta" if with_metadata else "items") / "test"
    rows = [
        {"id": "a1", "label": 1, "annotation_question": "All A are B. All B are C. Are all A C?",
         "annotation_answer": "Since every A is B and every B is C ... Answer: entailed"},
        {"id": "a2", "label": 0, "annotation_question": "Some A are B. Some B are C. Are some A C?",
         "annotation_answer": "The middle term is undistributed, so it is not entailed. Answer: not entailed"},
    ]
    for row, hz in zip(rows, (300.0, 900.0)):
        folder = root / row["id"]
        folder.mkdir(parents=True)
        write_wav(folder / "question.wav", render_tones([Tone(0.1, 0.6, hz, 0.4)], 1.0, sr=22_050), 22_050)
        write_wav(folder / f"answer_{row['label']}.wav", np.zeros(100, dtype=np.float32), 22_050)
        row.update(question_file_name=f"{row['id']}/question.wav", answer_file_name=f"{row['id']}/answer_{row['label']}.wav")
        if not with_metadata:
            (folder / "annotation.json").write_text(json.dumps({k: v for k, v in row.items() if k != "label"}))
    if with_metadata:
        (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return root.parent


@pytest.mark.parametrize("with_metadata", [True, False])
def test_alr_loader_reads_the_real_layout(tmp_path, with_metadata):
    root = _alr_dir(tmp_path, with_metadata)
    from agentenv.envs.audio.alr import load_alr

    tasks = load_alr(root, split="test")
    # label 0's reference says "not entailed", which contains "entailed": the label comes from the field/file
    assert [t.label for t in tasks] == ["entailed", "not-entailed"]
    assert all(t.audio.size == SAMPLE_RATE and t.answer_type == "nli" for t in tasks)
    assert tasks[1].ref_words == len("The middle term is undistributed, so it is not entailed. Answer: not entailed".split())
    assert analysis.spectrum(tasks[1].audio, SAMPLE_RATE, 0.1, 0.6)["dominant_hz"] == pytest.approx(900.0, abs=2)

    env = gym.make(ENV_ID, tasks=root / "test")
    obs, _ = env.reset(seed=0, options={"task_index": 1})
    assert np.array_equal(obs[1]["audio"]["array"], tasks[1].audio)
    _, reward, terminated, _, info = env.step("<think>The middle term is undistributed.</think><answer>Not Entailed</answer>")
    assert terminated and info["reward_components"]["success"] == 1.0


def test_alr_loader_errors_say_what_is_missing(tmp_path):
    from agentenv.envs.audio.alr import load_alr

    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_alr(tmp_path / "nope")
    (tmp_path / "x1").mkdir()
    with pytest.raises(FileNotFoundError, match="question.wav"):
        load_alr(tmp_path)


# -- reference agents -------------------------------------------------------------------------------------


@pytest.mark.parametrize("answer_format", ["nli", "open"])
def test_scripted_tool_agent_solves_tone_tasks(answer_format):
    logs = list(run_episodes(ENV_ID, ScriptedAudioAgent(), 240, seed=500, batch_size=24,
                             env_kwargs={"kinds": TONE_KINDS, "difficulty": None, "answer_format": answer_format}))
    accuracy = np.mean([log.success for log in logs])
    assert accuracy >= 0.95, accuracy
    assert min(log.tool_calls for log in logs) >= 1  # it worked from tool outputs


def test_scripted_agent_in_delayed_mode():
    logs = list(run_episodes(ENV_ID, ScriptedAudioAgent(), 24, seed=0, batch_size=24,
                             env_kwargs={"kinds": ["count", "highest"], "execution": "delayed"}))
    assert np.mean([log.success for log in logs]) >= 0.95


def test_chance_agent_is_at_chance_on_binary_tasks():
    logs = list(run_episodes(ENV_ID, ChanceAgent(seed=0), 600, seed=0, batch_size=50,
                             env_kwargs={"kinds": TONE_KINDS, "difficulty": None}))
    assert 0.44 < np.mean([log.success for log in logs]) < 0.56
