"""MechanismMonitor: logs :func:`~real_lightning.analysis.mechanism.mechanism_stats` every N optimizer steps."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from real_lightning.analysis.mechanism import mechanism_stats
from real_lightning.callbacks.periodic import PeriodicStepCallback, logger_step


class MechanismMonitor(PeriodicStepCallback):
    """Logs ``mechanism/*``: |s| quantiles, clipped positive tokens, domination among negatives, the rank
    correlation of weight with s among positives, distinct correct responses and pass@n (see
    :mod:`real_lightning.analysis.mechanism`), for whatever loss is training.

    Reads the step's :class:`~real_lightning.step.output.StepOutput` (loss outputs and rollouts) at
    ``on_train_batch_end``; issues no collective. Under several processes each rank's logger gets its own share
    of the step's groups (only rank 0's loggers write).

    Args:
        every_n_steps: log every this many optimizer steps.

    Examples:
        >>> MechanismMonitor(every_n_steps=1)
        MechanismMonitor(every_n_steps=1)
    """

    def __repr__(self) -> str:
        return f"MechanismMonitor(every_n_steps={self.every_n_steps})"

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        out, rollouts = self.step_outputs(outputs)
        if out is None or rollouts is None or not self.due(trainer):
            return
        lengths = rollouts.response_lengths
        ids = rollouts.response_ids
        responses = [tuple(ids[i, : int(n)].tolist()) for i, n in enumerate(lengths)]
        m = out.metrics
        stats = mechanism_stats(
            m["grad_weights"],
            m["scores"],
            m["labels"],
            rollouts.group_ids,
            rollouts.rewards,
            responses,
            lengths,
            m.get("clip_high_tokens"),
            m.get("advantages"),
        )
        logged_at = logger_step(trainer)
        for logger in trainer.loggers:
            logger.log_metrics({f"mechanism/{k}": v for k, v in stats.items()}, step=logged_at)
        self.mark_done(trainer)

    @override
    def check_preconditions(self, trainer: Trainer) -> None:
        if not trainer.loggers:
            rank_zero_warn("MechanismMonitor: the trainer has no logger, so nothing is logged")
