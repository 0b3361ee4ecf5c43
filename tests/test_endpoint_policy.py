"""EndpointPolicy against a real (local, stdlib) chat-completions server: the wire format, the scripted agent
through the real ToolReasoning env (native `tool_calls` and Hermes text), concurrency, retries, timeouts, a dead
server, the API key, and `agentenv run --policy openai:URL --model NAME`."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import gymnasium as gym
import pytest

import agentenv  # noqa: F401 - registers the envs
from agentenv.cli import _make_policy, main
from agentenv.envs.tool_reasoning.scripted import ScriptedPolicy
from agentenv.errors import UserError
from agentenv.policies.endpoint import EndpointError, EndpointPolicy, reply_to_action, to_openai_messages
from agentenv.rollout import collect
from agentenv.runner import run_episodes

ENV = "agentenv/ToolReasoning-v0"
CALC = {"tools": ["calculator"], "kinds": ["unit_conversion", "shopping"]}  # task kinds the calculator solves
FAST = dict(backoff_s=0.001, timeout_s=5.0)


def reply(content=None, tool_calls=None, finish_reason="stop"):
    """A well-formed chat-completions response body."""
    message = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": "scripted",
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def native_call(name, arguments, i=0):
    return {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": arguments}}


class RESET:
    """Script result: drop the connection with a TCP reset, no response."""


class ChatServer:
    """A chat-completions server on 127.0.0.1 (port 0), one thread per request. `script(body, n)` (n: the
    request's number, from 0) returns a response body, `(status, body[, headers])`, `RESET`, or sleeps.
    Records every request's headers and body and the most requests it had in flight at once."""

    def __init__(self, script):
        self.script, self.requests, self.lock = script, [], threading.Lock()
        self.active = self.max_active = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                assert self.path == "/v1/chat/completions", self.path
                with outer.lock:
                    n = len(outer.requests)
                    outer.requests.append((dict(self.headers), body))
                    outer.active += 1
                    outer.max_active = max(outer.max_active, outer.active)
                try:
                    result = outer.script(body, n)
                finally:
                    with outer.lock:
                        outer.active -= 1
                if result is RESET:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return
                status, payload, headers = (200, result, {}) if isinstance(result, dict) else (tuple(result) + ({},))[:3]
                self._send(status, payload, headers)

            def _send(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout tests)
                    pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def bodies(self):
        return [body for _, body in self.requests]


class ScriptedAgent:
    """Plays ToolReasoning's scripted agent over the wire: each episode's tool call comes back as a native
    `tool_calls` reply (every other episode, by order of first request) or as Hermes text in `content`."""

    def __init__(self):
        self.lock, self.native, self.kinds = threading.Lock(), {}, []

    def __call__(self, body, n):
        messages = body["messages"]
        question = next(m["content"] for m in messages if m["role"] == "user")
        with self.lock:
            native = self.native.setdefault(question, len(self.native) % 2 == 0)
        action = ScriptedPolicy().act([{"role": m["role"], "content": m["content"]} for m in messages])
        if "<tool_call>" not in action:
            return reply(action)
        with self.lock:
            self.kinds.append("native" if native else "text")
        if not native:
            return reply(action)
        call = json.loads(action[action.index("<tool_call>") + 11 : action.index("</tool_call>")])
        return reply(None, [native_call(call["name"], json.dumps(call["arguments"]))], finish_reason="tool_calls")


def schemas(env_kwargs=CALC):
    env = gym.make(ENV, **env_kwargs)
    try:
        return env.reset(seed=0)[1]["tools"]
    finally:
        env.close()


# -- the scripted agent through the real env -----------------------------------------------------------


def test_native_and_hermes_tool_calls_drive_real_episodes():
    tools = schemas()
    agent = ScriptedAgent()
    with ChatServer(agent) as server:
        policy = EndpointPolicy(server.url, "scripted", tools=tools, max_in_flight=4, **FAST)
        episodes = collect(ENV, policy, range(6), env_kwargs=CALC)
    assert sorted(agent.kinds) == ["native"] * 3 + ["text"] * 3
    for episode in episodes:
        assert episode.terminated and episode.success and len(episode.turns) == 2, episode.messages
        first, last = episode.turns
        assert first["tool_calls"] and first["tool_calls"][0]["name"] == "calculator" and first["error"] is None
        assert [r["ok"] for r in first["tool_results"]] == [True]
        assert last["reward_components"]["correct"] == 1.0
        assert episode.messages[2]["role"] == "assistant" and episode.messages[2]["content"].startswith("<tool_call>{")
    finish = sorted(e.turns[0]["finish_reason"] for e in episodes)
    assert finish == ["stop"] * 3 + ["tool_calls"] * 3  # the server's finish_reason, carried through
    bodies = server.bodies()
    assert len(bodies) == 12 and all(b["tools"] == tools and b["model"] == "scripted" for b in bodies)
    followups = [b["messages"] for b in bodies if len(b["messages"]) > 2]
    assert len(followups) == 6
    for messages in followups:  # the env's tool message as vLLM takes it: role tool, no tool_call_id
        assert set(messages[-1]) == {"role", "name", "content"} and messages[-1]["role"] == "tool"
        assert messages[-2]["role"] == "assistant" and "<tool_call>" in messages[-2]["content"]


def test_run_episodes_logs_count_the_calls():
    with ChatServer(ScriptedAgent()) as server:
        logs = list(run_episodes(ENV, EndpointPolicy(server.url, "scripted", **FAST), 4, env_kwargs=CALC, batch_size=2))
    assert len(logs) == 4 and all(log.success and log.tool_calls == 1 and log.errors == 0 for log in logs)


def test_reply_mapping_and_a_malformed_native_call_reaches_the_env_as_an_error():
    calls = [native_call("calculator", '{"expression": "2+3"}', 0), native_call("calculator", {"expression": "1"}, 1)]
    text = reply_to_action({"content": "Let me compute.", "tool_calls": calls})
    assert text == ('Let me compute.\n<tool_call>{"name": "calculator", "arguments": {"expression": "2+3"}}</tool_call>\n'
                    '<tool_call>{"name": "calculator", "arguments": {"expression": "1"}}</tool_call>')
    assert reply_to_action({"content": "<answer>5</answer>"}) == "<answer>5</answer>"
    assert reply_to_action({"content": None}) == ""
    broken = reply_to_action({"content": None, "tool_calls": [native_call("calculator", '{"expression": "2+')]})
    env = gym.make(ENV, **CALC)
    env.reset(seed=0)
    _, _, terminated, _, info = env.step(broken)
    env.close()
    assert not terminated and info["tool_calls"] == [] and "not valid JSON" in info["error"]


def test_messages_sent_are_role_and_content_only():
    chat = [{"role": "system", "content": "s"}, {"role": "user", "content": "q", "audio": object()},
            {"role": "assistant", "content": "<tool_call>{}</tool_call>"}, {"role": "tool", "name": "calculator", "content": "5"}]
    assert to_openai_messages(chat) == [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                                        {"role": "assistant", "content": "<tool_call>{}</tool_call>"},
                                        {"role": "tool", "name": "calculator", "content": "5"}]
    assert to_openai_messages(chat, tool_role="user")[-1] == {"role": "user", "content": "[tool result: calculator]\n5"}


# -- concurrency, order, sampling fields -----------------------------------------------------------------


def test_requests_run_concurrently_up_to_max_in_flight_and_come_back_in_order():
    def script(body, n):
        index = int(body["messages"][-1]["content"])
        time.sleep(0.15 + 0.05 * (index % 3))  # finishing out of order
        return reply(f"<answer>{index}</answer>", finish_reason="length" if index == 5 else "stop")

    with ChatServer(script) as server:
        policy = EndpointPolicy(server.url, "m", max_in_flight=4, temperature=0.7, top_p=0.9, max_tokens=33, seed=1, **FAST)
        generations = policy.generate([[{"role": "user", "content": str(i)}] for i in range(8)])
    assert [g.text for g in generations] == [f"<answer>{i}</answer>" for i in range(8)]
    assert [g.finish_reason for g in generations] == ["stop"] * 5 + ["length"] + ["stop"] * 2
    assert server.max_active == 4  # 4 requests were in the server at once, never more (no wall-clock bound: load)
    body = server.bodies()[0]
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["n"], body["stream"]) == (0.7, 0.9, 33, 1, False)
    assert "tools" not in body
    seeds = [b["seed"] for b in sorted(server.bodies(), key=lambda b: int(b["messages"][-1]["content"]))]
    assert len(set(seeds)) == 8  # one seed per request, drawn in context order from the policy's seed
    again = EndpointPolicy(server.url, "m", seed=1)
    assert seeds == [again._body([])["seed"] for _ in range(8)]


