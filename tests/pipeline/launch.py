"""Start a ``real-lightning`` command on several local ranks (gloo, CPU) under a timeout that names stalled ranks."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc``'s process group (it was started in a session of its own) and reap ``proc``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _tail(path: Path, lines: int = 25) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no output)"


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
    procs, files = [], []
    for rank in range(world_size):
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "PYTHONHASHSEED": "0",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "WORLD_SIZE": str(world_size),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "GROUP_RANK": "0",
            "NODE_RANK": "0",
            "LOCAL_WORLD_SIZE": str(world_size),
            "OMP_NUM_THREADS": "1",
            "PYTHONFAULTHANDLER": "1",  # a rank that aborts shows every thread's stack
        }
        out = (logs / f"rank{rank}.log").open("w")
        files.append(out)
        cmd = [sys.executable, "-m", *module, *args]
        # a session per rank: the timeout kills the rank with its worker processes (a rank blocked in a collective
        # ignores SIGTERM, so SIGKILL)
        procs.append(
            subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        )
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
        for f in files:
            f.close()
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
