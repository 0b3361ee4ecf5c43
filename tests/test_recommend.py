"""Recommend-v0: the env contract, its tools, each RecRM-style scorer on planted faults, the hybrid reward,
the learned scorers' held-out quality, the baseline ranking, the data layout and the MovieLens loader."""

import json

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agentenv
from agentenv.envs.recommend import train as training
from agentenv.envs.recommend.answer import format_recommendation, parse_recommendation
from agentenv.envs.recommend.baselines import BASELINES, ConstraintAwareRecommender
from agentenv.envs.recommend.catalog import GENRES, generate_catalog
from agentenv.envs.recommend.data import read_dataset, synthesize, write_dataset
from agentenv.envs.recommend.hybrid import HybridReward
from agentenv.envs.recommend.models import N_CLICK_FEATURES
from agentenv.envs.recommend.movielens import load_movielens
from agentenv.envs.recommend.requests import check_item, is_relevant
from agentenv.envs.recommend.scorers import DimensionScore, register_scorer
from agentenv.envs.recommend.users import click_probabilities
from agentenv.runner import run_episodes

ENV_ID = "agentenv/Recommend-v0"


@pytest.fixture(scope="module", autouse=True)
def model_cache(tmp_path_factory):
    """Hermetic cache: the default learned scorers are trained once for this module, into a temp dir."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AGENTENV_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        for loader in (training.default_relevance_model, training.default_click_model):
            loader.cache_clear()
        yield
        for loader in (training.default_relevance_model, training.default_click_model):
            loader.cache_clear()


@pytest.fixture(scope="module")
def env():
    env = gym.make(ENV_ID).unwrapped
    yield env
    env.close()


def call(name, **arguments):
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def episode_with_all_constraints(env):
    """Reset to the first seed whose request states a price limit, an excluded genre and a "like" example."""
    for seed in range(100):
        env.reset(seed=seed)
        r = env.context.request
        if r.max_price is not None and r.exclude_genre is not None and r.like_item is not None and r.k >= 3:
            return env.context
    raise AssertionError("no such seed")


def entry(item, **overrides):
    return {"id": item.id, "reason": "fits", "price": item.price, "category": item.category, "title": item.title,
            "genres": list(item.genres), "rating": item.rating, **overrides}


def perfect(ctx):
    """The first k items that meet every constraint and are relevant: a correct answer by construction."""
    good = [it for it in ctx.catalog.items if is_relevant(ctx.request, it) and all(check_item(ctx.request, it, ctx.user.seen).values())]
    return good[: ctx.request.k]


def score(env, entries):
    return env.reward.score(env.context, parse_recommendation(json.dumps(entries)))


# -- the env contract ------------------------------------------------------------------------------


def test_registered_and_check_env():
    assert ENV_ID in agentenv.list_envs()
    for execution in ("immediate", "delayed"):
        check_env(gym.make(ENV_ID, execution=execution).unwrapped)


def test_reset_is_reproducible_and_states_the_request(env):
    first = json.dumps(env.reset(seed=11)[0])
    env.reset(seed=12)
    assert json.dumps(env.reset(seed=11)[0]) == first
    assert json.dumps(gym.make(ENV_ID).reset(seed=11)[0]) == first
    obs, info = env.reset(seed=11)
    assert [m["role"] for m in obs] == ["system", "user"] and env.observation_space.contains(obs)
    assert '"id"' in obs[0]["content"] and "<answer>" in obs[0]["content"]
    assert {t["function"]["name"] for t in info["tools"]} == {"search_items", "get_item", "user_history"}
    assert f"{env.context.request.k} " in obs[1]["content"]


def test_tools_serve_the_current_episode(env):
    env.reset(seed=3)
    obs, *_, info = env.step(call("user_history"))
    history = json.loads(info["tool_results"][0]["content"])
    assert [h["id"] for h in history["history"]] == [h.item_id for h in env.context.user.history]
    env.reset(seed=4)
    *_, info = env.step(call("user_history"))
    assert json.loads(info["tool_results"][0]["content"])["user_id"] == env.context.user.id != history["user_id"]
    other = gym.make(ENV_ID).unwrapped
    other.reset(seed=3)  # a second env has its own tools: resetting it leaves this env's user alone
    *_, info = env.step(call("user_history"))
    assert json.loads(info["tool_results"][0]["content"])["user_id"] == env.context.user.id


def test_search_filters_and_tool_errors():
    env = gym.make(ENV_ID, max_turns=20).unwrapped
    env.reset(seed=0)
    filters = {"category": "book", "max_price": 20, "exclude_genres": ["horror"], "min_rating": 3.5}
    *_, info = env.step(call("search_items", query="ghost", filters=filters, limit=50))
    found = json.loads(info["tool_results"][0]["content"])
    assert found["total"] == len(found["results"]) > 0
    assert all(r["category"] == "book" and r["price"] <= 20 and "horror" not in r["genres"] and r["rating"] >= 3.5
               for r in found["results"])
    by_popularity = json.loads(env.step(call("search_items", sort="popularity", limit=5))[4]["tool_results"][0]["content"])
    pops = [env.catalog.by_id[r["id"]].popularity for r in by_popularity["results"]]
    assert pops == sorted(pops, reverse=True) and by_popularity["total"] == len(env.catalog)
    item = env.catalog.items[7]
    assert json.loads(env.step(call("get_item", id=item.id))[4]["tool_results"][0]["content"]) == item.public()
    for bad, message in ((call("get_item", id="I9999"), "no item with id"),
                         (call("search_items", filters={"colour": "red"}), "unknown filter"),
                         (call("search_items", filters={"genres": ["polka"]}), "unknown genre"),
                         (call("search_items", filters={"max_price": "cheap"}), "must be a number"),
                         (call("search_items", limit=10**6), "limit must be")):
        obs, reward, terminated, _, info = env.step(bad)
        assert not info["tool_results"][0]["ok"] and message in obs[-1]["content"] and not terminated


def test_delayed_execution_queues_catalogue_calls():
    env = gym.make(ENV_ID, execution="delayed")
    env.reset(seed=0)
    _, _, _, _, info = env.step(call("user_history"))
    assert info["pending"] == 1 and info["tool_results"] == []
    _, _, _, _, info = env.step("<execute/>")
    assert info["tool_results"][0]["ok"] and info["pending"] == 0


# -- the answer format and the scorers' planted faults ----------------------------------------------


def test_answer_parser():
    good = parse_recommendation('```json\n[{"id": "I1", "reason": "r", "price": 1.5, "category": "book", "genres": ["drama"]}]\n```')
    assert good.well_formed and good.entries[0].claims == {"price": 1.5, "category": "book", "genres": ["drama"]}
    for text, message in (("[{", "not valid JSON"), ('{"id": "I1"}', "JSON array"), ("[]", "no items"),
                          ('[{"id": "I1", "reason": "r", "category": "book"}]', "no 'price'"),
                          ('[{"id": 7, "reason": "r", "price": 1, "category": "book"}]', "'id' has the wrong type"),
                          ('[{"id": "I1", "reason": "r", "price": true, "category": "book"}]', "'price' has the wrong type"),
                          ("x" * 60_000, "longer than")):
        parsed = parse_recommendation(text)
        assert not parsed.well_formed and message in parsed.errors[0], (text[:40], parsed.errors)


def test_a_correct_answer_scores_full_marks_on_the_rule_dimensions(env):
    ctx = episode_with_all_constraints(env)
    result = score(env, [entry(it) for it in perfect(ctx)])
    c = result.components
    assert (c["format"], c["if"], c["fc"]) == (1.0, 1.0, 1.0)
    assert c["hybrid"] == pytest.approx(sum(w * c[n] for n, w in env.reward.weights.items()))


def test_fc_catches_a_hallucinated_id_and_if_fails_it_too(env):
    ctx = episode_with_all_constraints(env)
    items = perfect(ctx)
    result = score(env, [entry(it) for it in items[:-1]] + [entry(items[-1], id="I9999")])
    assert result.components["fc"] < 1.0 and "I9999: no such item" in result.details["fc"]["faults"]
    assert result.components["if"] < 1.0 and any(f.startswith("I9999") for f in result.details["if"]["failed"])
    assert result.components["format"] == 1.0


@pytest.mark.parametrize("field, wrong", [("price", lambda it: it.price + 1.0), ("category", lambda it: "comic" if it.category != "comic" else "book"),
                                          ("title", lambda it: it.title + " Returns"), ("genres", lambda it: [g for g in GENRES if g not in it.genres][:1]),
                                          ("rating", lambda it: it.rating - 0.5)])
def test_fc_catches_each_wrong_attribute(env, field, wrong):
    ctx = episode_with_all_constraints(env)
    items = perfect(ctx)
    result = score(env, [entry(items[0], **{field: wrong(items[0])})] + [entry(it) for it in items[1:]])
    assert result.components["fc"] < 1.0 and result.details["fc"]["faults"][0].startswith(f"{items[0].id}: {field}")
    assert result.components["if"] == 1.0  # the item itself still meets the request


def test_if_catches_a_violated_price_limit_and_fc_does_not(env):
    ctx = episode_with_all_constraints(env)
    items = perfect(ctx)
    pricey = next(it for it in ctx.catalog.items if it.category == ctx.request.category and it.price > ctx.request.max_price
                  and ctx.request.exclude_genre not in it.genres)
    result = score(env, [entry(it) for it in items[:-1]] + [entry(pricey)])
    assert f"{pricey.id}: max_price" in result.details["if"]["failed"] and result.components["if"] < 1.0
    assert result.components["fc"] == 1.0


def test_if_catches_excluded_genre_reference_item_count_and_repeats(env):
    ctx = episode_with_all_constraints(env)
    items = perfect(ctx)
    hated = next(it for it in ctx.catalog.items if ctx.request.exclude_genre in it.genres)
    liked = ctx.catalog.by_id[ctx.request.like_item]
    failed = score(env, [entry(hated), entry(liked)] + [entry(it) for it in items[2:]]).details["if"]["failed"]
    assert f"{hated.id}: exclude_genre" in failed and f"{liked.id}: not_reference" in failed
    short = score(env, [entry(items[0])])
    assert f"asked for {ctx.request.k} items, got 1" in short.details["if"]["failed"]
    assert "repeated items" in score(env, [entry(items[0])] * ctx.request.k).details["if"]["failed"]


def test_bad_format_gates_the_reward_to_zero(env):
    items = perfect(episode_with_all_constraints(env))
    for broken in ("[not json", json.dumps([{"id": it.id, "reason": "r"} for it in items]), "[]", '"I0001"'):
        env.reset(seed=0)
        _, reward, terminated, _, info = env.step(f"<answer>{broken}</answer>")
        assert terminated and reward == 0.0 and info["reward_components"]["format"] == 0.0
        assert info["reward_components"]["success"] == 0.0


def test_learned_scorers_prefer_what_the_request_and_the_user_want(env):
    qir, ub = [], []
    for seed in range(30):
        env.reset(seed=seed)
        ctx = env.context
        good = perfect(ctx)
        off = [it for it in ctx.catalog.items if not is_relevant(ctx.request, it)][: len(good)]
        qir.append(score(env, [entry(it) for it in good]).components["qir"] - score(env, [entry(it) for it in off]).components["qir"])
        p = click_probabilities(ctx.user, ctx.catalog)
        liked = [ctx.catalog.items[i] for i in np.argsort(-p)[:5]]
        disliked = [ctx.catalog.items[i] for i in np.argsort(p)[:5]]
        ub.append(score(env, [entry(it) for it in liked]).components["ub"] - score(env, [entry(it) for it in disliked]).components["ub"])
    assert np.mean(qir) > 0.4 and np.mean(np.array(qir) > 0) >= 0.9
    assert np.mean(ub) > 0.4 and min(ub) > 0


def test_short_or_repeated_lists_do_not_pay_on_learned_dimensions(env):
    ctx = episode_with_all_constraints(env)
    best = perfect(ctx)[0]
    full = score(env, [entry(it) for it in perfect(ctx)])
    for cheat in ([entry(best)], [entry(best)] * ctx.request.k):
        gamed = score(env, cheat)
        assert gamed.components["qir"] < full.components["qir"] and gamed.components["ub"] < full.components["ub"]


def test_episode_end_reports_every_component_and_the_simulated_user(env):
    env.reset(seed=5)
    items = perfect(env.context)
    _, reward, terminated, _, info = env.step("Here you go. " + format_recommendation([entry(it) for it in items]))
    c = info["reward_components"]
    assert terminated and reward == pytest.approx(c["hybrid"]) and c["success"] == 1.0
    assert {"format", "if", "fc", "qir", "ub", "hybrid", "sim_expected_ctr", "sim_clicks", "sim_purchases"} <= c.keys()
    assert 0 <= c["sim_purchases"] <= c["sim_clicks"] <= len(items)
    assert set(env.last_score.details) == {"format", "if", "fc", "qir", "ub"}


# -- the hybrid reward is configurable and pluggable -----------------------------------------------


class Cheapness:
    """A user-defined dimension: 1 − mean price / 100."""

    name = "cheap"

    def score(self, context, recommendation):
        prices = [context.catalog.by_id[e.id].price for e in recommendation.entries if e.id in context.catalog.by_id]
        return DimensionScore(max(0.0, 1 - np.mean(prices) / 100) if prices else 0.0, {"prices": prices})


def test_custom_scorers_and_weights():
    env = gym.make(ENV_ID, scorers=["format", "if", Cheapness()], weights={"if": 1.0, "cheap": 3.0})
    env.reset(seed=5)
    items = perfect(env.unwrapped.context)
    _, reward, *_, info = env.step(format_recommendation([entry(it) for it in items]))
    c = info["reward_components"]
    assert set(c) >= {"format", "if", "cheap", "hybrid"} and "qir" not in c
    assert reward == pytest.approx(c["format"] * (0.25 * c["if"] + 0.75 * c["cheap"]))
    register_scorer("cheap", Cheapness)
    assert gym.make(ENV_ID, scorers=["if", "cheap"], gate=None, weights={"if": 1, "cheap": 1}).unwrapped.reward.weights == {"if": 0.5, "cheap": 0.5}
    with pytest.raises(ValueError, match="missing"):
        HybridReward(["format", "if", Cheapness()])
    with pytest.raises(ValueError, match="gate"):
        HybridReward(["if"], gate="format")
    with pytest.raises(ValueError, match="unknown scorer"):
        HybridReward(["format", "vibes"])


# -- fuzzing: nothing an agent writes makes step raise ------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=10**300) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
answer_entries = st.lists(st.fixed_dictionaries(
    {"id": st.sampled_from(["I0001", "I9999", ""]) | st.text(max_size=5)},
    optional={"reason": json_values, "price": json_values, "category": json_values, "genres": json_values, "rating": json_values,
              "title": json_values}), max_size=25)


@st.composite
def tool_calls(draw):
    name = draw(st.sampled_from(["search_items", "get_item", "user_history", "nope"]))
    arguments = draw(st.sampled_from([{"filters": {"max_price": "x"}}, {"limit": 10**30}, {"offset": -(10**30)}, {"offset": 10**30},
                                      {"filters": {"genres": 5}}, {"id": None}, {"query": "ghost " * 5000}]) | json_values)
    body = json.dumps({"name": name, "arguments": arguments}) if draw(st.booleans()) else draw(st.text(max_size=40))
    return f"<tool_call>{body}{draw(st.sampled_from(['</tool_call>', '']))}"


actions = st.one_of(
    st.text(max_size=300),
    tool_calls(),
    st.lists(tool_calls(), min_size=2, max_size=6).map("".join),
    answer_entries.map(lambda e: f"<answer>{json.dumps(e)}</answer>"),
    json_values.map(lambda v: f"<answer>{json.dumps(v)}</answer>"),
    st.text(max_size=80).map(lambda t: f"<answer>[{{\"id\": {t}</answer>"),
    st.integers(1, 1 << 21).map(lambda n: "<answer>[" * (n // 9)),
    st.integers(1, 1 << 21).map(lambda n: "[" * n),
)


@settings(max_examples=int(__import__("os").environ.get("FUZZ_EXAMPLES", 400)), deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck), database=None)
@given(action=actions)
def test_step_never_raises(env, action):
    if env._done or env._messages is None:
        env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(action)
    assert env.observation_space.contains(obs) and isinstance(reward, float) and 0.0 <= reward <= 1.0
    assert {"turn", "tools", "tool_calls", "tool_results", "error"} <= info.keys()


# -- learned scorers: held-out quality; baselines: ranking -----------------------------------------


def test_behaviour_model_auc_on_held_out_users():
    _, held_out = training.default_datasets()
    metrics = training.evaluate_click_model(training.default_click_model(), held_out)
    assert metrics["users"] == 200 and metrics["click_auc"] >= 0.80, metrics


def test_relevance_model_beats_lexical_overlap_on_held_out_pairs():
    _, held_out = training.default_datasets()
    metrics = training.evaluate_relevance(training.default_relevance_model(), held_out.relevance)
    assert metrics["auc"] >= 0.9 and metrics["auc"] > metrics["lexical_auc"] + 0.2, metrics


def test_default_models_are_cached_and_reload_identically():
    model = training.default_click_model()
    files = sorted(p.name for p in training.cache_dir().glob("*.pt"))
    assert any(f.startswith("behaviour-") for f in files) and any(f.startswith("relevance-") for f in files)
    training.default_click_model.cache_clear()
    reloaded = training.default_click_model()
    x = np.random.default_rng(0).normal(size=(4, N_CLICK_FEATURES)).astype(np.float32)
    assert reloaded is not model and np.array_equal(reloaded.probabilities(x), model.probabilities(x))


def test_hybrid_reward_ranks_the_baselines():
    rewards = {name: np.array([log.reward for log in run_episodes(ENV_ID, policy(), 200, seed=0, batch_size=1)])
               for name, policy in BASELINES.items()}
    aware, popular, rand = rewards["constraint-aware"], rewards["popularity"], rewards["random"]
    assert aware.mean() - popular.mean() > 0.2 and (aware > popular).mean() > 0.95
    assert popular.mean() - rand.mean() > 0.02
    diff = popular - rand
    assert diff.mean() - 1.96 * diff.std(ddof=1) / np.sqrt(len(diff)) > 0  # paired 95% CI excludes 0


def test_constraint_aware_baseline_reads_the_request(env):
    for seed in range(20):
        env.reset(seed=seed)
        r = env.context.request
        history = [{"id": h.item_id, "title": env.catalog.by_id[h.item_id].title, "genres": list(env.catalog.by_id[h.item_id].genres)}
                   for h in env.context.user.history]
        wanted = ConstraintAwareRecommender.parse(r.text, history)
        assert (wanted["k"], wanted["category"], wanted["max_price"], wanted["min_rating"], wanted["genre"]) == \
            (r.k, r.category, r.max_price, r.min_rating, r.intent_genre)
        assert wanted["exclude_genres"] == ([r.exclude_genre] if r.exclude_genre else None)


# -- data layout and real-data loaders ---------------------------------------------------------------


def test_dataset_layout_round_trips_and_trains(tmp_path):
    data = synthesize(generate_catalog(60, seed=5), n_users=20, seed=3)
    write_dataset(data, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["items.jsonl", "query_item_relevance.jsonl", "user_behavior.jsonl"]
    back = read_dataset(tmp_path)
    assert back.relevance == data.relevance and back.behaviour == data.behaviour
    assert [it.public() for it in back.catalog.items] == [it.public() for it in data.catalog.items]
    report = training.main(["--data", str(tmp_path), "--eval", str(tmp_path), "--out", str(tmp_path / "models")])
    assert 0.5 < report["relevance"]["auc"] <= 1.0 and 0.5 < report["behaviour"]["click_auc"] <= 1.0
    assert (tmp_path / "models" / "relevance.pt").is_file() and (tmp_path / "models" / "behaviour.pt").is_file()
    (tmp_path / "user_behavior.jsonl").write_text('{"user_id": "u"}\n')
    with pytest.raises(ValueError, match="user_behavior.jsonl:1: missing field"):
        read_dataset(tmp_path)


def write_ml100k(root, n_movies=40, n_users=12, seed=0):
    """A tiny synthetic file set in the MovieLens-100k layout (no real data)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    movies = []
    for m in range(1, n_movies + 1):
        flags = ["0"] * 19
        for g in rng.choice(np.arange(1, 19), size=int(rng.integers(1, 3)), replace=False):
            flags[g] = "1"
        if m == 1:
            flags = ["0", "0", "0", "1", "1", "1"] + ["0"] * 13  # Animation, Children's, Comedy
        movies.append("|".join([str(m), f"Movie {m} (19{70 + m % 30})", f"01-Jan-19{70 + m % 30}", "", "http://x", *flags]))
    (root / "u.item").write_text("\n".join(movies) + "\n", encoding="latin-1")
    ratings = [f"{u}\t{m}\t{int(rng.integers(1, 6))}\t{880000000 + i}" for u in range(1, n_users + 1)
               for i, m in enumerate(rng.choice(np.arange(1, n_movies + 1), size=15, replace=False))]
    (root / "u.data").write_text("\n".join(ratings) + "\n")
    (root / "u.user").write_text("".join(f"{u}|{20 + u}|M|engineer|0000{u}\n" for u in range(1, n_users + 1)))


