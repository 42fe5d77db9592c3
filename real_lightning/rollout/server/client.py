"""One vLLM server seen over HTTP: JSON calls with a timeout and retries, and errors that name the server and the
call (standard library only: the trainer needs no HTTP package and no vLLM to talk to a fleet).

Examples:
    >>> client = ServerClient("http://127.0.0.1:9", timeout_s=0.5, retries=0)
    >>> try:
    ...     client.get("/health", what="is it up")
    ... except ServerError as error:
    ...     print(error)  # doctest: +ELLIPSIS
    vLLM server http://127.0.0.1:9 failed GET /health (is it up): no answer (...)
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class ServerError(RuntimeError):
    """A vLLM server was down, too slow, or answered wrongly; the message names its URL and what it was asked."""


class ServerClient:
    """JSON over HTTP to one server.

    Args:
        url: ``http://host:port`` (no trailing route).
        timeout_s: seconds one call may take (a generation call passes its own).
        retries: further tries after a refused connection or a 5xx answer (a timeout is not retried: the server
            may still be working on the call).
        backoff_s: seconds before the first retry, doubled after each.
    """

    def __init__(self, url: str, timeout_s: float = 60.0, retries: int = 2, backoff_s: float = 1.0) -> None:
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"a vLLM server URL must look like http://host:port, got {url!r}")
        if timeout_s <= 0 or retries < 0:
            raise ValueError(f"timeout_s must be > 0 and retries >= 0, got {timeout_s} and {retries}")
        self.url, self.timeout_s, self.retries, self.backoff_s = url.rstrip("/"), timeout_s, retries, backoff_s

    def __repr__(self) -> str:
        return f"ServerClient({self.url!r})"

    def get(self, route: str, what: str, timeout_s: float | None = None) -> Any:
        """``GET route``; the decoded JSON answer (None for an empty body)."""
        return self.call("GET", route, None, what, timeout_s)

    def post(
        self,
        route: str,
        body: Any = None,
        what: str = "",
        timeout_s: float | None = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        """``POST route`` with a JSON ``body`` (and query ``params``); the decoded JSON answer (None when empty)."""
        if params:
            route = f"{route}?{urllib.parse.urlencode(params)}"
        return self.call("POST", route, body, what, timeout_s)

    def call(self, method: str, route: str, body: Any, what: str, timeout_s: float | None = None) -> Any:
        """One call, retried after a refused connection or a 5xx answer; raises :class:`ServerError` naming the
        server, the call and ``what`` it was asked (a short human description)."""
        timeout = timeout_s or self.timeout_s
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        delay, reason = self.backoff_s, ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(delay)
                delay *= 2
            request = urllib.request.Request(self.url + route, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=timeout) as answer:
                    raw = answer.read()
            except urllib.error.HTTPError as error:
                detail = error.read().decode(errors="replace")[:500]
                reason = f"HTTP {error.code}: {detail}"
                if error.code < 500:  # the request is wrong: another try gets the same answer
                    break
                continue
            except TimeoutError:
                raise self._error(method, route, what, f"no answer within {timeout:g} s") from None
            except (urllib.error.URLError, ConnectionError) as error:
                cause = getattr(error, "reason", error)
                if isinstance(cause, TimeoutError):
                    raise self._error(method, route, what, f"no answer within {timeout:g} s") from None
                reason = f"no answer ({cause})"
                continue
            try:
                return json.loads(raw) if raw.strip() else None
            except json.JSONDecodeError:
                raise self._error(method, route, what, f"answered with something not JSON: {raw[:200]!r}") from None
        tries = f" after {self.retries + 1} tries" if self.retries else ""
        raise self._error(method, route, what, reason + tries)

    def _error(self, method: str, route: str, what: str, reason: str) -> ServerError:
        asked = f" ({what})" if what else ""
        return ServerError(f"vLLM server {self.url} failed {method} {route.split('?')[0]}{asked}: {reason}")


def wait_until_up(client: ServerClient, timeout_s: float, process: Any = None) -> None:
    """Poll ``GET /health`` until the server answers 200, for up to ``timeout_s`` seconds (a server loading its
    model refuses connections meanwhile); ``process`` (a ``subprocess.Popen``), when given, must stay alive."""
    deadline = time.monotonic() + timeout_s
    probe = ServerClient(client.url, timeout_s=5.0, retries=0)
    last = ""
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServerError(f"vLLM server {client.url} exited with code {process.returncode} while starting")
        try:
            probe.get("/health", what="is it up")
            return
        except ServerError as error:
            last = str(error)
        time.sleep(0.5)
    raise ServerError(f"vLLM server {client.url} did not come up within {timeout_s:g} s (last: {last})")
