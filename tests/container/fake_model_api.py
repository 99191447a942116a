# SPDX-License-Identifier: GPL-3.0-or-later
"""A fake model API for the five agent CLIs (standard library only): it answers every turn with a
short text and records each request's body, so a test can show what context a resumed conversation
sends.

It speaks just enough of each wire protocol for one turn to complete:

- Anthropic Messages (Claude Code): ``POST /v1/messages``, SSE when the request asks for a stream;
- OpenAI Responses (Codex): ``POST /v1/responses``, SSE;
- Gemini (Gemini CLI): ``:generateContent`` (routing and checks, which want a JSON answer) and
  ``:streamGenerateContent?alt=sse``;
- OpenAI Chat Completions (OpenCode, Copilot CLI): ``POST /v1/chat/completions``, SSE or JSON.

``FakeModelAPI(netns=...)`` listens on 127.0.0.1 inside another network namespace (a container's,
``/proc/<pid>/ns/net``): only the listening thread enters it, so the CLIs in a container with no
network but its loopback reach the server, and the test process reads the records directly.
"""

from __future__ import annotations

import ctypes
import json
import os
import threading
import typing as t
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REPLY = "Noted."
# The Gemini CLI's routing and checks ask for JSON matching a schema; one object satisfies them all.
GEMINI_JSON_ANSWER = {"reasoning": "simple", "model_choice": "flash", "complexity_reasoning": "simple",
                      "complexity_score": 1, "next_speaker": "user"}
_CLONE_NEWNET = 0x40000000


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: str


def _sse(events: t.Iterable[t.Tuple[t.Optional[str], t.Any]]) -> bytes:
    chunks = []
    for name, data in events:
        text = data if isinstance(data, str) else json.dumps(data)
        chunks.append((f"event: {name}\n" if name else "") + f"data: {text}\n\n")
    return "".join(chunks).encode()


def anthropic_message(stream: bool) -> t.Tuple[str, bytes]:
    usage = {"input_tokens": 10, "output_tokens": 2}
    message = {"id": "msg_fake", "type": "message", "role": "assistant", "model": "claude-fake", "content": [],
               "stop_reason": None, "stop_sequence": None, "usage": usage}
    if not stream:
        done = dict(message, content=[{"type": "text", "text": REPLY}], stop_reason="end_turn")
        return "application/json", json.dumps(done).encode()
    return "text/event-stream", _sse([
        ("message_start", {"type": "message_start", "message": message}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": REPLY}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": 2}}),
        ("message_stop", {"type": "message_stop"}),
    ])


def openai_response() -> t.Tuple[str, bytes]:
    item = {"type": "message", "id": "msg_fake", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": REPLY, "annotations": []}]}
    response = {"id": "resp_fake", "object": "response", "status": "in_progress", "model": "fake", "output": []}
    usage = {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 2,
             "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 12}
    return "text/event-stream", _sse([
        ("response.created", {"type": "response.created", "response": response}),
        ("response.output_item.added", {"type": "response.output_item.added", "output_index": 0, "item": dict(item, content=[])}),
        ("response.output_text.delta", {"type": "response.output_text.delta", "item_id": "msg_fake", "output_index": 0,
                                        "content_index": 0, "delta": REPLY}),
        ("response.output_item.done", {"type": "response.output_item.done", "output_index": 0, "item": item}),
        ("response.completed", {"type": "response.completed",
                                "response": dict(response, status="completed", output=[item], usage=usage)}),
    ])


def gemini_content(text: str, stream: bool) -> t.Tuple[str, bytes]:
    answer = {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP", "index": 0}],
              "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 2, "totalTokenCount": 12},
              "modelVersion": "gemini-fake"}
    if stream:
        return "text/event-stream", _sse([(None, answer)])
    return "application/json", json.dumps(answer).encode()


def chat_completion(stream: bool) -> t.Tuple[str, bytes]:
    usage = {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}
    base = {"id": "chatcmpl-fake", "created": 0, "model": "fake"}
    if not stream:
        return "application/json", json.dumps(dict(base, object="chat.completion", usage=usage, choices=[
            {"index": 0, "message": {"role": "assistant", "content": REPLY}, "finish_reason": "stop"}])).encode()
    chunk = dict(base, object="chat.completion.chunk")
    return "text/event-stream", _sse([
        (None, dict(chunk, choices=[{"index": 0, "delta": {"role": "assistant", "content": REPLY}, "finish_reason": None}])),
        (None, dict(chunk, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}], usage=usage)),
        (None, "[DONE]"),
    ])


def answer(path: str, body: str) -> t.Tuple[int, str, bytes]:
    """Status, content type and body for one request."""
    try:
        request = json.loads(body) if body else {}
    except ValueError:
        request = {}
    stream = bool(isinstance(request, dict) and request.get("stream"))
    route = path.split("?", 1)[0]
    if route.endswith("/messages"):
        return (200, *anthropic_message(stream))
    if route.endswith("/responses"):
        return (200, *openai_response())
    if route.endswith(":streamGenerateContent"):
        return (200, *gemini_content(REPLY, stream=True))
    if route.endswith(":generateContent"):
        return (200, *gemini_content(json.dumps(GEMINI_JSON_ANSWER), stream=False))
    if route.endswith("/chat/completions"):
        return (200, *chat_completion(stream))
    return 404, "application/json", b'{"error": {"message": "not served by the fake model API"}}'


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def _record_and_answer(self, head_only: bool = False) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        self.server.record(Request(self.command, self.path, body))
        status, content_type, payload = (200, "text/plain", b"") if head_only else answer(self.path, body)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if not head_only:
            self.wfile.write(payload)

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self._record_and_answer()

    def do_GET(self) -> None:  # noqa: N802
        self._record_and_answer()

    def do_HEAD(self) -> None:  # noqa: N802
        self._record_and_answer(head_only=True)

    def log_message(self, format: str, *args: t.Any) -> None:  # noqa: A002 (http.server's signature)
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: t.Tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self.requests: t.List[Request] = []
        self._lock = threading.Lock()

    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)


def _enter_netns(path: str) -> None:
    """setns(2) for the calling thread only (os.setns needs Python 3.12)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


class FakeModelAPI:
    """``with FakeModelAPI(port, netns=path) as api:`` serves on 127.0.0.1:port in that network namespace."""

    def __init__(self, port: int, netns: t.Optional[str] = None) -> None:
        self.port = port
        self._netns = netns
        self._server: t.Optional[_Server] = None
        self._thread: t.Optional[threading.Thread] = None

    def __enter__(self) -> "FakeModelAPI":
        ready = threading.Event()
        failure: t.List[BaseException] = []

        def serve() -> None:
            try:
                if self._netns:
                    _enter_netns(self._netns)
                self._server = _Server(("127.0.0.1", self.port))
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                ready.set()
                return
            ready.set()
            self._server.serve_forever(poll_interval=0.1)

        self._thread = threading.Thread(target=serve, name=f"fake-model-api-{self.port}", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def __exit__(self, *exc_info: t.Any) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    @property
    def requests(self) -> t.List[Request]:
        assert self._server is not None
        with self._server._lock:
            return list(self._server.requests)
