"""Typed losses: each registered loss as a class whose constructor arguments are its hyper-parameters.

``model.loss`` (:class:`~real_lightning.module.RealPolicyModule`) takes a :class:`LossSpec` as well as a
registered name, so ``real-lightning fit --help`` lists the typed losses and
``real-lightning fit --model.loss.help REAL`` documents their hyper-parameters with defaults::

    model:
      loss:
        class_path: real_lightning.losses.REAL   # or GRPO, DAPO, GSPO, REALBCE, REALProduct, a subclass of yours
        init_args:
          tau: 0.25

A spec is checked at construction (:data:`LOSS_OPTION_RULES`: ``tau > 0``, clip ranges ``>= 0``, ...), so
a bad value fails at startup naming the option (``REAL.tau must be > 0, got 0``). Calling it calls its
:attr:`~LossSpec.fn` with its :attr:`~LossSpec.hparams`: ``REAL(tau=0.25)(**batch)`` is
``real_loss(**batch, tau=0.25)``.

Your own typed loss: subclass :class:`LossSpec`, set ``fn`` to a function with the signature of
:class:`~real_lightning.losses.LossFn` and give ``__init__`` typed, documented arguments that it passes on
to ``super().__init__(**hparams)``; name it by ``class_path``. A loss that divides by a count other than
the four of :class:`~real_lightning.losses.common.BatchCounts` declares it with ``extra_counts`` (see
:class:`LossSpec`).

Examples:
    >>> import torch
    >>> from real_lightning.losses.real import real_loss
    >>> lp = torch.zeros(4, 3, requires_grad=True)
    >>> batch = dict(logprobs=lp, old_logprobs=lp.detach(), response_mask=torch.ones(4, 3),
    ...              rewards=torch.tensor([1.0, 0.0, 1.0, 0.0]), group_ids=torch.tensor([0, 0, 1, 1]))
    >>> REAL(tau=0.25)(**batch).loss.item() == real_loss(**batch, tau=0.25).loss.item()
    True
    >>> REAL(tau=0)
    Traceback (most recent call last):
    ...
    ValueError: REAL.tau must be > 0, got 0
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from torch import Tensor

from real_lightning.losses.common import LossOutput
from real_lightning.losses.policy_gradient import CLIP_RANGES, DEFAULT_ADV_EPS, dapo_loss, grpo_loss, gspo_loss
from real_lightning.losses.real import DEFAULT_TAU, real_bce_loss, real_loss, real_product_loss, real_s0_loss

# --- range checks of the hyper-parameters ---------------------------------------------------------------------


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive(value: Any, options: Mapping[str, Any]) -> str | None:
    return None if value > 0 else "must be > 0"  # NaN fails every comparison: refused too


def _non_negative(value: Any, options: Mapping[str, Any]) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _positive_or_none(value: Any, options: Mapping[str, Any]) -> str | None:
    return None if value is None or (_number(value) and value > 0) else "must be > 0 or null"


def _above_one_or_none(value: Any, options: Mapping[str, Any]) -> str | None:
    return None if value is None or (_number(value) and value > 1) else "must be > 1 or null"


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
    "dual_clip": _above_one_or_none,
    "scale_adv_by_std": _boolean,
}
"""Range check of every loss hyper-parameter, by name: the problem as text, or None when the value is valid."""
_NON_NUMERIC = {"log_ratio_clamp", "dual_clip", "scale_adv_by_std"}  # rules that check the type themselves


def check_options(options: Mapping[str, Any], prefix: str, defaults: Mapping[str, Any] | None = None) -> None:
    """Raise ``ValueError`` ``"{prefix}.{option} must be ..., got ..."`` for the first option of ``options`` that
    :data:`LOSS_OPTION_RULES` refuses (options without a rule pass); ``defaults`` fill what a rule reads of the
    others (``adv_eps`` reads ``scale_adv_by_std``)."""
    merged = {**(defaults or {}), **options}
    for option, value in options.items():
        rule = LOSS_OPTION_RULES.get(option)
        if rule is None:
            continue
        if option not in _NON_NUMERIC and not _number(value):
            raise ValueError(f"{prefix}.{option} must be a number, got {value!r}")
        problem = rule(value, merged)
        if problem is not None:
            raise ValueError(f"{prefix}.{option} {problem}, got {value!r}")


# --- typed losses ---------------------------------------------------------------------------------------------


class LossSpec(ABC):
    """A typed loss: a loss function and its hyper-parameters, checked at construction.

    ``spec(**batch)`` computes the loss, ``spec.hparams`` are the keyword arguments :attr:`fn` is called with.

    Subclasses set :attr:`fn` (``staticmethod``) and define ``__init__`` with the hyper-parameters as typed
    keyword arguments with defaults, documented under ``Args:`` (``real-lightning fit --model.loss.help`` shows
    them), passed on to ``super().__init__``; those named as the shipped ones (``tau``, ``clip_low``, ...) get
    their range checks (:data:`LOSS_OPTION_RULES`). :attr:`name` is the loss's name in
    :data:`~real_lightning.losses.LOSSES` (None for a loss that is not registered).

    Another normaliser: a loss divides by counts of the whole optimizer step (``counts=``, all micro-batches
    and ranks). Beyond the four of :class:`~real_lightning.losses.common.BatchCounts` it may declare
    ``extra_counts(response_mask, rewards, group_ids) -> {name: 0-dim tensor}``, the counts of one batch
    (they must add up over batches of whole groups, and handle an empty batch); the training step sums them
    over the step and passes them in ``counts.extra[name]``. A plain loss function declares it as an
    attribute: ``my_loss.extra_counts = ...``.
    """

    name: ClassVar[str | None] = None
    extra_counts: ClassVar[Callable[[Tensor, Tensor, Tensor], dict[str, Tensor]] | None] = None

    @staticmethod
    @abstractmethod
    def fn(**kwargs: Any) -> LossOutput:
        """The loss function (:class:`~real_lightning.losses.LossFn`), e.g. ``fn = staticmethod(real_loss)``."""

    def __init__(self, **hparams: Any) -> None:
        self.hparams: dict[str, Any] = dict(hparams)  # the keyword arguments fn is called with
        check_options(self.hparams, type(self).__name__)

    def __call__(self, **batch: Any) -> LossOutput:
        """The loss of a batch: ``fn(**batch, **hparams)`` (batch: ``logprobs=``, ..., ``counts=``, ...)."""
        return type(self).fn(**batch, **self.hparams)

    def config(self) -> dict[str, Any]:
        """``{"class_path": ..., "init_args": hparams}``: plain data, as the CLI writes it (and checkpoints hold it)."""
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(self.hparams)}

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.hparams == self.hparams  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(self.hparams.items()))))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
        return f"{type(self).__name__}({args})"


class REAL(LossSpec):
    """REAL, Rewards as Labels: log(1 + Σ_{O+} e^{−s_i/τ}) + log(1 + Σ_{O−} e^{s_j/τ}) per group.

    Computed by :func:`~real_lightning.losses.real.real_loss`: the mean over the step's groups.

    Args:
        tau: temperature τ > 0 of the scores s/τ (paper: 0.5); each rollout's gradient weight is bounded by 1/τ.
    """

    name = "real"
    fn = staticmethod(real_loss)

    def __init__(self, tau: float = DEFAULT_TAU) -> None:
        super().__init__(tau=tau)


class REALBCE(LossSpec):
    """REAL-BCE: binary cross-entropy with logit s_i/τ and label "reward is the group's best".

    Computed by :func:`~real_lightning.losses.real.real_bce_loss`: the mean over the rollouts of groups with a
    label contrast.

    Args:
        tau: temperature τ > 0 of the logits s/τ (paper: 0.5).
    """

    name = "real_bce"
    fn = staticmethod(real_bce_loss)

    def __init__(self, tau: float = DEFAULT_TAU) -> None:
        super().__init__(tau=tau)


class REALProduct(LossSpec):
    """REAL product (circle-loss) form: softplus(logsumexp_{O−}(s/τ) + logsumexp_{O+}(−s/τ)) per group.

    Computed by :func:`~real_lightning.losses.real.real_product_loss`: the mean over the step's groups.

    Args:
        tau: temperature τ > 0 of the scores s/τ (paper: 0.5).
    """

    name = "real_product"
    fn = staticmethod(real_product_loss)

    def __init__(self, tau: float = DEFAULT_TAU) -> None:
        super().__init__(tau=tau)


class REALS0(LossSpec):
    """``real_s0``, a control: REINFORCE with REAL's per-rollout weights frozen at s = 0, ∓(1/τ)/(1 + k).

    Computed by :func:`~real_lightning.losses.real.real_s0_loss`: REAL's split of a group's weight between its
    positives and negatives, without REAL's dependence on the scores s.

    Args:
        tau: temperature τ > 0 (as REAL's); a rollout's weight is (1/τ)/(1 + k), k the rollouts of its label.
    """

    name = "real_s0"
    fn = staticmethod(real_s0_loss)

    def __init__(self, tau: float = DEFAULT_TAU) -> None:
        super().__init__(tau=tau)


class GRPO(LossSpec):
    """GRPO: token-level PPO clip of π_θ/π_old times the group-normalised advantage.

    Computed by :func:`~real_lightning.losses.policy_gradient.grpo_loss`: the mean over each sequence's tokens,
    then over the step's sequences.

    Args:
        clip_low: ε_low >= 0: the ratio is clipped below at 1 − ε_low for negative advantages.
        clip_high: ε_high >= 0: the ratio is clipped above at 1 + ε_high for positive advantages.
        adv_eps: added to the group's reward std in the advantage's denominator (> 0 while scale_adv_by_std).
        scale_adv_by_std: divide the centred reward by the group's std (false: Dr. GRPO).
        dual_clip: c > 1: a token of a negative-advantage rollout whose ratio exceeds c gets no gradient (dual-clip,
            verl's clip_ratio_c, usually 3; for stale data); null: off.
    """

    name = "grpo"
    fn = staticmethod(grpo_loss)

    def __init__(
        self,
        clip_low: float = CLIP_RANGES["grpo"][0],
        clip_high: float = CLIP_RANGES["grpo"][1],
        adv_eps: float = DEFAULT_ADV_EPS,
        scale_adv_by_std: bool = True,
        dual_clip: float | None = None,
    ) -> None:
        super().__init__(
            clip_low=clip_low,
            clip_high=clip_high,
            adv_eps=adv_eps,
            scale_adv_by_std=scale_adv_by_std,
            dual_clip=dual_clip,
        )


class DAPO(LossSpec):
    """DAPO: GRPO's token-level clip with clip-higher, token mean over the step.

    Computed by :func:`~real_lightning.losses.policy_gradient.dapo_loss`: the sum over tokens divided by the
    step's tokens.

    Args:
        clip_low: ε_low >= 0: the ratio is clipped below at 1 − ε_low for negative advantages.
        clip_high: ε_high >= 0: the ratio is clipped above at 1 + ε_high for positive advantages (clip-higher).
        adv_eps: added to the group's reward std in the advantage's denominator (> 0 while scale_adv_by_std).
        scale_adv_by_std: divide the centred reward by the group's std (false: Dr. GRPO).
        dual_clip: c > 1: a token of a negative-advantage rollout whose ratio exceeds c gets no gradient (dual-clip,
            verl's clip_ratio_c, usually 3; for stale data); null: off.
    """

    name = "dapo"
    fn = staticmethod(dapo_loss)

    def __init__(
        self,
        clip_low: float = CLIP_RANGES["dapo"][0],
        clip_high: float = CLIP_RANGES["dapo"][1],
        adv_eps: float = DEFAULT_ADV_EPS,
        scale_adv_by_std: bool = True,
        dual_clip: float | None = None,
    ) -> None:
        super().__init__(
            clip_low=clip_low,
            clip_high=clip_high,
            adv_eps=adv_eps,
            scale_adv_by_std=scale_adv_by_std,
            dual_clip=dual_clip,
        )


class GSPO(LossSpec):
    """GSPO: PPO clip of the sequence-level ratio exp(s_i) times the group-normalised advantage.

    Computed by :func:`~real_lightning.losses.policy_gradient.gspo_loss`: the mean over the step's sequences.

    Args:
        clip_low: ε_low >= 0: the sequence ratio is clipped below at 1 − ε_low for negative advantages.
        clip_high: ε_high >= 0: the sequence ratio is clipped above at 1 + ε_high for positive advantages.
        adv_eps: added to the group's reward std in the advantage's denominator (> 0 while scale_adv_by_std).
        scale_adv_by_std: divide the centred reward by the group's std (false: Dr. GRPO).
        log_ratio_clamp: s_i is clamped above at it before the exponential, no gradient beyond (> 0; the
            official REAL/verl GSPO uses 10); null: no clamp.
    """

    name = "gspo"
    fn = staticmethod(gspo_loss)

    def __init__(
        self,
        clip_low: float = CLIP_RANGES["gspo"][0],
        clip_high: float = CLIP_RANGES["gspo"][1],
        adv_eps: float = DEFAULT_ADV_EPS,
        scale_adv_by_std: bool = True,
        log_ratio_clamp: float | None = None,
    ) -> None:
        super().__init__(
            clip_low=clip_low,
            clip_high=clip_high,
            adv_eps=adv_eps,
            scale_adv_by_std=scale_adv_by_std,
            log_ratio_clamp=log_ratio_clamp,
        )


LOSS_SPECS: dict[str, type[LossSpec]] = {
    spec.name: spec for spec in (REAL, REALBCE, REALProduct, REALS0, GRPO, DAPO, GSPO)
}
"""The typed class of every registered loss, by name."""


def _yaml(value: Any) -> str:
    """A default as a config file writes it (true, null, 0.5)."""
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else repr(value)


def describe_specs(specs: Iterable[type[LossSpec]] = LOSS_SPECS.values()) -> str:
    """The typed losses with their hyper-parameters' defaults, then each hyper-parameter's description (the
    first class's ``Args:`` entry): the text ``real-lightning fit --help`` shows under ``--model.loss``.

    Examples:
        >>> print(describe_specs([REAL]))  # doctest: +ELLIPSIS
        Typed losses (class_path, init_args with defaults): real_lightning.losses.REAL(tau=0.5). ... tau: temper...
    """
    from docstring_parser import DocstringStyle, parse  # jsonargparse[signatures] reads the same docstrings

    signatures, docs = [], {}
    for spec in specs:
        params = inspect.signature(spec.__init__).parameters
        defaults = [f"{n}={_yaml(p.default)}" for n, p in params.items() if p.default is not inspect.Parameter.empty]
        shipped = spec.__module__ == __name__  # re-exported by real_lightning.losses
        path = f"real_lightning.losses.{spec.__name__}" if shipped else f"{spec.__module__}.{spec.__qualname__}"
        signatures.append(f"{path}({', '.join(defaults)})")
        for param in parse(spec.__doc__ or "", DocstringStyle.GOOGLE).params:
            docs.setdefault(param.arg_name, " ".join((param.description or "").split()))
    described = "; ".join(f"{name}: {doc.rstrip('.')}" for name, doc in docs.items())
    return (
        f"Typed losses (class_path, init_args with defaults): {', '.join(signatures)}. Their hyper-parameters "
        f"(--model.loss.help CLASS for one class): {described}."
    )
