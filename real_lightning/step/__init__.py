"""One optimizer step of the policy: micro-batches of whole groups, importance sampling, the KL term, metrics.

- :mod:`~real_lightning.step.accumulate`: the micro-batch loop (:func:`accumulate_step`), the micro-batched
  π_old pass (:func:`old_logprobs_pass`);
- :mod:`~real_lightning.step.importance`: truncated importance sampling, the engine-vs-trainer mismatch;
- :mod:`~real_lightning.step.metrics`: the step's metrics, their all-reduce and names, :class:`StepResult`;
- the KL term is :meth:`KLPenalty.penalty <real_lightning.losses.kl.KLPenalty.penalty>`.
"""

from real_lightning.step.accumulate import accumulate_step, old_logprobs_pass
from real_lightning.step.importance import ImportanceSampling
from real_lightning.step.metrics import StepResult

__all__ = ["ImportanceSampling", "StepResult", "accumulate_step", "old_logprobs_pass"]
