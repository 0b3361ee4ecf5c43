"""EndpointPolicy: any OpenAI-compatible chat-completions server as an agent policy (text in, text out).

`vllm serve`, SGLang, llama.cpp's `llama-server` and hosted APIs all speak `POST {base_url}/chat/completions`;
`EndpointPolicy(base_url, model)` turns each chat context into one such request and each reply into one
assistant turn in the env's action grammar (`agentenv.tools.parsing`), so `agentenv run` and evaluation can
drive any served model: `agentenv run ToolReasoning-v0 --policy openai:http://127.0.0.1:8000/v1 --model NAME`.

It is a text-only policy (`generate(contexts)`, no `generate_ids`): the rollout records messages, turns and
rewards, not token ids or log-probs (for training use `HFPolicy` / `VLLMPolicy`).

Requests: `generate(contexts)` sends one request per context, at most `max_in_flight` at a time (a thread pool
over the stdlib's `urllib`: no extra dependency, and blocking I/O is all a thread does here). Each request has
a socket timeout of `timeout_s` (connecting, and every wait for data: a non-streaming reply sends nothing
until the whole turn is generated, so this bounds the generation); connection errors, timeouts, HTTP 5xx,
408 and 429 are retried `retries` times with exponential backoff (`backoff_s`, doubled each time, with
jitter; a server's numeric `Retry-After` is honoured up to 30 s). Other HTTP errors (400 bad request, 401,
404 unknown model, …) fail at once. A request that still fails raises `EndpointError` (a RuntimeError) naming
the URL and the cause: a dead server is an infrastructure failure, never a made-up generation, so no episode
is silently scored on a reply that did not happen. `agentenv run` turns it into a one-line error after
writing the episodes that finished.

Tools: with `tools=` (the env's OpenAI function schemas, `info["tools"]` / `env.unwrapped.tool_schemas`;
`agentenv run` reads them from the env it builds to check the arguments and passes them here, or set
`policy.tools` later) every request carries `"tools": [...]`. Replies may call tools either way:
* Hermes text (`<tool_call>{...}</tool_call>` in `content`, how Qwen-style models write them when the server
  does not parse calls) is passed through untouched;
* native `tool_calls` (a server with a tool parser, e.g. `vllm serve --enable-auto-tool-choice
  --tool-call-parser hermes`, or hosted APIs) become `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
  text appended to the content, in order. An `arguments` string that is not valid JSON is passed on as that
  string, so the env reports the malformed call to the agent like any other.
A vLLM server started without `--enable-auto-tool-choice` rejects requests with `tools` (HTTP 400, "auto" tool
choice…); start it with those flags, or pass `tool_choice="none"` (tools are still rendered in the prompt
and Hermes text in the reply still reaches the env), or leave `tools=None` (the env's system prompt lists
the tools and the call syntax already).

Messages: only `role` and `content` are sent (extra keys such as audio arrays are dropped). The env's `tool`
messages carry no `tool_call_id`, since the calls were text in the assistant turn, not native calls. vLLM
(`CustomChatCompletionMessageParam`), SGLang and llama.cpp accept a `tool` message without one and render it
with the chat template's tool role (Qwen: `<tool_response>`), so by default (`tool_role="tool"`) they are sent
as `{"role": "tool", "name": ..., "content": ...}`. A synthetic id is not sent: it would match no
`tool_calls` entry in the history, and templates that check ids (Mistral's) reject it. Hosted OpenAI-style
APIs refuse any `tool` message that does not answer a native `tool_calls` entry; for them use
`tool_role="user"`, which sends each tool result as a user message `[tool result: NAME]\\n…`.

The API key is read from the environment variable `api_key_env` (default `OPENAI_API_KEY`; unset means no
`Authorization` header, as a local server needs none) and sent as `Authorization: Bearer …`; it never appears
in `repr`, log or error messages (any echo of it in a server's error text is masked).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, Sequence

from agentenv.types import Generation, Messages

__all__ = ["EndpointPolicy", "EndpointError", "to_openai_messages", "reply_to_action"]

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 30.0
_ERROR_BODY_CHARS = 300


class EndpointError(RuntimeError):
    """A chat-completions request failed for good (server down, timeouts, HTTP errors after retries).

    `url` is the endpoint, `cause` a one-line description of the last failure, `status` its HTTP status (None
    when no response came back)."""

    def __init__(self, url: str, cause: str, attempts: int = 1, status: int | None = None):
        self.url, self.cause, self.attempts, self.status = url, cause, attempts, status
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"chat-completions request to {url} failed{tries}: {cause}")

    def __reduce__(self):  # survives pickling (e.g. out of a worker process)
        return type(self), (self.url, self.cause, self.attempts, self.status)


class _Secret:
    """Holds the API key; its repr never shows it."""

    __slots__ = ("value",)

    def __init__(self, value: str | None):
        self.value = value

    def __repr__(self) -> str:
        return "'***'" if self.value else "None"


class _Retry(Exception):
    """One failed attempt that may succeed if repeated; `wait_s` is the server's Retry-After, if any."""

    def __init__(self, cause: str, status: int | None = None, wait_s: float | None = None):
        super().__init__(cause)
        self.cause, self.status, self.wait_s = cause, status, wait_s


