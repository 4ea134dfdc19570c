"""Loopback HTTP servers that speak the Anthropic Messages API and the OpenAI Chat
Completions API with scripted answers, for the real SDK clients to talk to.

No network and no keys: a test starts a server on 127.0.0.1 (an ephemeral port, a
`http.server` in a thread) and points `anthropic.Anthropic` / `openai.OpenAI` at it with
`base_url` (or the `ANTHROPIC_BASE_URL` / `OPENAI_BASE_URL` variables). The SDKs are never
patched: they build real requests, retry, back off and parse real bytes.

A server answers each request, in order, from:

1. the queue (`enqueue(...)`): one-shot replies, typically failures — `rate_limited`,
   `server_error`, `html_page`, `truncated_json`, `empty_200`;
2. the script: a callable that sees the parsed request JSON and returns a `Reply` or the
   provider's response body as a dict (`anthropic_tool_message`, `openai_completion`).

Every request is recorded (`server.requests`) with its headers, parsed body and arrival
time, so tests can assert the cache markers, max_tokens, model names and retry timing.
Usage is emulated from the request when the script gives none: Anthropic's prompt cache
(the prefix up to the last `cache_control` marker is written once, read afterwards) and
OpenAI's automatic prefix cache (the system message, once seen, is read from cache).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHARS_PER_TOKEN = 4


# ---------------------------------------------------------------- replies


@dataclass
class Reply:
    status: int = 200
    body: bytes | str | dict[str, Any] | list[Any] = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    delay_s: float = 0.0

    def payload(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode("utf-8")
        return json.dumps(self.body).encode("utf-8")


def rate_limited(retry_after: float = 1.0) -> Reply:
    return Reply(
        status=429,
        body={"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}},
        headers={"retry-after": f"{retry_after:g}"},
    )


def server_error(status: int = 500) -> Reply:
    return Reply(
        status=status,
        body={"type": "error", "error": {"type": "api_error", "message": "internal error"}},
    )


def html_page(status: int = 200) -> Reply:
    return Reply(
        status=status,
        body="<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
        "<body><h1>Bad Gateway</h1><p>nginx</p></body></html>",
        content_type="text/html; charset=utf-8",
    )


def truncated_json() -> Reply:
    return Reply(body=b'{"id": "msg_01", "type": "message", "role": "assistant", "content": [{"ty')


def empty_200() -> Reply:
    return Reply(body=b"")


# ---------------------------------------------------------------- recorded requests


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # the parsed JSON, or None when the body was not JSON
    raw: bytes
    at: float  # time.monotonic() on arrival

    @property
    def step(self) -> str | None:
        """Which structured answer the client asked for (the tool / schema name)."""
        body = self.body if isinstance(self.body, dict) else {}
        choice = body.get("tool_choice")
        if isinstance(choice, dict):
            if choice.get("type") == "tool":
                return choice.get("name")
            if choice.get("type") == "function":
                return (choice.get("function") or {}).get("name")
        fmt = body.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            return (fmt.get("json_schema") or {}).get("name")
        return None

    def text(self) -> str:
        """Every piece of text in the request (system and messages), joined."""
        return "\n".join(_texts(self.body))


def _texts(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [t for item in node for t in _texts(item)]
    if isinstance(node, dict):
        out: list[str] = []
        for key in ("system", "messages", "content", "text"):
            if key in node:
                out.extend(_texts(node[key]))
        return out
    return []


Script = Callable[[dict[str, Any], RecordedRequest], "Reply | dict[str, Any]"]


# ---------------------------------------------------------------- the server


class FakeLLMServer:
    """Base: a threaded loopback HTTP server that records requests and answers from a
    queue, then from the script. Use as a context manager."""

    api_path: str = "/"

    def __init__(self, script: Script | None = None) -> None:
        self.script = script
        self.queue: deque[Reply] = deque()
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ control

    def enqueue(self, *replies: Reply) -> None:
        with self._lock:
            self.queue.extend(replies)

    @property
    def port(self) -> int:
        assert self._server is not None, "the server is not running"
        return self._server.server_address[1]

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:  # what the SDK's base_url should be
        return self.root_url

    def api_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == self.api_path]

    def steps(self) -> list[str | None]:
        return [r.step for r in self.api_requests()]

    def start(self) -> FakeLLMServer:
        handler = _make_handler(self)
        self._server = _QuietServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ answering

    def _answer(self, request: RecordedRequest) -> Reply:
        if request.path != self.api_path:
            return Reply(status=404, body={"error": {"message": f"no route {request.path}"}})
        with self._lock:
            queued = self.queue.popleft() if self.queue else None
        if queued is not None:
            return queued
        if self.script is None:
            return server_error(500)
        if not isinstance(request.body, dict):
            return Reply(status=400, body={"error": {"message": "the body is not JSON"}})
        result = self.script(request.body, request)
        if isinstance(result, Reply):
            return result
        return Reply(body=self.complete_usage(request.body, result))

    def complete_usage(self, body: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
        """Fill in `usage` when the script gave none (emulated from the request)."""
        return response


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (its timeout) leaves a broken pipe behind: not news.
        return


def _make_handler(server: FakeLLMServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def do_GET(self) -> None:
            self._handle()

        def do_POST(self) -> None:
            self._handle()

        def _handle(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            request = RecordedRequest(
                method=self.command,
                path=self.path.split("?", 1)[0],
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
                raw=raw,
                at=time.monotonic(),
            )
            with server._lock:
                server.requests.append(request)
            try:
                reply = server._answer(request)
            except Exception as exc:  # a script bug: answer 599 so the test sees it
                reply = Reply(status=599, body={"error": {"message": f"script error: {exc!r}"}})
            if reply.delay_s:
                time.sleep(reply.delay_s)
            payload = reply.payload()
            self.send_response(reply.status)
            self.send_header("content-type", reply.content_type)
            self.send_header("content-length", str(len(payload)))
            for key, value in reply.headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)

    return Handler


# ---------------------------------------------------------------- Anthropic


def anthropic_tool_message(
    name: str,
    tool_input: dict[str, Any],
    *,
    usage: dict[str, int] | None = None,
    model: str = "claude-sonnet-4-5",
    stop_reason: str = "tool_use",
) -> dict[str, Any]:
    """A Messages API response whose content is one `tool_use` block."""
    message: dict[str, Any] = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [
            {"type": "tool_use", "id": "toolu_fake", "name": name, "input": tool_input},
        ],
        "stop_reason": stop_reason,
        "stop_sequence": None,
    }
    if usage is not None:
        message["usage"] = usage
    return message


def anthropic_text_message(
    text: str, *, usage: dict[str, int] | None = None, model: str = "claude-sonnet-4-5"
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
    }
    if usage is not None:
        message["usage"] = usage
    return message


def _tokens(text: str) -> int:
    return max(1, len(text) // CHARS_PER_TOKEN)


class FakeAnthropicServer(FakeLLMServer):
    """POST /v1/messages. Prompt caching is emulated: the request prefix (tools, then system
    blocks) up to the last block marked `cache_control` is written to the cache the first
    time and read from it afterwards."""

    api_path = "/v1/messages"

    def __init__(self, script: Script | None = None) -> None:
        super().__init__(script)
        self.cached_prefixes: set[str] = set()

    def complete_usage(self, body: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
        if "usage" in response:
            return response
        tools = json.dumps(body.get("tools", []), sort_keys=True)
        system = body.get("system", [])
        blocks = [{"type": "text", "text": system}] if isinstance(system, str) else list(system)
        marked = max((i for i, b in enumerate(blocks) if b.get("cache_control")), default=-1)
        prefix_text = tools + "".join(b.get("text", "") for b in blocks[: marked + 1])
        rest_text = "".join(b.get("text", "") for b in blocks[marked + 1 :]) + json.dumps(
            body.get("messages", [])
        )
        write = read = 0
        if marked >= 0:
            digest = hashlib.sha256(prefix_text.encode()).hexdigest()
            with self._lock:
                seen = digest in self.cached_prefixes
                self.cached_prefixes.add(digest)
            if seen:
                read = _tokens(prefix_text)
            else:
                write = _tokens(prefix_text)
            uncached = _tokens(rest_text)
        else:
            uncached = _tokens(prefix_text + rest_text)
        out = _tokens(json.dumps(response.get("content", [])))
        return {
            **response,
            "usage": {
                "input_tokens": uncached,
                "output_tokens": out,
                "cache_creation_input_tokens": write,
                "cache_read_input_tokens": read,
            },
        }


# ---------------------------------------------------------------- OpenAI


def openai_completion(
    content: str | None = None,
    *,
    tool_calls: list[dict[str, Any]] | None = None,
    usage: dict[str, Any] | None = None,
    model: str = "gpt-4.1",
    finish_reason: str = "stop",
) -> dict[str, Any]:
    """A Chat Completions response with one choice."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    response: dict[str, Any] = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
    }
    if usage is not None:
        response["usage"] = usage
    return response