def test_seeded_requests_are_reproducible():
    a, b = EndpointPolicy("http://x/v1", "m", seed=3), EndpointPolicy("http://x/v1", "m", seed=3)
    assert [a._body([])["seed"] for _ in range(5)] == [b._body([])["seed"] for _ in range(5)]
    assert "seed" not in EndpointPolicy("http://x/v1", "m")._body([])


# -- failures --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("failure", [(503, {"message": "overloaded"}), RESET, (429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})])
def test_transient_failures_are_retried(failure):
    def script(body, n):
        return failure if n < 2 else reply("<answer>1</answer>")

    with ChatServer(script) as server:
        [generation] = EndpointPolicy(server.url, "m", retries=3, **FAST).generate([[{"role": "user", "content": "q"}]])
    assert generation.text == "<answer>1</answer>" and len(server.requests) == 3


def test_persistent_5xx_fails_after_the_retries_naming_url_and_cause():
    with ChatServer(lambda body, n: (500, {"object": "error", "message": "engine dead"})) as server:
        policy = EndpointPolicy(server.url, "m", retries=2, **FAST)
        with pytest.raises(EndpointError) as info:
            policy.generate([[{"role": "user", "content": "q"}]] * 3)
    error = info.value
    assert isinstance(error, RuntimeError) and error.url == f"{server.url}/chat/completions" and error.status == 500
    assert str(error) == f"chat-completions request to {server.url}/chat/completions failed after 3 attempts: HTTP 500 Internal Server Error: engine dead"
    assert len(server.requests) <= 9


