"""What every loss shares: input checks, the sequence score s_i, KL diagnostics, LossOutput, TIS weights."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from real_lightning.utils.dtypes import compute_dtype
from real_lightning.utils.groups import Groups, build_groups, group_index_no_sync, segment_amax


@dataclass
class LossOutput:
    """Result of a loss function.

    Attributes:
        loss: scalar tensor to back-propagate.
        metrics: detached tensors (no device sync inside the loss). Every loss fills:

            - ``scores`` [B]: sequence score s_i = mean over response tokens of log π_θ − log π_old.
            - ``grad_weights`` [B]: per-rollout gradient weight ``Z · ∂loss/∂s_i`` where ``Z`` is
              ``weight_normalizer``. For losses that are not a function of s alone (GRPO, DAPO),
              ∂loss/∂s_i means the effective weight Σ_t ∂loss/∂logprobs[i, t] over the rollout's
              response tokens, which equals ∂loss/∂s_i for every loss that is a function of s.
              Units: per group for ``real`` and ``real_product`` (bounded by 1/τ), per rollout
              for ``real_bce``, per sequence for ``grpo``, ``dapo`` and ``gspo``. 0 for an empty
              response (s_i is then the constant 0).
            - ``weight_normalizer`` []: Z, the step's count in the loss's unit (the batch's
              own without ``counts``): groups for ``real``/``real_product``, contrast rollouts for
              ``real_bce``, sequences for ``grpo``, ``dapo`` and ``gspo``. With the step's
              :class:`BatchCounts` the weights do not depend on how the step is split.
            - ``labels`` [B] long: 1 positive, 0 negative, -1 in a group without label contrast.
            - ``contrast_fraction`` []: fraction of groups whose rewards are not all equal.
            - ``num_groups`` []: number of groups in the batch.
            - ``weight_abs_mean_pos`` / ``weight_abs_mean_neg`` []: mean |grad_weights| over
              positive / negative rollouts (0 when there are none).
            - ``ppo_kl`` []: token mean of log π_old − log π_θ (verl's ``ppo_kl``).
            - ``low_var_kl`` []: token mean of the k3 estimator exp(d) − d − 1, d = log π_old − log π_θ.

            Clipped losses add ``clip_fraction`` (and ``_high`` / ``_low``), the share of tokens
            (sequences for GSPO) whose gradient the clip removes, ``advantages`` [B] and ``clip_high_tokens``
            [B], each rollout's tokens clipped above (positive advantage, ratio > 1 + ε_high); with
            ``dual_clip`` (grpo, dapo) also ``clip_fraction_dual``, included in ``clip_fraction``.
            With ``importance_weights`` every loss adds ``importance_weight_mean`` [], the mean weight
            over the response tokens (a [B] weight counts once per token of its row), and
            ``grad_weights`` (so ``weight_abs_mean_pos`` / ``_neg``) include the weights (see
            :func:`prepare`); every other metric is the unweighted one.
    """

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


Count = float | Tensor
"""A count: a Python number or a 0-dim tensor."""


@dataclass(frozen=True)
class BatchCounts:
    """The normalisers of the losses, counted over a whole optimizer step.

    An optimizer step may run as several micro-batches on several ranks; its gradient must not
    depend on that split. So every loss takes ``counts=``, the counts over the whole step (all
    micro-batches, all ranks), and divides by the one in its unit. Micro-batches hold whole
    groups, so the sum of the per-micro-batch counts (:meth:`of`) is the step's counts: add them
    (``sum(parts)`` works), or stack each with :meth:`as_tensor`, all-reduce (sum) one tensor
    over the ranks and read it back with :meth:`from_tensor`. DDP/FSDP average the gradients over
    the ranks; with counts summed over the ranks, scale each rank's loss by the world size so
    the average is not divided twice.

    Attributes:
        groups: distinct group ids (prompts); ``real`` and ``real_product`` divide by it.
        contrast_rollouts: rollouts in groups whose rewards are not all equal; ``real_bce``.
        sequences: rollouts; ``grpo`` and ``gspo`` (and every GRPO-family ``weight_normalizer``).
        tokens: response tokens; ``dapo``.
        extra: counts a loss of yours declares beyond these four, by name (``extra_counts``: a
            function ``(response_mask, rewards, group_ids) -> {name: count}`` of one batch, counts
            that add up over batches of whole groups; see :class:`~real_lightning.losses.specs.LossSpec`).
            The training step passes the loss's ``extra_counts`` to :meth:`of` and all-reduces them
            with the others; empty for the shipped losses.

    Examples:
        >>> import torch
        >>> mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 1]])
        >>> part = BatchCounts.of(mask[:2], torch.tensor([1.0, 0.0]), torch.tensor([5, 5]))
        >>> rest = BatchCounts.of(mask[2:], torch.tensor([1.0, 1.0]), torch.tensor([9, 9]))
        >>> (part + rest).as_tensor().tolist()  # groups, contrast_rollouts, sequences, tokens
        [2.0, 2.0, 4.0, 9.0]
    """

    groups: Count
    contrast_rollouts: Count
    sequences: Count
    tokens: Count
    extra: Mapping[str, Count] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        response_mask: Tensor,
        rewards: Tensor,
        group_ids: Tensor,
        extra_counts: Callable[[Tensor, Tensor, Tensor], Mapping[str, Count]] | None = None,
    ) -> BatchCounts:
        """The counts of one batch (arguments as in the losses) as 0-dim float64 tensors, without a host sync;
        ``extra_counts(response_mask, rewards, group_ids)`` adds a loss's own counts (:attr:`extra`)."""
        if response_mask.dim() != 2:
            raise ValueError(f"response_mask must be [B, T], got shape {tuple(response_mask.shape)}")
        batch = response_mask.shape[0]
        for name, tensor in (("rewards", rewards), ("group_ids", group_ids)):
            if tensor.shape != (batch,):
                raise ValueError(f"{name} must be [B] = [{batch}], got shape {tuple(tensor.shape)}")
        index, num_groups = group_index_no_sync(group_ids)
        values = rewards.detach().to(compute_dtype(rewards.dtype))
        group_max = segment_amax(values, index, batch, float("-inf"))  # B segments: G ≤ B, the rest stay empty
        group_min = -segment_amax(-values, index, batch, float("-inf"))
        contrast = (group_max > group_min)[index]
        f64 = torch.float64
        return cls(
            groups=num_groups.to(f64),
            contrast_rollouts=contrast.sum().to(f64),
            sequences=torch.full((), batch, dtype=f64, device=rewards.device),  # a fill, not a host copy
            tokens=as_bool_mask(response_mask).sum().to(f64),
            extra={} if extra_counts is None else _as_counts(extra_counts(response_mask, rewards, group_ids), rewards),
        )

    def as_tensor(self, device: torch.device | str | None = None) -> Tensor:
        """[4] float64 (groups, contrast_rollouts, sequences, tokens), then :attr:`extra` by sorted name, on
        ``device`` (default: a field's, else CPU)."""
        values = [*(getattr(self, name) for name in _UNITS), *(self.extra[name] for name in sorted(self.extra))]
        if device is None:
            device = next((v.device for v in values if isinstance(v, Tensor)), None)
        as_count = [torch.as_tensor(v, dtype=torch.float64, device=device).detach().reshape(()) for v in values]
        return torch.stack(as_count)

    @classmethod
    def from_tensor(cls, counts: Tensor, extra: Iterable[str] = ()) -> BatchCounts:
        """Inverse of :meth:`as_tensor`: fields are the 0-dim entries of a [4] tensor ([4 + E] with the names
        of ``extra``)."""
        names = sorted(extra)
        size = len(_UNITS) + len(names)
        if counts.shape != (size,):
            raise ValueError(f"counts must be a [{size}] tensor, got shape {tuple(counts.shape)}")
        values = counts.unbind(0)
        return cls(*values[: len(_UNITS)], extra=dict(zip(names, values[len(_UNITS) :], strict=True)))

    def __add__(self, other: BatchCounts) -> BatchCounts:
        if not isinstance(other, BatchCounts):
            return NotImplemented
        if set(self.extra) != set(other.extra):
            raise ValueError(f"cannot add counts with extra {sorted(self.extra)} and {sorted(other.extra)}")
        return BatchCounts(
            *(getattr(self, name) + getattr(other, name) for name in _UNITS),
            extra={name: value + other.extra[name] for name, value in self.extra.items()},
        )

    def __radd__(self, other: object) -> BatchCounts:
        if isinstance(other, int) and other == 0:  # sum(parts) starts from 0
            return self
        return NotImplemented


