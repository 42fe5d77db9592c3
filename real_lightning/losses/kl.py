"""KL to a reference policy: a penalty any loss of :data:`~real_lightning.losses.LOSSES` can add.

Per response token, with x = log π_θ − log π_ref (π_ref: the frozen starting policy), one of the estimators of
KL(π_θ ‖ π_ref) verl offers (``kl_loss_type``):

- ``k1``: x (unbiased, high variance; verl's ``kl``);
- ``k2``: x² / 2 (verl's ``mse``);
- ``k3``: e^{−x} − 1 + x, clamped to [−clamp, clamp] (verl's ``low_var_kl``, the official GRPO baseline's).

The penalty is β times the mean over the response tokens of the whole optimizer step (``counts.tokens``: all
micro-batches, all ranks), so micro-batches add up to it like the losses do.

Examples:
    >>> import torch
    >>> lp = torch.tensor([[0.0, -1.0]], requires_grad=True)
    >>> ref = torch.tensor([[0.0, -2.0]])
    >>> round(float(kl_penalty(lp, ref, torch.ones(1, 2, dtype=torch.bool), estimator="k1")), 6)
    0.5
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from real_lightning.losses.common import BatchCounts

Estimator = Literal["k1", "k2", "k3"]
ESTIMATORS = ("k1", "k2", "k3")


def kl_per_token(logprobs: Tensor, ref_logprobs: Tensor, estimator: Estimator = "k3", clamp: float = 10.0) -> Tensor:
    """[B, T] estimate of KL(π_θ ‖ π_ref) per token (k3 clamped to [−clamp, clamp])."""
    x = logprobs - ref_logprobs
    if estimator == "k1":
        return x
    if estimator == "k2":
        return 0.5 * x.square()
    if estimator == "k3":
        return (torch.exp(-x) - 1 + x).clamp(min=-clamp, max=clamp)
    raise ValueError(f"KL estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")


def kl_penalty(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    response_mask: Tensor,
    *,
    estimator: Estimator = "k3",
    clamp: float = 10.0,
    counts: BatchCounts | None = None,
) -> Tensor:
    """Σ over response tokens of :func:`kl_per_token`, divided by the step's token count (``counts.tokens``;
    None: this batch's). A scalar with the gradient of ``logprobs``; ``ref_logprobs`` gets none."""
    mask = response_mask.bool()
    per_token = kl_per_token(logprobs, ref_logprobs.detach().to(logprobs.dtype), estimator, clamp)
    total = torch.where(mask, per_token, torch.zeros((), dtype=per_token.dtype, device=per_token.device)).sum()
    tokens = counts.tokens if counts is not None else mask.sum()
    return total / torch.as_tensor(tokens, dtype=total.dtype, device=total.device).clamp_min(1)


@dataclass(frozen=True)
class KLPenalty:
    """β · :func:`kl_penalty` added to the policy loss (``model.kl_coef``, ``kl_estimator``, ``kl_clamp``).

    Args:
        coef: β (the official GRPO baseline: 0.001); 0 turns the term and the reference policy off.
        estimator: ``k1``, ``k2`` or ``k3``.
        clamp: bound of k3 per token (verl: 10).
    """

    coef: float = 0.0
    estimator: Estimator = "k3"
    clamp: float = 10.0

    def __post_init__(self) -> None:
        if not self.coef >= 0:
            raise ValueError(f"kl_coef must be >= 0, got {self.coef}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {', '.join(ESTIMATORS)}, got {self.estimator!r}")
        if not self.clamp > 0:
            raise ValueError(f"kl_clamp must be > 0, got {self.clamp}")

    @property
    def active(self) -> bool:
        return self.coef > 0

    def penalty(
        self, logprobs: Tensor, ref_logprobs: Tensor | None, response_mask: Tensor, counts: BatchCounts | None = None
    ) -> Tensor:
        """The KL term of one micro-batch of a step, before β: :func:`kl_penalty` with these options.

        Args:
            logprobs: [B, T] log π_θ (the gradient flows through it).
            ref_logprobs: [B, T] log π_ref of the rollouts; None is an error (β > 0 needs the reference pass).
            response_mask: [B, T] response mask.
            counts: the step's counts: the penalty is a sum over this batch's tokens divided by all the step's
                (so the micro-batches' penalties add up to the step's token mean, in nats).

        Returns:
            [] in ``logprobs``' dtype; the step adds ``coef`` times it to the policy loss.
        """
        if ref_logprobs is None:
            raise ValueError("kl_coef > 0 but the rollouts carry no reference log-probs (ref_logprobs)")
        return kl_penalty(
            logprobs, ref_logprobs, response_mask, estimator=self.estimator, clamp=self.clamp, counts=counts
        )