def to_openai_messages(messages: Messages, tool_role: str = "tool") -> list[dict[str, Any]]:
    """The env's chat messages as chat-completions `messages`: role and content only (see the module doc for
    how `tool` messages are sent)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        role, content = message.get("role", "user"), message.get("content", "")
        content = content if isinstance(content, str) else str(content)
        if role == "tool":
            name = message.get("name") or "tool"
            if tool_role == "tool":
                out.append({"role": "tool", "name": name, "content": content})
            else:
                out.append({"role": "user", "content": f"[tool result: {name}]\n{content}"})
        else:
            out.append({"role": role, "content": content})
    return out


def reply_to_action(message: dict[str, Any]) -> str:
    """A chat-completions reply `message` as one action in the env's grammar: its content, then each native
    tool call as `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`."""
    content = message.get("content") or ""
    if not isinstance(content, str):  # content parts (rare in replies): keep the text ones
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict)) if isinstance(content, list) else str(content)
    calls = []
    for call in message.get("tool_calls") or []:
        function = (call or {}).get("function") or {}
        name, arguments = function.get("name", ""), function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except ValueError:
                pass  # passed on as the string it is: the env reports the malformed arguments to the agent
        calls.append(f"<tool_call>{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}</tool_call>")
    if not calls:
        return content
    return "\n".join(([content] if content.strip() else []) + calls)


class EndpointPolicy:
    """A `Policy` backed by an OpenAI-compatible chat-completions server.

    Args:
        base_url: the API base, e.g. `http://127.0.0.1:8000/v1` (requests go to `{base_url}/chat/completions`;
            a URL that already ends in `/chat/completions` is used as it is).
        model: the served model's name (`vllm serve NAME` serves it as NAME unless `--served-model-name`).
        api_key_env: environment variable holding the API key (read once, here); unset → no auth header.
        temperature, top_p, max_tokens: sampling; `max_tokens=None` leaves the limit to the server.
        max_in_flight: most requests in flight at once (one per context of a `generate` call).
        timeout_s: socket timeout of one request (connect, and each wait for data).
        retries: further attempts after a failed one (connection error, timeout, 5xx, 408, 429).
        backoff_s: wait before the first retry; doubled for each next one (with jitter).
        tools: OpenAI function schemas sent with every request (the env's `info["tools"]`); None sends none.
        tool_choice: sent when given ("auto", "none", "required" or a named tool); None leaves the server's default.
        seed: when set, each request gets its own seed drawn from a generator seeded with it (the same calls
            then ask for the same samples, where the server supports seeded sampling).
        tool_role: "tool" (vLLM, SGLang, llama.cpp) or "user" (hosted APIs): how env tool messages are sent.
        extra_body: more request fields (server-specific: `top_k`, `chat_template_kwargs`, ...).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        temperature: float = 1.0,
        max_tokens: int | None = 1024,
        top_p: float = 1.0,
        max_in_flight: int = 8,
        timeout_s: float = 60.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        tools: Sequence[dict[str, Any]] | None = None,
        tool_choice: Any = None,
        seed: int | None = None,
        tool_role: str = "tool",
        extra_body: dict[str, Any] | None = None,
    ):
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http:// or https:// URL, got {base_url!r}")
        if not model:
            raise ValueError("model must name the served model")
        if max_in_flight < 1 or retries < 0 or timeout_s <= 0 or backoff_s < 0:
            raise ValueError("need max_in_flight >= 1, retries >= 0, timeout_s > 0 and backoff_s >= 0")
        if tool_role not in ("tool", "user"):
            raise ValueError("tool_role must be 'tool' or 'user'")
        base = base_url.rstrip("/")
        self.base_url = base
        self.url = base if base.endswith("/chat/completions") else f"{base}/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self._key = _Secret(os.environ.get(api_key_env) or None)  # shows as '***' in any repr or dump
        self.temperature, self.max_tokens, self.top_p = temperature, max_tokens, top_p
        self.max_in_flight, self.timeout_s, self.retries, self.backoff_s = max_in_flight, timeout_s, retries, backoff_s
        self.tools = list(tools) if tools else None
        self.tool_choice = tool_choice
        self.tool_role = tool_role
        self.extra_body = dict(extra_body or {})
        self.seed = seed
        self._seeds = random.Random(seed)

    def __repr__(self) -> str:
        key = f"${self.api_key_env} ({'set' if self._key.value else 'unset'})"
        return (f"EndpointPolicy(url={self.url!r}, model={self.model!r}, api_key={key}, max_in_flight={self.max_in_flight}, "
                f"timeout_s={self.timeout_s}, retries={self.retries}, tools={len(self.tools or [])})")

    # -- Policy -------------------------------------------------------------------------------------

    def generate(self, contexts: Sequence[Messages]) -> list[Generation]:
        """One assistant turn per chat context, in order; up to `max_in_flight` requests at once.

        Raises `EndpointError` when a request fails for good; the other requests are then abandoned (none
        starts or retries after that) and no partial result is returned."""
        bodies = [self._body(messages) for messages in contexts]
        if not bodies:
            return []
        if len(bodies) == 1:
            return [self._request(bodies[0], threading.Event())]
        stop = threading.Event()
        pool = ThreadPoolExecutor(max_workers=min(self.max_in_flight, len(bodies)), thread_name_prefix="endpoint")
        try:
            futures = [pool.submit(self._request, body, stop) for body in bodies]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in futures if f in done and f.exception() is not None), None)
            if failed is not None:
                raise failed.exception()
            return [f.result() for f in futures]
        except BaseException:
            stop.set()  # nothing starts or retries after this
            raise
        finally:
            # on failure, do not wait for requests still in flight (each ends by its own timeout)
            pool.shutdown(wait=not stop.is_set(), cancel_futures=True)

    # -- one request --------------------------------------------------------------------------------

    def _body(self, messages: Messages) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": to_openai_messages(messages, self.tool_role),
                                "temperature": self.temperature, "top_p": self.top_p, "n": 1, "stream": False}
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if self.tools:
            body["tools"] = self.tools
        if self.tool_choice is not None:
            body["tool_choice"] = self.tool_choice
        if self.seed is not None:
            body["seed"] = self._seeds.randrange(2**31)
        body.update(self.extra_body)
        return body

    def _request(self, body: dict[str, Any], stop: threading.Event) -> Generation:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key.value:
            headers["Authorization"] = f"Bearer {self._key.value}"
        attempts = 0
        while True:
            if stop.is_set():  # another request of this batch failed for good
                raise EndpointError(self.url, "abandoned: another request of the batch failed", attempts)
            attempts += 1
            try:
                return self._attempt(data, headers)
            except _Retry as exc:
                if attempts > self.retries or stop.is_set():
                    raise EndpointError(self.url, self._mask(exc.cause), attempts, exc.status) from None
                delay = self.backoff_s * 2 ** (attempts - 1) * random.uniform(0.75, 1.25)
                if exc.wait_s is not None:
                    delay = max(delay, min(exc.wait_s, MAX_RETRY_AFTER_S))
                if stop.wait(delay):  # another request failed for good: give up too
                    raise EndpointError(self.url, self._mask(exc.cause), attempts, exc.status) from None
            except EndpointError as exc:  # not worth repeating (bad request, bad reply)
                exc.attempts = attempts
                raise

    def _attempt(self, data: bytes, headers: dict[str, str]) -> Generation:
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = _error_detail(exc)
            cause = f"HTTP {exc.code} {exc.reason}" + (f": {detail}" if detail else "")
            if exc.code in RETRY_STATUS:
                raise _Retry(cause, exc.code, _retry_after(exc)) from None
            if exc.code == 400 and self.tools and "tool" in detail.lower():
                cause += (" (the request carried the env's tools: start vLLM with --enable-auto-tool-choice "
                          "--tool-call-parser hermes, or use tool_choice='none' or tools=None)")
            raise EndpointError(self.url, self._mask(cause), status=exc.code) from None
        except (TimeoutError, urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            raise _Retry(_describe(exc)) from None
        try:
            payload = json.loads(raw)
            if not isinstance(payload, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            raise EndpointError(self.url, self._mask(f"the reply is not chat-completions JSON ({exc}): {raw[:_ERROR_BODY_CHARS]!r}")) from None
        if payload.get("error"):
            raise EndpointError(self.url, self._mask(f"the server answered with an error: {_message_of(payload)}"))
        choices = payload.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise EndpointError(self.url, self._mask(f"the reply has no choices: {raw[:_ERROR_BODY_CHARS]!r}"))
        choice = choices[0]
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        return Generation(reply_to_action(message), finish_reason=choice.get("finish_reason") or "stop")

    def _mask(self, text: str) -> str:
        return text.replace(self._key.value, "***") if self._key.value else text


def _describe(exc: BaseException) -> str:
    """One line for a connection-level failure (URLError wraps the socket error in `.reason`)."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, (TimeoutError,)) or "timed out" in str(reason):
        return f"timed out ({type(reason).__name__}: {reason})"
    return f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__


def _retry_after(exc: urllib.error.HTTPError) -> float | None:
    try:
        value = float(exc.headers.get("Retry-After", ""))
    except (TypeError, ValueError, AttributeError):
        return None
    return value if value >= 0 else None


def _message_of(payload: Any) -> str:
    """The message of an OpenAI-style error body (`{"error": {"message": ...}}`, vLLM's `{"message": ...}`)."""
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if payload.get("message"):
            return str(payload["message"])
    return json.dumps(payload)[:_ERROR_BODY_CHARS]


def _error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        raw = exc.read()[:4096]
    except Exception:  # the body is a courtesy; the status says enough
        return ""
    try:
        detail = _message_of(json.loads(raw))
    except ValueError:
        detail = raw.decode("utf-8", "replace")
    detail = " ".join(detail.split())
    return detail[:_ERROR_BODY_CHARS] + ("…" if len(detail) > _ERROR_BODY_CHARS else "")
