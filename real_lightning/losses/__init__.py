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

import inspect
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from torch import Tensor

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
from real_lightning.utils.groups import build_groups
from real_lightning.utils.registry import Registry


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


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive(value: Any, options: Mapping[str, Any]) -> str | None:
    return None if value > 0 else "must be > 0"  # NaN fails every comparison: refused too


def _non_negative(value: Any, options: Mapping[str, Any]) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _positive_or_none(value: Any, options: Mapping[str, Any]) -> str | None:
    return None if value is None or (_number(value) and value > 0) else "must be > 0 or null"


def _adv_eps(value: Any, options: Mapping[str, Any]) -> str | None:
    if not value >= 0:
        return "must be >= 0"
    if value == 0 and options.get("scale_adv_by_std", True):
        return "must be > 0 while scale_adv_by_std is true (a group with equal rewards has std 0)"
    return None


def _boolean(value: Any, options: Mapping[str, Any]) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


_Rule = Callable[[Any, Mapping[str, Any]], "str | None"]
LOSS_OPTION_RULES: dict[str, _Rule] = {
    "tau": _positive,
    "clip_low": _non_negative,
    "clip_high": _non_negative,
    "adv_eps": _adv_eps,
    "log_ratio_clamp": _positive_or_none,
    "scale_adv_by_std": _boolean,
}
"""Range check of every loss hyper-parameter, by name: the problem as text, or None when the value is valid."""
_NON_NUMERIC = {"log_ratio_clamp", "scale_adv_by_std"}  # rules that check the type themselves


def loss_options(name: str) -> dict[str, Any]:
    """The hyper-parameters of loss ``name`` with their defaults (keyword arguments other than the batch's)."""
    params = inspect.signature(LOSSES[name]).parameters
    return {
        n: p.default
        for n, p in params.items()
        if p.default is not inspect.Parameter.empty and n not in ("counts", "importance_weights")
    }


def check_loss_options(name: str, options: Mapping[str, Any], prefix: str = "model.loss_kwargs") -> None:
    """Raise ``ValueError`` naming the first hyper-parameter of loss ``name`` that is out of range.

    Checked at construction (:class:`~real_lightning.module.RealPolicyModule`), so a bad value fails at
    startup rather than inside the first training step. Omitted options take their (valid) defaults.

    Example:
        >>> check_loss_options("real", {"tau": 0})
        Traceback (most recent call last):
        ...
        ValueError: model.loss_kwargs.tau must be > 0, got 0
    """
    merged = {**loss_options(name), **options}
    for option, value in options.items():
        rule = LOSS_OPTION_RULES.get(option)
        if rule is None:
            continue  # unknown names are refused by the caller, with the list of valid ones
        if option not in _NON_NUMERIC and not _number(value):
            raise ValueError(f"{prefix}.{option} must be a number, got {value!r}")
        problem = rule(value, merged)
        if problem is not None:
            raise ValueError(f"{prefix}.{option} {problem}, got {value!r}")


__all__ = [
    "CLIP_RANGES",
    "LOSSES",
    "LOSS_OPTION_RULES",
    "BatchCounts",
    "LossFn",
    "LossOutput",
    "build_groups",
    "check_loss_options",
    "dapo_loss",
    "grpo_advantages",
    "grpo_loss",
    "gspo_loss",
    "loss_options",
    "pg_gradient_weights",
    "real_bce_gradient_weights",
    "real_bce_loss",
    "real_gradient_weights",
    "real_loss",
    "real_product_gradient_weights",
    "real_product_loss",
]