_UNITS = ("groups", "contrast_rollouts", "sequences", "tokens")


def _as_counts(counts: Mapping[str, Count], like: Tensor) -> dict[str, Tensor]:
    """A loss's own counts as 0-dim float64 tensors on ``like``'s device, sorted by name."""
    return {
        name: torch.as_tensor(counts[name], dtype=torch.float64, device=like.device).detach().reshape(())
        for name in sorted(counts)
    }


def step_normalizer(count: Count, like: Tensor) -> Tensor:
    """A step count as a 0-dim constant of ``like``'s dtype and device, at least 1."""
    return torch.as_tensor(count, dtype=like.dtype, device=like.device).detach().clamp_min(1)


def check_inputs(
    logprobs: Tensor, old_logprobs: Tensor, response_mask: Tensor, rewards: Tensor, group_ids: Tensor
) -> None:
    """Raise ``ValueError`` naming the argument whose shape or dtype is wrong (shape checks only, no sync)."""
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be [B, T], got shape {tuple(logprobs.shape)}")
    for name, tensor in (("old_logprobs", old_logprobs), ("response_mask", response_mask)):
        if tensor.shape != logprobs.shape:
            raise ValueError(
                f"{name} must have the shape of logprobs {tuple(logprobs.shape)}, got {tuple(tensor.shape)}"
            )
    batch = logprobs.shape[0]
    for name, tensor in (("rewards", rewards), ("group_ids", group_ids)):
        if tensor.shape != (batch,):
            raise ValueError(f"{name} must be [B] = [{batch}], got shape {tuple(tensor.shape)}")
    if group_ids.is_floating_point() or group_ids.is_complex():
        raise ValueError(f"group_ids must be an integer tensor, got {group_ids.dtype}")
    if not logprobs.is_floating_point():
        raise ValueError(f"logprobs must be floating point, got {logprobs.dtype}")


