"""A loss from outside the package, as a user writes one: ``--model.loss tests.losses.custom_loss:my_loss``.

REAL's group losses divided by the step's positive rollouts instead of its groups: a normaliser that is not one
of :class:`~real_lightning.losses.common.BatchCounts`' four, declared with ``my_loss.extra_counts``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from real_lightning.losses import BatchCounts, LossOutput, LossSpec, real_loss
from real_lightning.utils.groups import build_groups

CALLS: list[dict[str, Any]] = []
"""What each call received (the counts' ``extra`` and the hyper-parameters), for the tests to read."""


def positives(response_mask: Tensor, rewards: Tensor, group_ids: Tensor) -> dict[str, Tensor]:
    """The batch's positive rollouts (reward equal to its group's best, in a group with a label contrast)."""
    if rewards.numel() == 0:
        return {"positives": torch.zeros((), dtype=torch.float64, device=rewards.device)}
    return {"positives": build_groups(rewards, group_ids).positive.sum().to(torch.float64)}


def my_loss(
    *,
    logprobs: Tensor,
    old_logprobs: Tensor,
    response_mask: Tensor,
    rewards: Tensor,
    group_ids: Tensor,
    counts: BatchCounts | None = None,
    importance_weights: Tensor | None = None,
    tau: float = 0.5,
) -> LossOutput:
    """Σ_q L_q (REAL's, temperature ``tau``) / the step's positive rollouts."""
    batch = {"logprobs": logprobs, "old_logprobs": old_logprobs, "response_mask": response_mask}
    batch |= {"rewards": rewards, "group_ids": group_ids, "importance_weights": importance_weights}
    out = real_loss(**batch, tau=tau)  # normalised by the batch's groups: undo it below
    own = positives(response_mask, rewards, group_ids)["positives"]
    step_positives = own if counts is None else counts.extra["positives"]
    CALLS.append({"extra": None if counts is None else dict(counts.extra), "tau": tau})
    divisor = torch.as_tensor(step_positives, dtype=out.loss.dtype).clamp_min(1)
    scale = out.metrics["num_groups"].to(out.loss.dtype) / divisor
    metrics = dict(out.metrics, weight_normalizer=divisor.detach())  # grad_weights = Z·∂loss/∂s_i still
    return LossOutput(out.loss * scale, metrics)


my_loss.extra_counts = positives  # type: ignore[attr-defined]


def scaled_real_loss(*, scale: float = 2.0, **kwargs: Any) -> LossOutput:
    """REAL's loss times ``scale`` (its metrics unchanged)."""
    out = real_loss(**kwargs)
    return LossOutput(out.loss * scale, out.metrics)


class ScaledREAL(LossSpec):
    """A typed loss of your own: REAL times a constant.

    Args:
        tau: temperature τ > 0.
        scale: the factor.
    """

    fn = staticmethod(scaled_real_loss)

    def __init__(self, tau: float = 0.5, scale: float = 2.0) -> None:
        super().__init__(tau=tau, scale=scale)
