"""GradientWeightMonitor: where the gradient goes, for whatever loss is training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from real_lightning.analysis.allocation import allocation_stats
from real_lightning.callbacks.log_folder import local_log_folder, resolve_log_folder
from real_lightning.callbacks.periodic import PeriodicStepCallback, logger_step
from real_lightning.utils.groups import NEGATIVE, POSITIVE


class GradientWeightMonitor(PeriodicStepCallback):
    """Logs the per-rollout gradient weights ∂L/∂s of the last update every ``every_n_steps`` steps.

    Reads the step's :class:`~real_lightning.step.output.StepOutput` at ``on_train_batch_end``: ``loss_output`` (its
    ``grad_weights``, ``scores`` and ``labels`` over every micro-batch of the step) and
    ``rollouts`` (group ids, lengths, rewards, rows in the same order), and logs:

    - TensorBoard histograms ``weights/positive`` and ``weights/negative`` of the signed weights;
    - scalars ``weights/{pos,neg}_abs_max``, ``_abs_mean``, ``weights/domination_max`` / ``_mean``,
      ``weights/pos_zero_fraction`` and ``weights/rank_corr_{pos,neg}``
      (see :func:`~real_lightning.analysis.allocation.allocation_stats`);
    - optionally every rollout (step, rank, group, label, score, weight, length, reward) to
      ``<log_dir>/<records_dir>/step_XXXXXXX.parquet`` (one file per logged step: a resumed run
      rewrites the same names, never duplicates them; read the folder with ``pandas.read_parquet``). Under
      several processes each rank writes its own share of the step's rollouts,
      ``step_XXXXXXX_rank<R>.parquet`` (group ids are per rank: group by ``rank`` and ``group``).

    Under several processes the logged scalars and histograms describe rank 0's share of the step's rollouts
    (the groups are spread over the ranks whole, so each share is a sample of the step's groups); the records
    hold every rank's. Nothing here communicates between ranks: the log folder is resolved on every rank in
    ``setup`` (:mod:`~real_lightning.callbacks.log_folder`).

    Logger events carry Lightning's step of the same batch's ``train/*`` scalars (optimizer steps before this
    one); the records' ``step`` is the optimizer steps taken, this one included.

    Weights are ``grad_weights`` as the loss reports them: Z·∂loss/∂s_i, per group for REAL (bounded
    by 1/τ), per sequence for GRPO/DAPO/GSPO.

    Args:
        every_n_steps: log every this many optimizer steps.
        histograms: write the two histograms (TensorBoard loggers only).
        records_dir: folder name under the logger's log dir for per-rollout records; None: off.

    Examples:
        >>> GradientWeightMonitor(every_n_steps=5, records_dir="gradient_weights")
        GradientWeightMonitor(every_n_steps=5, records_dir='gradient_weights')
    """

    def __init__(self, every_n_steps: int = 10, histograms: bool = True, records_dir: str | None = None) -> None:
        super().__init__(every_n_steps)
        self.histograms = histograms
        self.records_dir = records_dir
        self._folder: Path | None = None

    def __repr__(self) -> str:
        return f"GradientWeightMonitor(every_n_steps={self.every_n_steps}, records_dir={self.records_dir!r})"

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.records_dir:
            self._folder = resolve_log_folder(trainer) / self.records_dir  # every rank: a collective

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
        if self.records_dir:
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

        folder = self._folder or local_log_folder(trainer) / str(self.records_dir)  # setup not run: one process
        folder.mkdir(parents=True, exist_ok=True)
        size = weights.numel()
        table = pa.table(
            {
                "step": [step] * size,
                "rank": [trainer.global_rank] * size,
                "group": rollouts.group_ids.cpu().tolist(),
                "label": labels.cpu().tolist(),
                "score": scores.double().cpu().tolist(),
                "weight": weights.double().cpu().tolist(),
                "length": rollouts.response_lengths.cpu().tolist(),
                "reward": rollouts.rewards.double().cpu().tolist(),
            }
        )
        suffix = f"_rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        pq.write_table(table, folder / f"step_{step:07d}{suffix}.parquet")
