"""Base for callbacks that act once every N optimizer steps and remember, across a resume, which steps they did."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from real_lightning.losses.common import LossOutput
from real_lightning.rollout.batch import RolloutBatch
from real_lightning.step.output import step_output


def logger_step(trainer: Trainer) -> int:
    """The step Lightning gives what the current training batch logs (``self.log``): the optimizer steps before it
    (as Lightning's own ``LearningRateMonitor`` does).

    Events written at it line up with ``train/*`` and, on a resume from a checkpoint written after this batch,
    are kept: a resume drops the events at the checkpoint's step and later (:mod:`real_lightning.checkpoints.resume`).
    """
    return trainer.fit_loop.epoch_loop._batches_that_stepped


class PeriodicStepCallback(Callback):
    """Gate :meth:`due` on every ``every_n_steps``-th optimizer step, each step at most once.

    The handled steps are part of the checkpointed state, so a resumed run neither repeats nor
    skips one.
    """

    def __init__(self, every_n_steps: int) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.logged_steps: list[int] = []

    @property
    def state_key(self) -> str:
        return self._generate_state_key(every_n_steps=self.every_n_steps)

    def due(self, trainer: Trainer) -> bool:
        """The current optimizer step is a multiple of ``every_n_steps`` and was not handled yet."""
        step = trainer.global_step
        return step % self.every_n_steps == 0 and step not in self.logged_steps

    def mark_done(self, trainer: Trainer) -> None:
        self.logged_steps.append(trainer.global_step)

    @staticmethod
    def step_outputs(outputs: Any) -> tuple[LossOutput | None, RolloutBatch | None]:
        """(loss output, rollouts) of the :class:`~real_lightning.step.output.StepOutput` the step returned;
        Nones otherwise."""
        step = step_output(outputs)
        return (None, None) if step is None else (step.loss_output, step.rollouts)

    def warn_without_tensorboard(self, trainer: Trainer, what: str) -> None:
        """Say once, at the start of fit, that ``what`` needs a TensorBoard logger and will not be written."""
        if not any(isinstance(logger, TensorBoardLogger) for logger in trainer.loggers):
            rank_zero_warn(
                f"{type(self).__name__}: {what} need a TensorBoardLogger; the trainer has none, so they are not written"
            )

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.check_preconditions(trainer)

    def check_preconditions(self, trainer: Trainer) -> None:
        """Warn once about anything this callback needs and the trainer lacks (override)."""

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"logged_steps": list(self.logged_steps)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.logged_steps = list(state_dict.get("logged_steps", []))
