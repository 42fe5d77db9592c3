"""Start a ``real-lightning`` command on several local ranks (gloo, CPU), or as one plain process, under a timeout that
names stalled ranks."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# set for each rank; read at run time (init_process_group, Lightning's cluster environment), never at import
RANK_VARIABLES = (
    "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "GROUP_RANK", "NODE_RANK", "LOCAL_WORLD_SIZE",
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ForkedRank:
    """A rank forked by the zygote: ``pid``, ``poll()``, ``wait()`` and ``returncode`` as ``subprocess.Popen`` has
    them (the zygote, its parent, reports its exit)."""

    def __init__(self, zygote: Zygote, pid: int) -> None:
        self.zygote, self.pid, self.returncode = zygote, pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.zygote.read(0, until=lambda: False)
            self.returncode = self.zygote.exits.pop(self.pid, None)
        return self.returncode

    def wait(self) -> int:
        self.zygote.read(3600, until=lambda: self.returncode is not None or self.pid in self.zygote.exits)
        return self.poll()


class Zygote:
    """``tests/pipeline/zygote.py`` started with ``env``: forks ranks that skip the ~4 s of imports."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env, self.exits, self.answers, self.buffer = env, {}, [], b""
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.pipeline.zygote"],
            cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        self.read(timeout_s=300, until=lambda: bool(self.answers))
        ready = self.answers.pop(0)
        if "ready" not in ready:
            raise RuntimeError(f"the launch zygote did not start: {ready}")

    def read(self, timeout_s: float, until: Callable[[], bool]) -> None:
        """Read the zygote's messages (exits into ``exits``, others into ``answers``) until ``until()`` or the
        timeout."""
        deadline = time.monotonic() + timeout_s
        fd = self.process.stdout.fileno()
        while True:
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                message = json.loads(line)
                if "exit" in message:
                    self.exits[message["exit"]] = message["code"]
                else:
                    self.answers.append(message)
            if until() or not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                return
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise RuntimeError(f"the launch zygote stopped answering (exit code {self.process.poll()})")
            self.buffer += chunk

    def start(self, module: str, args: list[str], env: dict[str, str], log: Path) -> ForkedRank:
        request = {"module": module, "args": args, "env": env, "cwd": str(REPO), "log": str(log)}
        self.process.stdin.write((json.dumps(request) + "\n").encode())
        self.process.stdin.flush()
        self.read(timeout_s=60, until=lambda: bool(self.answers))
        if not self.answers:
            raise RuntimeError("the launch zygote did not fork the rank within 60 s")
        return ForkedRank(self, self.answers.pop(0)["pid"])

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self.process.stdin.close()
        kill_group(self.process)


_zygote: Zygote | None = None


def _zygote_for(env: dict[str, str]) -> Zygote | None:
    """The zygote whose imports saw ``env`` (less the rank variables); None where ``REAL_LIGHTNING_TEST_ZYGOTE=0``."""
    global _zygote
    if os.environ.get("REAL_LIGHTNING_TEST_ZYGOTE", "1") == "0":
        return None
    base = {k: v for k, v in env.items() if k not in RANK_VARIABLES and k != "PYTEST_CURRENT_TEST"}
    if _zygote is not None and (_zygote.env != base or _zygote.process.poll() is not None):
        _zygote.close()
        _zygote = None
    if _zygote is None:
        _zygote = Zygote(base)
        atexit.register(_zygote.close)
    return _zygote


def kill_group(proc: subprocess.Popen | ForkedRank) -> None:
    """SIGKILL ``proc``'s process group (it was started in a session of its own) and reap ``proc``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _tail(path: Path, lines: int = 25) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no output)"


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen | ForkedRank:
    """``python -m *command`` in a session of its own (a timeout kills it with its worker processes: a rank blocked in
    a collective ignores SIGTERM, so SIGKILL), its output in a fresh ``log``: forked from the zygote for ``env``, or a
    fresh interpreter where there is none."""
    with log.open("w") as out:  # truncated either way; a zygote's child appends to it
        zygote = _zygote_for(env)
        if zygote is not None:
            return zygote.start(command[0], command[1:], env, log)
        return subprocess.Popen(
            [sys.executable, "-m", *command], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def job_env() -> dict[str, str]:
    """The environment of every process the tests start through ``run_ranks`` and ``run_cli``, less the rank
    variables: one torch thread, this checkout importable, stacks on a fatal signal."""
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": "1",
        "PYTHONFAULTHANDLER": "1",  # a process that aborts shows every thread's stack
    }


def run_cli(args: list[str], log: Path, timeout_s: float = 600) -> tuple[int, str]:
    """Run ``python -m real_lightning.cli *args`` as one plain process (no rank variables: Lightning sees no launcher),
    forked from the zygote like the ranks; returns its exit code (negative: killed by that signal) and its output.

    A run still going after ``timeout_s`` is killed with its process group and raises ``AssertionError`` with the
    end of its output.
    """
    proc = _start(["real_lightning.cli", *args], job_env(), log)
    deadline = time.monotonic() + timeout_s
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stalled = proc.poll() is None
        kill_group(proc)
    if stalled:
        raise AssertionError(f"real-lightning {args[0]} still running after {timeout_s:.0f} s (a hang)\n{_tail(log)}")
    return proc.returncode, log.read_text(errors="replace")


def run_ranks(
    args: list[str],
    world_size: int,
    logs: Path,
    timeout_s: float = 420,
    exit_code: int = 0,
    module: list[str] = ("real_lightning.cli",),
) -> list[str]:
    """Run ``python -m real_lightning.cli *args`` as ranks 0..world_size-1 of one job; returns each rank's output.

    ``module`` replaces ``real_lightning.cli`` (with its own leading arguments), e.g. the collective tracer.

    The processes get the torchelastic environment (RANK, LOCAL_RANK, WORLD_SIZE, ...), which Lightning
    takes as an external launch. Raises ``AssertionError`` naming the ranks that exited with another code
    than ``exit_code`` (-9: killed on purpose), or that were still running at the timeout (a hang), with the
    end of their output.
    """
    logs.mkdir(parents=True, exist_ok=True)
    port = str(free_port())
    procs = []
    for rank in range(world_size):
        env = {
            **job_env(),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "WORLD_SIZE": str(world_size),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "GROUP_RANK": "0",
            "NODE_RANK": "0",
            "LOCAL_WORLD_SIZE": str(world_size),
        }
        procs.append(_start([*module, *args], env, logs / f"rank{rank}.log"))
    deadline = time.monotonic() + timeout_s
    try:
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.5)
            if any(p.poll() not in (None, exit_code) for p in procs):  # one rank failed: a moment for the others
                time.sleep(5)
                break
    finally:
        stalled = [rank for rank, p in enumerate(procs) if p.poll() is None]
        for p in procs:
            kill_group(p)
    failed = [rank for rank, p in enumerate(procs) if p.returncode != exit_code and rank not in stalled]
    if stalled or failed:
        parts = []
        if stalled:
            parts.append(f"rank(s) {stalled} stalled: still running after {timeout_s:.0f} s (a hang)")
        if failed:
            parts.append(f"rank(s) {failed} failed with exit codes {[procs[r].returncode for r in failed]}")
        details = "\n".join(f"--- rank {r} ---\n{_tail(logs / f'rank{r}.log')}" for r in sorted({*stalled, *failed}))
        raise AssertionError("; ".join(parts) + "\n" + details)
    return [(logs / f"rank{rank}.log").read_text(errors="replace") for rank in range(world_size)]
