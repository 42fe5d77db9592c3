"""Rollouts from an engine that samples from another distribution than π_old: truncated importance sampling (TIS)
and the per-token gap between the engine's (behaviour) and the trainer's (π_old) log-probs.

Everything here works on one micro-batch, on its device, without a host sync: the sums it returns are 0-dim
tensors that :class:`~real_lightning.step.metrics.StepMetrics` adds up over the step and reduces once.

Examples:
    >>> import torch
    >>> old = torch.tensor([[-1.0, -2.0, 0.0]])
    >>> behaviour = torch.tensor([[-1.5, -2.0, 0.0]])
    >>> mask = torch.tensor([[True, True, False]])
    >>> terms = truncated_importance(ImportanceSampling("token", cap=1.5), old, behaviour, mask)
    >>> terms.weights.tolist(), int(terms.clipped), int(terms.units)  # e^0.5 ≈ 1.65 is cut to 1.5
    ([[1.5, 1.0, 1.0]], 1, 2)
    >>> gap = mismatch(old, behaviour, mask)
    >>> float(gap.abs_sum), float(gap.abs_max), int(gap.tokens)
    (0.5, 0.5, 2)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor


@dataclass(frozen=True)
class ImportanceSampling:
    """Truncated importance sampling (TIS) of rollouts sampled by an engine whose distribution differs from π_old.

    Args:
        mode: ``token``: w_t = min(π_old(o_t)/π_behaviour(o_t), cap) per response token; ``sequence``:
            w_i = min(Π_t π_old/π_behaviour, cap) per rollout; ``off``: none.
        cap: C, the truncation (verl and TRL default to 2).
    """

    mode: Literal["off", "token", "sequence"] = "off"
    cap: float = 2.0

    def __post_init__(self) -> None:
        if self.mode not in ("off", "token", "sequence"):
            raise ValueError(f"importance_sampling.mode must be off, token or sequence, got {self.mode!r}")
        if not self.cap > 0:
            raise ValueError(f"importance_sampling.cap must be > 0, got {self.cap}")

    def weights(self, old: Tensor, behaviour: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Detached weights ([B, T] for ``token``, [B] for ``sequence``) and how many were truncated."""
        delta = torch.where(mask, old.float() - behaviour.float(), torch.zeros((), device=old.device))
        raw = torch.exp(delta) if self.mode == "token" else torch.exp(delta.sum(-1))
        clipped = ((raw > self.cap) & mask).sum() if self.mode == "token" else (raw > self.cap).sum()
        return raw.clamp(max=self.cap).to(old.dtype).detach(), clipped


@dataclass(frozen=True)
class ImportanceTerms:
    """The truncated importance weights of one micro-batch and the sums the step logs.

    Attributes:
        weights: [B, T] (``token``) or [B] (``sequence``) detached weights in ``old``'s dtype, for the loss's
            ``importance_weights``.
        weight_sum: [] Σ of the weights over the units (response tokens, or rollouts).
        clipped: [] int64, how many units the cap truncated.
        units: [] int64 response tokens (``token``), or the number of rollouts (``sequence``, a Python int).
    """

    weights: Tensor
    weight_sum: Tensor
    clipped: Tensor
    units: Tensor | int


def truncated_importance(
    sampling: ImportanceSampling | None, old: Tensor, behaviour: Tensor | None, mask: Tensor
) -> ImportanceTerms | None:
    """TIS weights min(π_old/π_behaviour, C) of one micro-batch, or None (no sampling, mode ``off``, or rollouts
    without behaviour log-probs).

    Args:
        sampling: the options (None: off).
        old: [B, T] log π_old (detached here).
        behaviour: [B, T] log π_behaviour, the engine's, or None.
        mask: [B, T] bool response mask.
    """
    if sampling is None or sampling.mode == "off" or behaviour is None:
        return None
    weights, clipped = sampling.weights(old.detach(), behaviour, mask)
    per_rollout = weights.dim() == 1
    return ImportanceTerms(
        weights=weights,
        weight_sum=weights.sum() if per_rollout else (weights * mask).sum(),
        clipped=clipped,
        units=weights.numel() if per_rollout else mask.sum(),
    )


@dataclass(frozen=True)
class Mismatch:
    """Sums over one micro-batch's response tokens of the gap g = log π_old − log π_behaviour (nats per token).

    Attributes:
        abs_sum: [] Σ |g|.
        k3_sum: [] Σ (e^g − 1 − g), the k3 estimate of KL(π_behaviour ‖ π_old) per token, summed.
        tokens: [] int64, response tokens.
        abs_max: [] max |g| over the micro-batch (0 outside the mask).
    """

    abs_sum: Tensor
    k3_sum: Tensor
    tokens: Tensor
    abs_max: Tensor


def mismatch(old: Tensor, behaviour: Tensor, mask: Tensor) -> Mismatch:
    """The train/inference mismatch of one micro-batch: π_old (the trainer's) against the engine's log-probs.

    Args:
        old: [B, T] log π_old (detached here; computed in float32, or in ``behaviour``'s dtype if wider).
        behaviour: [B, T] log π_behaviour.
        mask: [B, T] bool response mask; positions outside it count 0.
    """
    gap = torch.where(mask, old.detach().float() - behaviour, torch.zeros((), device=old.device))
    return Mismatch(
        abs_sum=gap.abs().sum(),
        k3_sum=(torch.expm1(gap) - gap).sum(),  # k3 of KL(π_behaviour ‖ π_old): r − 1 − log r
        tokens=mask.sum(),
        abs_max=gap.abs().max(),
    )
