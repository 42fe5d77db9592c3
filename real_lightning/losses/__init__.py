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

Each registered loss also has a typed class in :mod:`real_lightning.losses.specs` (:class:`REAL`,
:class:`REALBCE`, :class:`REALProduct`, :class:`REALS0`, :class:`GRPO`, :class:`DAPO`, :class:`GSPO`) whose constructor
arguments are its hyper-parameters, checked when it is built. :func:`resolve_loss` turns what ``model.loss``
accepts — a name (with ``model.loss_kwargs``), a typed loss (``class_path``/``init_args``) or a
``"package.module:function"`` path to a loss of your own — into the function to call and its arguments.

Examples:
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
from collections.abc import Mapping
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
    real_s0_loss,
)
from real_lightning.losses.specs import (
    DAPO,
    GRPO,
    GSPO,
    LOSS_OPTION_RULES,
    LOSS_SPECS,
    REAL,
    REALBCE,
    REALS0,
    LossSpec,
    REALProduct,
    check_options,
)
from real_lightning.utils.groups import build_groups
from real_lightning.utils.registry import Registry, UnknownNameError, import_path


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
        "real_s0": real_s0_loss,
        "grpo": grpo_loss,
        "dapo": dapo_loss,
        "gspo": gspo_loss,
    },
)
"""Loss functions by name; an unknown name raises an error listing the valid ones."""


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
    The rules are :data:`~real_lightning.losses.specs.LOSS_OPTION_RULES`; a typed loss
    (:class:`~real_lightning.losses.specs.LossSpec`) applies the same ones when it is constructed.

    Examples:
        >>> check_loss_options("real", {"tau": 0})
        Traceback (most recent call last):
        ...
        ValueError: model.loss_kwargs.tau must be > 0, got 0
    """
    check_options(options, prefix, loss_options(name))  # unknown names: refused by the caller, listing valid ones


def resolve_loss(
    loss: str | LossSpec | Mapping[str, Any], loss_kwargs: Mapping[str, Any] | None = None
) -> tuple[LossFn, dict[str, Any]]:
    """The loss to call and the keyword arguments to call it with, from what ``model.loss`` accepts, checked.

    Args:
        loss: one of

            - a name in :data:`LOSSES` (``"real"``): ``LOSSES[name]`` with ``loss_kwargs``, their names and
              ranges checked (``model.loss_kwargs.tau must be > 0``);
            - a typed loss, :class:`~real_lightning.losses.specs.LossSpec` (``REAL(tau=0.25)``; from the CLI
              a ``class_path``/``init_args`` pair), or its :meth:`~real_lightning.losses.specs.LossSpec.config`
              (a checkpoint's hyper-parameters): the spec itself, with no keyword arguments;
            - ``"package.module:function"``: a function with the :class:`LossFn` signature, called with
              ``loss_kwargs``; their names are checked against its signature, their ranges are the function's
              business (a ``LossSpec`` instance at such a path is a typed loss).
        loss_kwargs: hyper-parameters of a name or a function; with a typed loss they belong in its
            ``init_args`` and must be empty.

    Raises:
        real_lightning.utils.registry.UnknownNameError: an unregistered name (the message lists the valid ones).
        ValueError: an unknown or out-of-range hyper-parameter, ``loss_kwargs`` with a typed loss, a path that
            does not import or names no loss function.

    Examples:
        >>> fn, kwargs = resolve_loss("grpo", {"clip_high": 0.28})
        >>> fn is grpo_loss, kwargs
        (True, {'clip_high': 0.28})
        >>> resolve_loss(REAL(tau=0.25))
        (REAL(tau=0.25), {})
    """
    kwargs = dict(loss_kwargs or {})
    if isinstance(loss, Mapping):
        loss = _spec_from_config(loss)
    if isinstance(loss, str) and ":" in loss:
        target = import_path(loss, "loss")
        if not isinstance(target, LossSpec):
            _check_signature(target, loss, kwargs)
            return target, kwargs
        loss = target
    if isinstance(loss, LossSpec):
        if kwargs:
            raise ValueError(
                f"model.loss_kwargs {kwargs} cannot be combined with the typed loss {loss!r}: give its "
                "hyper-parameters as its init_args and set model.loss_kwargs to {} (--model.loss_kwargs '{}'; "
                "configs/baselines/*.yaml reset it the same way when they switch losses)"
            )
        return loss, {}
    if not isinstance(loss, str):
        raise TypeError(
            f"model.loss is a name, a LossSpec (class_path/init_args) or 'package.module:function', got {loss!r}"
        )
    try:
        fn = LOSSES[loss]
    except UnknownNameError as exc:
        raise UnknownNameError(
            f"{exc}; or a typed loss by class_path (real_lightning.losses.{', '.join(c.__name__ for c in _SPECS)} "
            "or a LossSpec subclass of yours), or 'package.module:function'"
        ) from None
    allowed = list(loss_options(loss))
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(
            f"loss {loss!r} has no hyper-parameter {', '.join(map(repr, unknown))}; valid: {', '.join(allowed)}"
        )
    check_loss_options(loss, kwargs)  # ranges (tau > 0, clip >= 0, ...) at startup
    return fn, kwargs


def loss_config(loss: str | LossSpec | Mapping[str, Any]) -> str | dict[str, Any]:
    """``model.loss`` as plain data (a typed loss as ``{"class_path", "init_args"}``): checkpoints load with
    ``weights_only=True``, and :func:`resolve_loss` reads it back."""
    return loss.config() if isinstance(loss, LossSpec) else loss if isinstance(loss, str) else dict(loss)


_SPECS = tuple(LOSS_SPECS.values())
_BATCH_ARGS = ("logprobs", "old_logprobs", "response_mask", "rewards", "group_ids", "counts", "importance_weights")


def _spec_from_config(config: Mapping[str, Any]) -> LossSpec:
    """A :class:`LossSpec` from ``{"class_path": "pkg.module.Class", "init_args": {...}}``."""
    class_path = config.get("class_path")
    if not isinstance(class_path, str) or set(config) - {"class_path", "init_args"}:
        raise ValueError(f"model.loss as a mapping is {{class_path: ..., init_args: {{...}}}}, got {dict(config)}")
    module_name, _, attr = class_path.rpartition(".")
    cls = import_path(f"{module_name}:{attr}", "loss")
    if not (isinstance(cls, type) and issubclass(cls, LossSpec)):
        raise ValueError(f"model.loss class_path {class_path!r} is not a subclass of {LossSpec.__qualname__}")
    return cls(**dict(config.get("init_args") or {}))


def _check_signature(fn: Any, path: str, kwargs: Mapping[str, Any]) -> None:
    """``fn`` takes the batch's keyword arguments (:class:`LossFn`) and ``kwargs``."""
    if isinstance(fn, type) or not callable(fn):
        kind = "a class (a LossSpec subclass goes by class_path/init_args)" if isinstance(fn, type) else "not callable"
        raise ValueError(f"loss {path!r} is {kind}: expected a function with the LossFn signature")
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # no signature to read (some builtins): the call will tell
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    missing = [name for name in _BATCH_ARGS if name not in params]
    if missing:
        raise ValueError(
            f"loss {path!r} must take the keyword arguments {', '.join(_BATCH_ARGS)} (LossFn); "
            f"it lacks {', '.join(missing)}"
        )
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        allowed = [n for n, p in params.items() if p.default is not inspect.Parameter.empty and n not in _BATCH_ARGS]
        raise ValueError(
            f"loss {path!r} has no hyper-parameter {', '.join(map(repr, unknown))}; valid: {', '.join(allowed)}"
        )


__all__ = [
    "CLIP_RANGES",
    "DAPO",
    "GRPO",
    "GSPO",
    "LOSSES",
    "LOSS_OPTION_RULES",
    "LOSS_SPECS",
    "REAL",
    "REALBCE",
    "REALS0",
    "BatchCounts",
    "LossFn",
    "LossOutput",
    "LossSpec",
    "REALProduct",
    "build_groups",
    "check_loss_options",
    "dapo_loss",
    "grpo_advantages",
    "grpo_loss",
    "gspo_loss",
    "loss_config",
    "loss_options",
    "pg_gradient_weights",
    "real_bce_gradient_weights",
    "real_bce_loss",
    "real_gradient_weights",
    "real_loss",
    "real_product_gradient_weights",
    "real_product_loss",
    "real_s0_loss",
    "resolve_loss",
]