def openai_json_completion(obj: Any, **kwargs: Any) -> dict[str, Any]:
    return openai_completion(json.dumps(obj), **kwargs)


def openai_tool_call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "call_fake",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


class FakeOpenAIServer(FakeLLMServer):
    """POST /v1/chat/completions. The SDK's base_url is `<root>/v1`. The automatic prefix
    cache is emulated: a system message seen before is reported as cached tokens."""

    api_path = "/v1/chat/completions"

    def __init__(self, script: Script | None = None) -> None:
        super().__init__(script)
        self.seen_prefixes: set[str] = set()

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def complete_usage(self, body: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
        if "usage" in response:
            return response
        messages = body.get("messages", [])
        prompt = _tokens(json.dumps(messages))
        system = "".join(
            m.get("content", "") if isinstance(m.get("content"), str) else json.dumps(m)
            for m in messages
            if m.get("role") in ("system", "developer")
        )
        cached = 0
        if system:
            digest = hashlib.sha256(system.encode()).hexdigest()
            with self._lock:
                if digest in self.seen_prefixes:
                    cached = min(prompt, _tokens(system))
                self.seen_prefixes.add(digest)
        choices = response.get("choices") or [{}]
        completion = _tokens(json.dumps(choices[0].get("message", {})))
        return {
            **response,
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": cached},
            },
        }


__all__ = [
    "FakeAnthropicServer",
    "FakeLLMServer",
    "FakeOpenAIServer",
    "RecordedRequest",
    "Reply",
    "anthropic_text_message",
    "anthropic_tool_message",
    "empty_200",
    "html_page",
    "openai_completion",
    "openai_json_completion",
    "openai_tool_call",
    "rate_limited",
    "server_error",
    "truncated_json",
]
