"""A stall is never silent: when a rank makes no progress for ``stall_timeout_s``, every rank that can still run
prints its threads' Python stacks and the run exits non-zero, naming the rank(s) that did not arrive.

Progress is a step ended, a validation batch ended or a checkpoint written (:meth:`StallWatchdog.beat`, called
by :class:`~real_lightning.callbacks.run_health.RunHealthMonitor`'s hooks). A daemon thread on every rank
publishes this rank's progress (a count, where it is, when) every few seconds outside the process group: in the
rendezvous store (a TCPStore client of its own, with a short timeout, at ``MASTER_ADDR:MASTER_PORT``), so a
rank blocked inside a collective — which never returns to Python, and ignores SIGTERM — is still described by
the others. When this rank's own progress is older than the timeout, the thread reads every rank's record and
prints, for each: its progress count and place, and whether its heartbeat is fresh (alive, waiting) or stale
(stopped, or dead); the ranks behind the furthest are the ones that did not arrive. Then it dumps all of this
process's thread stacks (``faulthandler``), kills the processes Lightning launched for the other local ranks,
and ends the process with :data:`STALL_EXIT_CODE`.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

STALL_EXIT_CODE = 124
"""The exit code of a run the watchdog ended (what ``timeout`` reports for a command past its limit)."""

_KEY = "real_lightning/watchdog/rank{}"


@dataclass
class Progress:
    """Where one rank is: ``count`` progress marks so far, the last one's ``place`` and wall ``time`` (s)."""

    count: int
    place: str
    time: float


def _store_client(timeout_s: float) -> Any | None:
    """A client of the rendezvous store (its own connection, short timeout); None without one."""
    host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not host or not port:
        return None
    from torch.distributed import TCPStore

    try:
        return TCPStore(host, int(port), is_master=False, timeout=timedelta(seconds=timeout_s))
    except Exception:  # no store to reach: watch this rank alone
        return None


class StallWatchdog:
    """Ends a stalled run loudly (module docstring). ``start`` on every rank at the start of a run, ``beat`` at
    each progress mark, ``stop`` at the end.

    Args:
        timeout_s: seconds without progress on this rank before the run is ended.
        rank, world_size: this process's global rank and the number of ranks.
        interval_s: seconds between heartbeats (default: min(10, timeout_s / 4)).
    """

    def __init__(self, timeout_s: float, rank: int, world_size: int, interval_s: float | None = None) -> None:
        if not timeout_s > 0:
            raise ValueError(f"stall_timeout_s must be > 0, got {timeout_s}")
        self.timeout_s, self.rank, self.world_size = timeout_s, rank, world_size
        self.interval_s = interval_s or min(10.0, timeout_s / 4)
        self.progress = Progress(0, "start", time.time())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._store: Any | None = None
        self.on_stall = self._exit  # replaced in tests

    def beat(self, place: str) -> None:
        """Record progress (called from the training thread)."""
        self.progress = Progress(self.progress.count + 1, place, time.time())

    def start(self) -> None:
        if self._thread is not None:
            return
        self.progress = Progress(self.progress.count, self.progress.place, time.time())
        self._stop.clear()
        if self.world_size > 1:
            self._store = _store_client(max(self.interval_s, 5.0))
        self._thread = threading.Thread(target=self._run, name="real-lightning-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._thread = None
        self._store = None  # close the store client before the process group goes (no socket left at exit)

    # --- the thread ----------------------------------------------------------------------------------------------

    def _run(self) -> None:
        self._publish()
        while not self._stop.wait(self.interval_s):
            self._publish()
            if time.time() - self.progress.time > self.timeout_s and not self._stop.is_set():
                self.on_stall(self.report())
                return

    def _publish(self) -> None:
        if self._store is None:
            return
        record = {**self.progress.__dict__, "heartbeat": time.time()}
        with contextlib.suppress(Exception):
            self._store.set(_KEY.format(self.rank), json.dumps(record))

    def _read(self, rank: int) -> dict | None:
        if rank == self.rank:
            return {**self.progress.__dict__, "heartbeat": time.time()}
        if self._store is None:
            return None
        try:
            if not self._store.check([_KEY.format(rank)]):
                return None
            return json.loads(self._store.get(_KEY.format(rank)))
        except Exception:
            return None

    def report(self) -> str:
        """What every rank is doing, as far as this rank can tell, and which ranks did not arrive."""
        now = time.time()
        records = {r: self._read(r) for r in range(self.world_size)}
        lines = [
            f"[rank {self.rank}] Stall: no progress for {now - self.progress.time:.0f} s "
            f"(health.stall_timeout_s = {self.timeout_s:g}); this rank's last progress: {self.progress.place}."
        ]
        known = {r: rec for r, rec in records.items() if rec is not None}
        furthest = max((rec["count"] for rec in known.values()), default=0)
        behind, silent = [], []
        for r, rec in records.items():
            if rec is None:
                silent.append(r)
                lines.append(f"  rank {r}: no heartbeat read (the rendezvous store holds none or did not answer)")
                continue
            age = now - rec["heartbeat"]
            alive = age <= 2.5 * self.interval_s + 1  # a heartbeat is due every interval_s
            state = "alive, waiting" if alive else f"no heartbeat for {age:.0f} s: stopped or dead"
            if not alive:
                silent.append(r)
            if rec["count"] < furthest:
                behind.append(r)
            lines.append(f"  rank {r}: {rec['count']} progress marks, last: {rec['place']} ({state})")
        stalled = sorted(set(behind) | set(silent))
        if stalled:
            lines.append(f"  rank(s) {stalled} did not arrive; the others wait for them (stacks of rank {self.rank}:")
        else:
            lines.append(f"  every rank is at the same point: they wait in it together (stacks of rank {self.rank}:")
        lines[-1] += " below). The run is ended; resume it with --ckpt_path last."
        return "\n".join(lines)

    def _exit(self, report: str) -> None:
        print(report, file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        _kill_launched_ranks()
        os._exit(STALL_EXIT_CODE)


def _children(pid: int) -> list[int]:
    """The processes started by ``pid``, recursively (Linux ``/proc``; none elsewhere)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_launched_ranks() -> None:
    """SIGKILL this process's children: the other local ranks Lightning's launcher started (stopped, or blocked in
    a collective, where SIGTERM does not reach them) and grader workers."""
    for child in _children(os.getpid()):
        with contextlib.suppress(OSError):
            os.kill(child, signal.SIGKILL)


class WatchdogHooks(Callback):
    """The Lightning hooks that run a :class:`StallWatchdog` (``self.stall_timeout_s``; None: off). Mixed into
    :class:`~real_lightning.callbacks.run_health.RunHealthMonitor`, which calls :meth:`beat` at each step's end."""

    stall_timeout_s: float | None = None
    watchdog: StallWatchdog | None = None

    def beat(self, place: str) -> None:
        if self.watchdog is not None:
            self.watchdog.beat(place)

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.stall_timeout_s is not None and self.watchdog is None:
            self.watchdog = StallWatchdog(self.stall_timeout_s, trainer.global_rank, trainer.world_size)
            self.watchdog.start()
        self.beat(f"{stage} set up")

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
            self.watchdog = None

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.beat(f"training started at step {trainer.global_step}")

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.beat(f"validation started at step {trainer.global_step}")

    @override
    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.beat(f"validation batch {batch_idx} of set {dataloader_idx} done, at step {trainer.global_step}")

    @override
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        self.beat(f"checkpoint of step {trainer.global_step}")
