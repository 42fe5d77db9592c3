"""What a training step hands to callbacks: one typed record instead of a dict read by string keys.

:meth:`RealPolicyModule.training_step <real_lightning.module.RealPolicyModule.training_step>` returns
``{"loss": <zero that syncs the gradients>, "step": StepOutput(...)}`` (Lightning needs the ``"loss"`` key), and
Lightning passes that dict to every callback's ``on_train_batch_end`` as ``outputs``; :func:`step_output` reads the
record back. Callbacks read this record and the hook's arguments only — not the module's attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from real_lightning.losses.common import LossOutput
from real_lightning.rollout.batch import RolloutBatch

STEP_KEY = "step"
"""The key of the :class:`StepOutput` in what ``training_step`` returns."""


@dataclass
class StepOutput:
    """One optimizer step, as callbacks see it at ``on_train_batch_end``.

    Attributes:
        skipped: some rank had a non-finite loss; every rank skipped the update.
        metrics: the scalars the step logged, already reduced over ranks (``train/…``; on the first step of a
            rollout batch also ``rollout/…``, ``time/…``, ``verifier/…``), 0-d tensors.
        loss_output: this rank's per-rollout values of the loss (``scores``, ``grad_weights``, ``labels``, …),
            rows in the order of ``rollouts``; None when the rank had no rollout this step.
        rollouts: this rank's rollouts of the step (CPU), with their prompt and response texts, ground truths
            and rewards; None when the rank had none.
        grad_norm: the total gradient norm before clipping (0-d, over all shards), set by the module before the
            optimizer step; None when the update was skipped or nothing had a gradient.
    """

    skipped: bool
    metrics: dict[str, Tensor] = field(default_factory=dict)
    loss_output: LossOutput | None = None
    rollouts: RolloutBatch | None = None
    grad_norm: Tensor | None = None


def step_output(outputs: Any) -> StepOutput | None:
    """The :class:`StepOutput` in a callback's ``outputs`` (None when the module is not a RealPolicyModule)."""
    found = outputs.get(STEP_KEY) if isinstance(outputs, dict) else None
    return found if isinstance(found, StepOutput) else None
