"""The stall watchdog's detection and report, and the stop handler's signal logic, in one process (the
multi-process runs are in tests/pipeline: a SIGSTOPped rank, SIGTERM on one rank, a rank-0-only collective)."""

from __future__ import annotations

import signal
import time
from datetime import timedelta

import pytest
from torch.distributed import TCPStore

from real_lightning.callbacks.stopping import GracefulStop, StopRequested
from real_lightning.callbacks.watchdog import StallWatchdog
from real_lightning.rewards.grading import clear_stop, stop_requested
from tests.pipeline.launch import free_port


def _watch(timeout_s: float, rank: int = 0, world: int = 1) -> tuple[StallWatchdog, list[str]]:
    dog = StallWatchdog(timeout_s, rank, world, interval_s=0.05)
    reports: list[str] = []
    dog.on_stall = reports.append
    return dog, reports


def _wait_for(reports: list[str], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not reports and time.monotonic() < deadline:
        time.sleep(0.02)


def test_progress_keeps_the_watchdog_quiet_and_a_stall_is_reported() -> None:
    dog, reports = _watch(0.4)
    dog.start()
    try:
        for step in range(20):  # 1 s of steps every 0.05 s: never 0.4 s without progress
            dog.beat(f"step {step} done")
            time.sleep(0.05)
        assert reports == []
        _wait_for(reports, 3)
    finally:
        dog.stop()
    assert len(reports) == 1
    assert "[rank 0] Stall: no progress for" in reports[0] and "last progress: step 19 done" in reports[0]
    assert "health.stall_timeout_s = 0.4" in reports[0]


def test_the_report_names_the_rank_that_did_not_arrive(monkeypatch) -> None:
    """Two watchdogs share a real TCPStore, as two ranks would: rank 1 beats once and freezes (its heartbeat
    thread stops, as under SIGSTOP); rank 0 goes one step further and waits. Rank 0's report names rank 1."""
    port = free_port()
    server = TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=10))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    frozen, _ = _watch(60, rank=1, world=2)
    frozen.start()
    frozen.beat("step 1 done")
    time.sleep(0.2)
    frozen.stop()  # no more heartbeats from rank 1
    time.sleep(1.2)  # its last one is now older than 2.5 heartbeat intervals + 1 s
    waiting, reports = _watch(0.5, rank=0, world=2)
    waiting.start()
    try:
        waiting.beat("step 1 done")
        waiting.beat("step 2 done")
        _wait_for(reports, 5)
    finally:
        waiting.stop()
    report = reports[0]
    assert "rank 1: 1 progress marks, last: step 1 done (no heartbeat for" in report, report
    assert "stopped or dead" in report and "rank 0: 2 progress marks, last: step 2 done (alive" in report, report
    assert "rank(s) [1] did not arrive" in report, report
    del server


def test_bad_stall_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match="stall_timeout_s must be > 0"):
        StallWatchdog(0, 0, 1)


def test_a_signal_only_records_the_stop_and_tells_the_grader() -> None:
    stop = GracefulStop()
    try:
        stop._handle(signal.SIGTERM, None)
        assert stop.signum == signal.SIGTERM and stop_requested()
        stop._handle(signal.SIGINT, None)  # a second, other signal: the first is kept
        assert stop.signum == signal.SIGTERM
    finally:
        clear_stop()


def test_a_second_ctrl_c_interrupts_at_once() -> None:
    stop = GracefulStop()
    try:
        stop._handle(signal.SIGINT, None)
        with pytest.raises(KeyboardInterrupt):
            stop._handle(signal.SIGINT, None)
    finally:
        clear_stop()


def test_stop_requested_says_how_to_resume_and_exits_like_a_shell() -> None:
    from pathlib import Path

    stop = StopRequested(signal.SIGTERM, 7, Path("runs/x/checkpoints/last.ckpt"))
    assert stop.exit_code == 143 and StopRequested(signal.SIGINT, 7, Path("a.ckpt")).exit_code == 130
    assert str(stop) == (
        "Stopped by SIGTERM after step 7; checkpoint written to runs/x/checkpoints/last.ckpt. "
        "Continue with the same command and --ckpt_path last"
    )