def test_movielens_loader_on_a_synthesized_ml100k_layout(tmp_path):
    write_ml100k(tmp_path / "ml-100k")
    catalog, users = load_movielens(tmp_path / "ml-100k")
    assert len(catalog) == 40 and catalog.categories == ("movie",) and len(users) == 12
    assert catalog.by_id["M1"].genres == ("family", "comedy") and catalog.by_id["M1"].title == "Movie 1 (1971)"
    rows = [line.split("\t") for line in (tmp_path / "ml-100k" / "u.data").read_text().splitlines()]
    liked = [f"M{m}" for u, m, r, _ in rows if u == "1" and int(r) >= 4]
    assert [h.item_id for h in users[0].history] == liked and users[0].age == 21
    env = gym.make(ENV_ID, catalog=str(tmp_path / "ml-100k"))
    obs, _ = env.reset(seed=0)
    assert "movies" in obs[0]["content"] and env.unwrapped.context.user.id in {u.id for u in users}
    policy = ConstraintAwareRecommender()
    for _ in range(4):
        obs, reward, terminated, truncated, info = env.step(policy.act(obs))
        if terminated:
            break
    assert terminated and info["reward_components"]["format"] == 1.0 and info["reward_components"]["fc"] == 1.0
    with pytest.raises(FileNotFoundError, match="u.item"):
        load_movielens(tmp_path)
