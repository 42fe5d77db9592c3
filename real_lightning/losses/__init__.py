"""The REAL loss family and the GRPO/DAPO/GSPO baselines as pure functions.

Every entry of :data:`LOSSES` has the signature::

    fn(*, logprobs, old_logprobs, response_mask, rewards, group_ids, counts=None, importance_weights=None,
       **hparams) -> LossOutput

with ``logprobs``/``old_logprobs``/``response_mask`` [B, T], ``rewards`` and ``group_ids`` [B];
a call without hyper-parameters uses the paper's setting. ``counts`` (:class:`BatchCounts`) are
the counts of the whole optimizer step the batch belongs to; each loss divides by the one in its
unit, so micro-batches of whole groups add up to the step's loss and gradient (``None``: the
batch is the step). ``importance_weights`` ([B, T] per token or [B] per sequence, detached,
finite, ≥ 0) are truncated importance sampling weights min(π_old/π_behaviour, C) for rollouts
from an engine whose sampling distribution differs from π_old (vLLM): they multiply each token's
(or sequence's) contribution to the gradient and leave the loss value unchanged (``None``: no
correction, bit-identical to omitting them).

Example:
    >>> import torch
    >>> from real_lightning.losses import LOSSES
    >>> lp = torch.zeros(4, 3, requires_grad=True)
    >>> out = LOSSES["real"](logprobs=lp, old_logprobs=lp.detach(), response_mask=torch.ones(4, 3),
    ...                      rewards=torch.tensor([1.0, 0.0, 1.0, 0.0]), group_ids=torch.tensor([0, 0, 1, 1]))
    >>> round(out.loss.item(), 6)  # two groups, each 2·log 2
    1.386294
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from real_lightning.groups import build_groups
from real_lightning.losses.common import BatchCounts, LossOutput
from real_lightning.losses.policy_gradient import (
    CLIP_RANGES,
    dapo_loss,
    grpo_advantages,
    grpo_loss,
    gspo_loss,
    pg_gradient_weights,
)
from real_lightning.losses.real import (
    real_bce_gradient_weights,
    real_bce_loss,
    real_gradient_weights,
    real_loss,
    real_product_gradient_weights,
    real_product_loss,
)
from real_lightning.registry import Registry


class LossFn(Protocol):
    """Signature of every entry of :data:`LOSSES`."""

    def __call__(
        self,
        *,
        logprobs: Tensor,
        old_logprobs: Tensor,
        response_mask: Tensor,
        rewards: Tensor,
        group_ids: Tensor,
        counts: BatchCounts | None = None,
        importance_weights: Tensor | None = None,
        **hparams: float | bool,
    ) -> LossOutput: ...


LOSSES: Registry[LossFn] = Registry(
    "loss",
    {
        "real": real_loss,
        "real_bce": real_bce_loss,
        "real_product": real_product_loss,
        "grpo": grpo_loss,
        "dapo": dapo_loss,
        "gspo": gspo_loss,
    },
)
"""Loss functions by name; an unknown name raises an error listing the valid ones."""

__all__ = [
    "CLIP_RANGES",
    "LOSSES",
    "BatchCounts",
    "LossFn",
    "LossOutput",
    "build_groups",
    "dapo_loss",
    "grpo_advantages",
    "grpo_loss",
    "gspo_loss",
    "pg_gradient_weights",
    "real_bce_gradient_weights",
    "real_bce_loss",
    "real_gradient_weights",
    "real_loss",
    "real_product_gradient_weights",
    "real_product_loss",
]