def test_a_bad_request_is_not_retried_and_says_why():
    def script(body, n):
        return 400, {"object": "error", "message": '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set', "code": 400}

    with ChatServer(script) as server:
        with pytest.raises(EndpointError, match="HTTP 400.*--enable-auto-tool-choice.*tool_choice='none'") as info:
            EndpointPolicy(server.url, "m", tools=schemas(), **FAST).generate([[{"role": "user", "content": "q"}]])
    assert len(server.requests) == 1 and info.value.status == 400 and info.value.attempts == 1


def test_a_reply_that_is_not_chat_completions_is_an_error():
    with ChatServer(lambda body, n: {"unexpected": True}) as server:
        with pytest.raises(EndpointError, match="no choices"):
            EndpointPolicy(server.url, "m", **FAST).generate([[{"role": "user", "content": "q"}]])


def test_timeouts_are_retried_then_fail_clearly():
    def script(body, n):
        time.sleep(3.0)
        return reply("late")

    with ChatServer(script) as server:
        policy = EndpointPolicy(server.url, "m", timeout_s=0.05, retries=1, backoff_s=0.001)
        start = time.perf_counter()
        with pytest.raises(EndpointError, match="failed after 2 attempts: timed out") as info:
            policy.generate([[{"role": "user", "content": "q"}], [{"role": "user", "content": "r"}]])
        # ~0.1 s expected; waiting for the replies would take 6 s: a margin no machine load closes
        assert time.perf_counter() - start < 2.0
    assert info.value.status is None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_down_is_a_clear_error_with_the_url_and_without_the_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret-42")
    url = f"http://127.0.0.1:{free_port()}/v1"
    policy = EndpointPolicy(url, "m", retries=2, backoff_s=0.001, timeout_s=1.0)
    with pytest.raises(EndpointError) as info:
        policy.generate([[{"role": "user", "content": "q"}]])
    text = str(info.value)
    assert text.startswith(f"chat-completions request to {url}/chat/completions failed after 3 attempts: ")
    assert "ConnectionRefusedError" in text
    dump = "".join(traceback.format_exception(info.value)) + repr(info.value) + repr(vars(info.value))
    assert "sk-very-secret-42" not in dump


def test_api_key_is_sent_from_the_env_var_and_never_shown(monkeypatch):
    monkeypatch.setenv("MY_ENDPOINT_KEY", "sk-abc-secret")

    def script(body, n):
        if n == 0:
            return reply("ok")
        return 401, {"error": {"message": "Incorrect API key provided: sk-abc-secret"}}

    with ChatServer(script) as server:
        policy = EndpointPolicy(server.url, "m", api_key_env="MY_ENDPOINT_KEY", **FAST)
        assert policy.generate([[{"role": "user", "content": "q"}]])[0].text == "ok"
        with pytest.raises(EndpointError) as info:
            policy.generate([[{"role": "user", "content": "q"}]])
    headers = {k.lower(): v for k, v in server.requests[0][0].items()}
    assert headers["authorization"] == "Bearer sk-abc-secret"
    assert "sk-abc-secret" not in repr(policy) and "sk-abc-secret" not in repr(vars(policy)) and "$MY_ENDPOINT_KEY (set)" in repr(policy)
    assert "HTTP 401" in str(info.value) and "***" in str(info.value) and "sk-abc-secret" not in str(info.value)
    assert len(server.requests) == 2  # a 401 is not retried

    monkeypatch.delenv("MY_ENDPOINT_KEY")
    with ChatServer(lambda body, n: reply("ok")) as server:
        EndpointPolicy(server.url, "m", api_key_env="MY_ENDPOINT_KEY", **FAST).generate([[{"role": "user", "content": "q"}]])
    assert "authorization" not in {k.lower() for k in server.requests[0][0]}