def check_importance_weights(importance_weights: Tensor, logprobs: Tensor) -> None:
    """Raise ``ValueError`` unless ``importance_weights`` is a floating [B, T] or [B] tensor (no sync)."""
    batch, length = logprobs.shape
    if importance_weights.shape not in ((batch, length), (batch,)):
        raise ValueError(
            f"importance_weights must be [B, T] = [{batch}, {length}] (per token) or [B] = [{batch}] "
            f"(per sequence), got shape {tuple(importance_weights.shape)}"
        )
    if not importance_weights.is_floating_point():
        raise ValueError(f"importance_weights must be floating point, got {importance_weights.dtype}")


def check_positive(**hparams: float) -> None:
    """Raise ``ValueError`` naming any hyper-parameter that is not > 0."""
    for name, value in hparams.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")


def token_log_ratio(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor) -> Tensor:
    """[B, T] log π_θ − log π_old in the compute dtype, exactly 0 where the mask is 0.

    Masked positions may hold anything (padding, -inf): ``torch.where`` keeps them out of values
    and gradients.
    """
    dtype = compute_dtype(logprobs.dtype)
    diff = logprobs.to(dtype) - old_logprobs.detach().to(dtype)  # [B, T]
    return diff.masked_fill_(~mask, 0.0)  # in place: one [B, T] buffer; the backward zeroes masked grads


