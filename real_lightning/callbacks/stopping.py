"""Stops that keep the work: SIGTERM and SIGINT end a fit at a step boundary with a checkpoint that resumes.

Schedulers preempt with SIGTERM (SLURM, Kubernetes), people with Ctrl-C. :class:`GracefulStop` (always on in the
CLI, the last callback) replaces Lightning's SIGTERM handler — which issues a broadcast inside the signal
handler, on whichever rank got the signal, and ends the run with exit code 0 and no checkpoint — by one that only
records the signal. At the end of every optimizer step every rank all-reduces "a stop was asked for" (one small
all-reduce per step, on every rank), so all ranks stop after the same step, whichever of them got the signal.
Then every rank takes part in writing the checkpoint (the ModelCheckpoint's ``last.ckpt`` when it keeps one, so
``--ckpt_path last`` finds it) and raises :class:`StopRequested` at the next hook, once Lightning has logged the
step's metrics and before a validation would start; :func:`real_lightning.cli.main` prints how to
resume and exits with 128 + the signal's number (143 for SIGTERM, 130 for SIGINT), as a shell reports a process
ended by that signal.

The step in progress finishes first (generation, grading, the update). Grading a batch of responses is told
to stop early (:func:`real_lightning.verifiers.batch.request_stop`): its remaining responses score 0 as
timeouts, so a stop does not wait for minutes of slow grading. A second Ctrl-C interrupts at once (no checkpoint).
A stop asked for during validation takes effect at the end of the next training step.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from types import FrameType
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

from real_lightning.callbacks.log_folder import resolve_log_folder
from real_lightning.distributed import all_reduce_max

log = logging.getLogger(__name__)

HANDLED = (signal.SIGTERM, signal.SIGINT)


class StopRequested(Exception):
    """A fit stopped on a signal after writing a checkpoint; :func:`real_lightning.cli.main` turns it into the
    exit code ``128 + signum``."""

    def __init__(self, signum: int, step: int, checkpoint: Path) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        resume = "last" if checkpoint.stem == "last" else str(checkpoint)
        super().__init__(
            f"Stopped by {name} after step {step}; checkpoint written to {checkpoint}. "
            f"Continue with the same command and --ckpt_path {resume}"
        )

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def stop_checkpoint_path(trainer: Trainer, name: str) -> Path:
    """Where a stop writes its checkpoint: the ModelCheckpoint's ``last.ckpt`` when it keeps one (``--ckpt_path
    last`` finds it), else ``<checkpoints>/<name>-step=N.ckpt``. Every rank calls this (it may broadcast)."""
    callback = trainer.checkpoint_callback
    dirpath = getattr(callback, "dirpath", None)
    if dirpath and getattr(callback, "save_last", False):
        return Path(dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
    folder = Path(dirpath) if dirpath else resolve_log_folder(trainer) / "checkpoints"
    return folder / f"{name}-step={trainer.global_step}.ckpt"


class GracefulStop(Callback):
    """End ``fit`` after the current optimizer step on SIGTERM or SIGINT, with a checkpoint (module docstring).

    Put it last among the callbacks (the CLI does), so that every other callback has finished the step when the
    checkpoint records their state.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._pending: StopRequested | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        first = self.signum is None
        self.signum = self.signum or signum
        if first:
            from real_lightning.verifiers.batch import request_stop

            request_stop()
            log.warning(
                "%s received: stopping after the current step with a checkpoint%s",
                signal.Signals(signum).name,
                " (Ctrl-C again to stop at once, without one)" if signum == signal.SIGINT else "",
            )

    def _install(self) -> None:
        for signum in HANDLED:
            previous = signal.signal(signum, self._handle)
            self._previous.setdefault(signum, previous)

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            self._install()

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._install()  # again: Lightning registered its own SIGTERM handler after setup

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        signum = all_reduce_max(self.signum or 0)  # every rank, every step: all stop after the same step
        if signum and self._pending is None:
            path = stop_checkpoint_path(trainer, "stop")
            trainer.save_checkpoint(path)  # here, like ModelCheckpoint's: the step done, its state complete
            self._pending = StopRequested(signum, trainer.global_step, path)

    # raised at the next hook, once Lightning has logged the step's metrics, and before any validation
    def _raise_pending(self) -> None:
        if self._pending is not None:
            raise self._pending

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._raise_pending()

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._raise_pending()

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._raise_pending()

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        from real_lightning.verifiers.batch import clear_stop

        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
        clear_stop()