def test_constructor_checks():
    with pytest.raises(ValueError, match="http"):
        EndpointPolicy("127.0.0.1:8000/v1", "m")
    with pytest.raises(ValueError, match="max_in_flight"):
        EndpointPolicy("http://x/v1", "m", max_in_flight=0)
    assert EndpointPolicy("http://x/v1/", "m").url == "http://x/v1/chat/completions"
    assert EndpointPolicy("http://x/v1/chat/completions", "m").url == "http://x/v1/chat/completions"
    assert EndpointPolicy("http://x/v1", "m").generate([]) == []


# -- agentenv run ------------------------------------------------------------------------------------------


def run_args(url, out, *extra):
    return ["run", "ToolReasoning-v0", "--policy", f"openai:{url}", "--model", "scripted", "--quiet", "--out", str(out),
            "--env-arg", "tools=[calculator]", "--env-arg", "kinds=[unit_conversion, shopping]", *extra]


def test_cli_runs_an_openai_endpoint_with_the_env_tools(tmp_path, capsys):
    out = tmp_path / "episodes.jsonl"
    with ChatServer(ScriptedAgent()) as server:
        assert main(run_args(server.url, out, "--episodes", "4")) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 4 and all(r["success"] and r["tool_calls"] == 1 for r in records)
    assert all([t["function"]["name"] for t in b["tools"]] == ["calculator"] for b in server.bodies())


def test_cli_policy_spec_errors():
    assert isinstance(_make_policy("openai:http://127.0.0.1:1/v1", ENV, model="m"), EndpointPolicy)
    with pytest.raises(UserError, match="needs --model"):
        _make_policy("openai:http://127.0.0.1:1/v1", ENV)
    with pytest.raises(UserError, match="http"):
        _make_policy("openai:localhost:8000", ENV, model="m")


def test_cli_reports_a_server_that_dies_in_one_line_and_keeps_the_finished_episodes(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(EndpointPolicy.__init__.__kwdefaults__, "backoff_s", 0.001)
    agent = ScriptedAgent()

    def script(body, n):  # serves the first episode (2 turns), then fails for good
        return agent(body, n) if n < 2 else (503, {"message": "gone"})

    out = tmp_path / "episodes.jsonl"
    with ChatServer(script) as server:
        assert main(run_args(server.url, out, "--episodes", "3", "--batch-size", "1")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"agentenv run: error: chat-completions request to {server.url}/chat/completions failed after 4 attempts: HTTP 503")
    assert "1 of 3 episodes finished" in err
    assert len(out.read_text().splitlines()) == 1


def test_cli_without_model_is_a_user_error(capsys):
    assert main(["run", "ToolReasoning-v0", "--policy", "openai:http://127.0.0.1:1/v1", "--episodes", "1"]) == 2
    assert "needs --model" in capsys.readouterr().err


# -- a real vLLM server (GPU, the `vllm` extra) ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vllm")
def test_vllm_serve_drives_episodes(tmp_path):
    from agentenv.policies.tiny import tiny_model, tiny_tokenizer

    model_dir = tmp_path / "tiny"
    tiny_model("tiny").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
                               "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port),
                               "--max-model-len", "2048", "--enforce-eager", "--gpu-memory-utilization", "0.3",
                               "--enable-auto-tool-choice", "--tool-call-parser", "hermes"],
                              stdout=open(tmp_path / "vllm.log", "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 600
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2).read()
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, (tmp_path / "vllm.log").read_text()[-3000:]
                time.sleep(2)
        policy = EndpointPolicy(f"http://127.0.0.1:{port}/v1", "tiny", max_tokens=24, seed=0, tools=schemas())
        episodes = collect(ENV, policy, range(4), env_kwargs=CALC, max_turns=2)
        assert len(episodes) == 4 and all(e.turns for e in episodes)
    finally:
        server.terminate()
        server.wait(timeout=60)