def response_lengths(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """[B] number of response tokens, at least 1 so that an empty response has s = 0."""
    return mask.sum(-1).clamp_min(1).to(dtype)


def sequence_scores(log_ratio: Tensor, lengths: Tensor) -> Tensor:
    """[B] s_i = (1/|o_i|) Σ_t log-ratio."""
    return log_ratio.sum(-1) / lengths


def masked_token_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Scalar mean of [B, T] values over mask (0 when the mask is empty)."""
    return torch.where(mask, values, torch.zeros_like(values)).sum() / mask.sum().clamp_min(1)


def masked_mean(values: Tensor, select: Tensor) -> Tensor:
    """Scalar mean of [B] values where ``select`` (0 when nothing is selected)."""
    return torch.where(select, values, torch.zeros_like(values)).sum() / select.sum().clamp_min(1)


class _ScaleGradient(torch.autograd.Function):
    """Identity in the forward pass (a view: the value is bit-identical); the backward multiplies by ``weights``."""

    @staticmethod
    def forward(ctx, x: Tensor, weights: Tensor) -> Tensor:
        ctx.save_for_backward(weights)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (weights,) = ctx.saved_tensors
        return grad * weights, None


@dataclass(frozen=True)
class ImportanceWeights:
    """Truncated importance sampling weights as the losses use them (built by :func:`prepare`).

    Attributes:
        tokens: [B, T] per-token weights, 0 outside the mask, or [B, 1] per-sequence weights (0 for
            an empty response); in the compute dtype, detached. Broadcasts against [B, T].
        rows: [B] each row's mean weight over its response tokens (w_i for per-sequence weights):
            Σ_t ∂loss/∂logprobs[i, t] = rows_i · ∂loss/∂s_i for a loss that is a function of s.
        mean: [] mean weight over the batch's response tokens (the ``importance_weight_mean`` metric).
        guard: [] 0, or NaN when a response token's weight is negative, NaN or infinite.
    """

    tokens: Tensor
    rows: Tensor
    mean: Tensor
    guard: Tensor

    @classmethod
    def of(cls, importance_weights: Tensor, mask: Tensor, lengths: Tensor) -> ImportanceWeights:
        weights = importance_weights.detach().to(lengths.dtype)
        zero = torch.zeros((), dtype=weights.dtype, device=weights.device)
        if weights.dim() == 2:
            tokens = torch.where(mask, weights, zero)  # padding may hold anything: it never reaches a value
            token_sum = tokens.sum(-1)
            rows = token_sum / lengths
        else:
            tokens = torch.where(mask.any(-1), weights, zero)[:, None]
            token_sum = tokens[:, 0] * mask.sum(-1).to(weights.dtype)
            rows = tokens[:, 0]
        # sqrt(w) is NaN for w < 0 or NaN and inf for +inf, so 0·Σ sqrt(w) is 0 exactly when all are valid
        guard = tokens.sqrt().sum() * 0
        return cls(tokens, rows, token_sum.sum() / mask.sum().clamp_min(1), guard)


@dataclass(frozen=True)
class PreparedBatch:
    """Quantities every loss derives from its inputs.

    Attributes:
        mask: [B, T] bool response mask.
        log_ratio: [B, T] log π_θ − log π_old in the compute dtype, 0 outside the mask. With importance
            weights its value is unchanged and its gradient is scaled by them (see :func:`prepare`).
        lengths: [B] response lengths, at least 1.
        scores: [B] sequence scores s_i (differentiable).
        rewards: [B] rewards in the compute dtype (detached).
        groups: group structure and labels.
        weights: the importance weights, or None.
    """

    mask: Tensor
    log_ratio: Tensor
    lengths: Tensor
    scores: Tensor
    rewards: Tensor
    groups: Groups
    weights: ImportanceWeights | None = None

    def weigh_rows(self, grad_weights: Tensor) -> Tensor:
        """[B] ∂loss/∂s_i of a loss that is a function of s → its effective weight Σ_t ∂loss/∂logprobs[i, t]."""
        return grad_weights if self.weights is None else grad_weights * self.weights.rows

    def finish(self, loss: Tensor) -> Tensor:
        """The loss, made NaN (without a host sync) if a response token's importance weight is invalid."""
        return loss if self.weights is None else loss + self.weights.guard


def prepare(
    logprobs: Tensor,
    old_logprobs: Tensor,
    response_mask: Tensor,
    rewards: Tensor,
    group_ids: Tensor,
    importance_weights: Tensor | None = None,
) -> PreparedBatch:
    """Check the inputs and compute the mask, log-ratios, scores and groups (arguments as in the losses).

    Truncated importance sampling: with ``importance_weights`` (w, [B, T] per token or [B] per
    sequence, detached, finite and ≥ 0) the log-ratio keeps its value but its gradient is scaled:
    ∂/∂logprobs[i, t] = w_{i,t} · ∂loss/∂log-ratio[i, t]. Every loss depends on logprobs[i, t] only
    through log-ratio[i, t], so each token's contribution to the gradient is multiplied by its
    weight, as verl and TRL multiply each token's loss term by w — while the loss value, and every
    metric but ``grad_weights`` and its means, stay those of the unweighted loss. Weights outside
    the mask are ignored; weights are detached here. Invalid weights (negative, NaN, ±inf at a
    response token) cannot raise without a host sync; :meth:`PreparedBatch.finish` makes the loss
    NaN instead, so a non-finite-loss check catches them rather than NaN gradients passing under a
    finite loss.
    """
    check_inputs(logprobs, old_logprobs, response_mask, rewards, group_ids)
    if importance_weights is not None:
        check_importance_weights(importance_weights, logprobs)
    mask = as_bool_mask(response_mask)
    log_ratio = token_log_ratio(logprobs, old_logprobs, mask)
    lengths = response_lengths(mask, log_ratio.dtype)
    weights = None
    if importance_weights is not None:
        weights = ImportanceWeights.of(importance_weights, mask, lengths)
        log_ratio = _ScaleGradient.apply(log_ratio, weights.tokens)
    rewards = rewards.detach().to(log_ratio.dtype)
    return PreparedBatch(
        mask=mask,
        log_ratio=log_ratio,
        lengths=lengths,
        scores=sequence_scores(log_ratio, lengths),
        rewards=rewards,
        groups=build_groups(rewards, group_ids),
        weights=weights,
    )


def base_metrics(batch: PreparedBatch, grad_weights: Tensor, normalizer: Tensor | int) -> dict[str, Tensor]:
    """The metrics every loss reports (see :class:`LossOutput`), all detached.

    ``grad_weights`` [B] is the effective weight Z·Σ_t ∂loss/∂logprobs[i, t], importance weights included.
    """
    scores, groups = batch.scores.detach(), batch.groups
    # an empty response has no token to carry gradient: its effective weight is 0
    grad_weights = torch.where(batch.mask.any(-1), grad_weights.detach(), torch.zeros_like(scores))
    log_ratio = batch.log_ratio.detach()  # 0 outside the mask, where both KL terms below vanish
    num_tokens = batch.mask.sum().clamp_min(1)
    k3 = log_ratio.neg().expm1_().add_(log_ratio)  # exp(d) − 1 − d with d = −log-ratio; one [B, T] buffer
    abs_weights = grad_weights.abs()
    metrics = {
        "scores": scores,
        "grad_weights": grad_weights,
        "weight_normalizer": torch.as_tensor(normalizer, device=scores.device).to(scores.dtype),
        "labels": groups.labels,
        "contrast_fraction": groups.contrast.to(scores.dtype).mean(),
        "num_groups": torch.tensor(groups.num_groups, dtype=scores.dtype, device=scores.device),
        "weight_abs_mean_pos": masked_mean(abs_weights, groups.positive),
        "weight_abs_mean_neg": masked_mean(abs_weights, groups.negative),
        "ppo_kl": -log_ratio.sum() / num_tokens,
        "low_var_kl": k3.sum() / num_tokens,
    }
    if batch.weights is not None:
        metrics["importance_weight_mean"] = batch.weights.mean
    return metrics


def as_bool_mask(response_mask: Tensor) -> Tensor:
    """Response mask as bool (accepts bool, integer or 0/1 float masks)."""
    return response_mask if response_mask.dtype == torch.bool else response_mask != 0
