"""GradientWeightMonitor: where the gradient goes, for whatever loss is training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from real_lightning.allocation import allocation_stats
from real_lightning.callbacks.periodic import PeriodicStepCallback, logger_step
from real_lightning.groups import NEGATIVE, POSITIVE


class GradientWeightMonitor(PeriodicStepCallback):
    """Logs the per-rollout gradient weights ∂L/∂s of the last update every ``every_n_steps`` steps.

    Reads what ``training_step`` returns to ``on_train_batch_end``: ``outputs["loss_output"]`` (its
    ``grad_weights``, ``scores`` and ``labels`` over every micro-batch of the step) and
    ``outputs["rollouts"]`` (group ids, lengths, rewards, rows in the same order), and logs:

    - TensorBoard histograms ``weights/positive`` and ``weights/negative`` of the signed weights;
    - scalars ``weights/{pos,neg}_abs_max``, ``_abs_mean``, ``weights/domination_max`` / ``_mean``,
      ``weights/pos_zero_fraction`` and ``weights/rank_corr_{pos,neg}``
      (see :func:`~real_lightning.allocation.allocation_stats`);
    - optionally every rollout (step, group, label, score, weight, length) to
      ``<log_dir>/<records_dir>/step_XXXXXXX.parquet`` (one file per logged step: a resumed run
      rewrites the same names, never duplicates them; read the folder with ``pandas.read_parquet``).

    Logger events carry Lightning's step of the same batch's ``train/*`` scalars (optimizer steps before this
    one); the records' ``step`` is the optimizer steps taken, this one included.

    Weights are ``grad_weights`` as the loss reports them: Z·∂loss/∂s_i, per group for REAL (bounded
    by 1/τ), per sequence for GRPO/DAPO/GSPO.

    Args:
        every_n_steps: log every this many optimizer steps.
        histograms: write the two histograms (TensorBoard loggers only).
        records_dir: folder name under the logger's log dir for per-rollout records; None: off.

    Example:
        >>> GradientWeightMonitor(every_n_steps=5, records_dir="gradient_weights")
        GradientWeightMonitor(every_n_steps=5, records_dir='gradient_weights')
    """

    def __init__(self, every_n_steps: int = 10, histograms: bool = True, records_dir: str | None = None) -> None:
        super().__init__(every_n_steps)
        self.histograms = histograms
        self.records_dir = records_dir

    def __repr__(self) -> str:
        return f"GradientWeightMonitor(every_n_steps={self.every_n_steps}, records_dir={self.records_dir!r})"

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step  # optimizer steps taken, this update included
        out, rollouts = self.step_outputs(outputs)
        if out is None or rollouts is None or not self.due(trainer):
            return
        weights, scores, labels = out.metrics["grad_weights"], out.metrics["scores"], out.metrics["labels"]
        stats = allocation_stats(weights, scores, labels, rollouts.group_ids)
        metrics = {f"weights/{k}": float(v) for k, v in stats.items()}
        logged_at = logger_step(trainer)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=logged_at)
            if self.histograms and isinstance(logger, TensorBoardLogger):
                for name, label in (("positive", POSITIVE), ("negative", NEGATIVE)):
                    values = weights[labels == label].detach().float().cpu()
                    if values.numel():
                        logger.experiment.add_histogram(f"weights/{name}", values, global_step=logged_at)
        if self.records_dir and trainer.is_global_zero:
            self._write_records(trainer, step, weights, scores, labels, rollouts)
        self.mark_done(trainer)

    @override
    def check_preconditions(self, trainer: Trainer) -> None:
        if not trainer.loggers:
            rank_zero_warn("GradientWeightMonitor: the trainer has no logger, so no weight statistics are logged")
        elif self.histograms:
            self.warn_without_tensorboard(trainer, "the weight histograms")

    def _write_records(
        self,
        trainer: Trainer,
        step: int,
        weights: torch.Tensor,
        scores: torch.Tensor,
        labels: torch.Tensor,
        rollouts: Any,
    ) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        folder = Path(trainer.log_dir or trainer.default_root_dir) / self.records_dir
        folder.mkdir(parents=True, exist_ok=True)
        size = weights.numel()
        table = pa.table(
            {
                "step": [step] * size,
                "group": rollouts.group_ids.cpu().tolist(),
                "label": labels.cpu().tolist(),
                "score": scores.double().cpu().tolist(),
                "weight": weights.double().cpu().tolist(),
                "length": rollouts.response_lengths.cpu().tolist(),
                "reward": rollouts.rewards.double().cpu().tolist(),
            }
        )
        pq.write_table(table, folder / f"step_{step:07d}.parquet")
