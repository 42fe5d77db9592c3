"""A stand-in for ``vllm serve`` (the routes :class:`VLLMServerEngine` calls), recording every call in order.

Completions are deterministic functions of the request: sample j of a prompt is ``[seed % 7 + j + 3, ...]`` with
log-prob ``-0.1 · (position + 1)``; ``finish_reason`` is ``length`` when ``max_tokens`` tokens were produced.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeVLLMServer:
    """One fake server on 127.0.0.1 (a free port); ``calls`` lists (method, route, query, body) in arrival order.

    Attributes to steer it: ``delay_s`` (before answering a completion), ``fail`` (route → HTTP status to answer,
    ``failures`` times), ``wrong`` (answer completions with no token ids), ``world_size``, ``response_tokens``.
    """

    def __init__(self, response_tokens: int = 3, world_size: int = 1) -> None:
        self.calls: list[tuple[str, str, dict[str, Any], Any]] = []
        self.version: str | None = None
        self.delay_s, self.fail, self.failures, self.wrong = 0.0, {}, 0, False
        self.world_size, self.response_tokens = world_size, response_tokens
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._answer("GET")

            def do_POST(self) -> None:
                self._answer("POST")

            def _answer(self, method: str) -> None:
                parsed = urllib.parse.urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                query = dict(urllib.parse.parse_qsl(parsed.query))
                status, answer = server.respond(method, parsed.path, query, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()

    def routes(self) -> list[str]:
        """The routes called so far, health checks left out."""
        return [route for _, route, _, _ in self.calls if route != "/health"]

    def respond(self, method: str, route: str, query: dict[str, Any], body: Any) -> tuple[int, Any]:
        with self.lock:
            self.calls.append((method, route, query, body))
            if route in self.fail and self.failures > 0:
                self.failures -= 1
                return self.fail[route], {"error": "injected"}
        if route == "/health":
            return 200, None
        if route == "/v1/models":
            return 200, {"data": [{"id": "tiny"}]}
        if route == "/weight_info":
            return 200, {"weight_version": self.version}
        if route == "/update_weight_version":
            self.version = body["new_version"]
            return 200, {"success": True}
        if route == "/get_world_size":
            return 200, {"world_size": self.world_size}
        if route == "/v1/completions":
            time.sleep(self.delay_s)
            return 200, self.completion(body)
        return 200, {"status": "ok"}

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        choices = []
        for j in range(body["n"]):
            count = min(self.response_tokens, body["max_tokens"])
            ids = [body["seed"] % 7 + j + 3 + k for k in range(count)]
            choice = {"index": j, "text": "", "finish_reason": "length" if count == body["max_tokens"] else "stop"}
            if not self.wrong:
                choice |= {"token_ids": ids, "logprobs": {"token_logprobs": [-0.1 * (k + 1) for k in range(count)]}}
            choices.append(choice)
        return {"choices": list(reversed(choices))}  # out of order: the engine sorts by index
