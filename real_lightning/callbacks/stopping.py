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
to stop early (:func:`real_lightning.rewards.grading.request_stop`): its remaining responses score 0 as
timeouts, so a stop does not wait for minutes of slow grading. A second Ctrl-C interrupts at once (no checkpoint).

A stop asked for during a validation inside ``fit`` (the paper's evaluation takes minutes) abandons it after the
current validation batch, on every rank (the same all-reduce, once per validation batch). The checkpoint is then
the one the step before the validation would have written: the loops' progress is the one recorded at that step's
end, so ``--ckpt_path last`` resumes exactly like a stop before the validation — the interrupted validation is
not run again (Lightning skips the validation of the step a checkpoint was written at) and training continues
with the next step.

A fatal error (an exception in a step, an out-of-memory) writes no checkpoint: the error can come after the
optimizer step and before the data position moved, so the state may hold half a step, and under several processes
the ranks that did not fail wait in a collective and cannot take part. Instead the failing rank says which
checkpoint is the newest and how to continue from it (:func:`resume_hint`).
"""

from __future__ import annotations

import copy
import logging
import signal
from pathlib import Path
from types import FrameType
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

from real_lightning.callbacks.log_folder import resolve_log_folder
from real_lightning.utils.distributed import all_reduce_max

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


def newest_checkpoint(trainer: Trainer) -> Path | None:
    """The newest checkpoint file the run's checkpoint callbacks wrote (local: no collective)."""
    paths = []
    for callback in trainer.checkpoint_callbacks:
        for name in ("last_model_path", "best_model_path"):
            path = getattr(callback, name, "")
            if path and Path(path).exists():
                paths.append(Path(path))
    return max(paths, key=lambda p: p.stat().st_mtime) if paths else None


def resume_hint(trainer: Trainer, error: BaseException) -> str:
    """What to tell a user whose fit failed at a step: the newest checkpoint and how to continue from it."""
    where = f"on rank {trainer.global_rank} " if trainer.world_size > 1 else ""
    head = f"The run failed {where}during step {trainer.global_step + 1} ({type(error).__name__}: {error})."
    newest = newest_checkpoint(trainer)
    if newest is None:
        return f"{head} No checkpoint was written before it: the run starts again from the beginning."
    resume = "last" if newest.stem == "last" else str(newest)
    return (
        f"{head} The newest checkpoint is {newest}; once the cause is fixed, continue with the same command and "
        f"--ckpt_path {resume} (the steps after that checkpoint are done again)."
    )


class GracefulStop(Callback):
    """End ``fit`` after the current optimizer step on SIGTERM or SIGINT, with a checkpoint (module docstring).

    Put it last among the callbacks (the CLI does), so that every other callback has finished the step when the
    checkpoint records their state.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._pending: StopRequested | None = None
        self._previous: dict[int, Any] = {}
        self._loops_at_step_end: dict[str, Any] | None = None  # the fit loop's progress when the last step ended
        self._in_validation = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        first = self.signum is None
        self.signum = self.signum or signum
        if first:
            from real_lightning.rewards.grading import request_stop

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
        # a copy of the loops' progress as a checkpoint written now records it (small: counters and the loader's
        # position), for a stop during the validation that may follow
        self._loops_at_step_end = copy.deepcopy(trainer.fit_loop.state_dict())
        signum = all_reduce_max(self.signum or 0)  # every rank, every step: all stop after the same step
        if signum and self._pending is None:
            self._save_and_stop(trainer, signum)

    def _save_and_stop(self, trainer: Trainer, signum: int) -> None:
        path = stop_checkpoint_path(trainer, "stop")
        trainer.save_checkpoint(path)  # here, like ModelCheckpoint's: the step done, its state complete
        self._pending = StopRequested(signum, trainer.global_step, path)

    def _validating_in_fit(self, trainer: Trainer) -> bool:
        return trainer.state.fn == "fit" and not trainer.sanity_checking and self._loops_at_step_end is not None

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
        if not self._validating_in_fit(trainer):
            return
        signum = all_reduce_max(self.signum or 0)  # every rank, every validation batch of a fit
        if signum and self._pending is None:
            self._in_validation = True
            try:
                self._save_and_stop(trainer, signum)
            finally:
                self._in_validation = False
            self._raise_pending()

    @override
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._in_validation:  # the loops as at the end of the step: resume skips the validation, then trains
            checkpoint["loops"]["fit_loop"] = copy.deepcopy(self._loops_at_step_end)

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
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if trainer.state.fn != "fit" or isinstance(exception, (StopRequested, KeyboardInterrupt)):
            return
        log.error(resume_hint(trainer, exception))

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        from real_lightning.rewards.grading import clear_stop

        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
        clear_stop()
