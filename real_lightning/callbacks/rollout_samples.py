"""RolloutSampleLogger: a table of sampled responses and the length and reward distributions."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from typing_extensions import override

from real_lightning.callbacks.periodic import PeriodicStepCallback, logger_step
from real_lightning.rewards.answers import describe_ground_truth
from real_lightning.rollout.batch import RolloutBatch


def _cell(text: str, limit: int) -> str:
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("|", "\\|").replace("\n", " ⏎ ")


class RolloutSampleLogger(PeriodicStepCallback):
    """Every ``every_n_steps`` steps, logs the step's rollouts (from ``training_step``'s outputs) to TensorBoard.

    - text ``rollouts/samples``: a markdown table (prompt, response, ground truth, reward) of the
      first ``num_samples`` rollouts;
    - histograms ``rollouts/response_length`` (tokens) and ``rollouts/reward``.

    Args:
        every_n_steps: log every this many optimizer steps.
        num_samples: rows of the sample table.
        max_chars: longer prompts and responses are cut to this many characters.

    Examples:
        >>> RolloutSampleLogger(every_n_steps=50, num_samples=8)
        RolloutSampleLogger(every_n_steps=50, num_samples=8)
    """

    def __init__(self, every_n_steps: int = 50, num_samples: int = 8, max_chars: int = 300) -> None:
        super().__init__(every_n_steps)
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.num_samples, self.max_chars = num_samples, max_chars

    def __repr__(self) -> str:
        return f"RolloutSampleLogger(every_n_steps={self.every_n_steps}, num_samples={self.num_samples})"

    def sample_table(self, batch: RolloutBatch) -> str:
        """Markdown table of the first rollouts of ``batch`` (the prompt as the policy saw it)."""
        rows = ["| prompt | response | ground truth | reward |", "| --- | --- | --- | --- |"]
        for i in range(min(self.num_samples, len(batch))):
            prompt = batch.prompts[i] if batch.prompts else ""
            response = batch.responses[i] if batch.responses else ""
            truth = describe_ground_truth(batch.ground_truths[i]) if batch.ground_truths else ""
            rows.append(
                f"| {_cell(prompt, self.max_chars)} | {_cell(response, self.max_chars)} | "
                f"{_cell(truth, self.max_chars)} | {float(batch.rewards[i]):g} |"
            )
        return "\n".join(rows)

    @override
    def check_preconditions(self, trainer: Trainer) -> None:
        self.warn_without_tensorboard(trainer, "the sample table and histograms")

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = logger_step(trainer)
        _, rollouts = self.step_outputs(outputs)
        if rollouts is None or not len(rollouts) or not self.due(trainer):
            return
        table = self.sample_table(rollouts)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("rollouts/samples", table, global_step=step)
                logger.experiment.add_histogram(
                    "rollouts/response_length", rollouts.response_lengths.float().cpu(), global_step=step
                )
                logger.experiment.add_histogram("rollouts/reward", rollouts.rewards.float().cpu(), global_step=step)
        self.mark_done(trainer)
