"""The GRPO family of baselines: GRPO, DAPO and GSPO (clipped importance-weighted policy gradient).

All three share the group-normalised advantage A_i = (r_i − mean_q)/(std_q + eps) (std the
unbiased sample standard deviation, as in verl; a group of one takes mean 0 and std 1) and the
PPO clip min(ρA, clip(ρ, 1 − ε_low, 1 + ε_high)A). They differ in where the ratio ρ lives and how
the batch is aggregated:

====== ======================== ================== ====================================
loss   ratio ρ                  clip (low, high)   aggregation
====== ======================== ================== ====================================
grpo   per token                0.2, 0.2           mean over tokens, then over sequences
dapo   per token                0.2, 0.28          mean over all tokens of the batch
gspo   per sequence, exp(s_i)   3e-4, 4e-4         mean over sequences
====== ======================== ================== ====================================

"The batch" is the optimizer step: with ``counts=`` (:class:`~real_lightning.losses.common.BatchCounts`)
a micro-batch divides by the step's sequences (grpo, gspo) or tokens (dapo).

Dual-clip (``dual_clip=c``, grpo and dapo; Ye et al. 2020, verl's ``clip_ratio_c``): for a negative advantage
the objective is also bounded below, max(min(ρA, clip(ρ)A), c·A), so a token whose ratio has grown past c > 1
(the policy now favours a token it was told to avoid, typical of stale data) contributes the constant c·A and
no gradient, instead of a weight that grows with ρ without bound.

Truncated importance sampling (``importance_weights=``, see :func:`~real_lightning.losses.common.prepare`)
multiplies each token's gradient by its weight w_t: −w_t·A_i·ρ_t times the aggregation's factor where
the clip is inactive, 0 where it is active (GSPO: −A_i·ρ_i·w_t/|o_i|); the loss value is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from real_lightning.losses.common import BatchCounts, LossOutput, PreparedBatch, base_metrics, prepare, step_normalizer
from real_lightning.utils.groups import Groups, build_groups, segment_sum

Variant = Literal["grpo", "dapo", "gspo"]
CLIP_RANGES: dict[str, tuple[float, float]] = {"grpo": (0.2, 0.2), "dapo": (0.2, 0.28), "gspo": (3e-4, 4e-4)}
"""The papers' default (clip_low, clip_high) per variant."""
DEFAULT_ADV_EPS = 1e-6


def group_advantages(
    rewards: Tensor, groups: Groups, eps: float = DEFAULT_ADV_EPS, scale_by_std: bool = True
) -> Tensor:
    """[B] GRPO advantages (r_i − mean_q)/(std_q + eps); without ``scale_by_std`` just r_i − mean_q (Dr. GRPO)."""
    rewards = rewards.detach()
    sizes = groups.sizes.to(rewards.dtype)
    single = groups.sizes == 1
    mean = segment_sum(rewards, groups.index, groups.num_groups) / sizes
    centred = rewards - mean[groups.index]
    var = segment_sum(centred.square(), groups.index, groups.num_groups) / (sizes - 1).clamp_min(1)
    mean = torch.where(single, torch.zeros_like(mean), mean)
    std = torch.where(single, torch.ones_like(var), var.sqrt())
    advantages = rewards - mean[groups.index]
    return advantages / (std[groups.index] + eps) if scale_by_std else advantages


def grpo_advantages(
    rewards: Tensor, group_ids: Tensor, eps: float = DEFAULT_ADV_EPS, scale_by_std: bool = True
) -> Tensor:
    """[B] GRPO advantages of rewards [B] grouped by integer ``group_ids`` [B]."""
    dtype = torch.promote_types(rewards.dtype, torch.float32)
    return group_advantages(rewards.to(dtype), build_groups(rewards, group_ids), eps, scale_by_std)


@dataclass(frozen=True)
class _PGTerms:
    """The clipped objective min(ρA, clip(ρ)A) of each token (grpo, dapo) or sequence (gspo), summed per row.

    min(ρA, clip(ρ)A) is ρA where the clip is inactive and the constant bound·A where it is active,
    so each row's objective is A_i·value_sum_i with value_sum_i = Σ_active ρ + (1 + ε_high)·n_high +
    (1 − ε_low)·n_low: no [B, T] objective tensor is ever materialised.
    """

    value_sum: Tensor  # [B] differentiable, Σ over the row's tokens (or its sequence) of the clipped ratio
    active_ratio_sum: Tensor  # [B] detached, Σ over unclipped response tokens (or the sequence) of w·ρ (w: TIS, else 1)
    clip_high: Tensor  # [B] count of tokens (sequences: 0/1) clipped above, A > 0 and ρ > 1 + ε_high
    clip_low: Tensor  # [B] count of tokens (sequences: 0/1) clipped below, A < 0 and ρ < 1 − ε_low
    clip_dual: Tensor | None = None  # [B] count of tokens clipped by the dual clip, A < 0 and ρ > c; None: off


def clip_masks(ratio: Tensor, advantages: Tensor, clip_low: float, clip_high: float) -> tuple[Tensor, Tensor]:
    """Where the PPO clip removes the gradient: (high, low) bool masks of ratio's shape.

    min(ρA, clip(ρ)A) takes the constant clipped branch exactly when A > 0 and ρ > 1 + ε_high
    (high) or A < 0 and ρ < 1 − ε_low (low); everywhere else it equals ρA. ``advantages`` broadcasts.
    """
    high = (ratio > 1 + clip_high).logical_and_(advantages > 0)
    low = (ratio < 1 - clip_low).logical_and_(advantages < 0)
    return high, low


def _terms(
    batch: PreparedBatch,
    variant: Variant,
    clip_low: float,
    clip_high: float,
    adv: Tensor,
    log_ratio_clamp: float | None = None,
    dual_clip: float | None = None,
) -> _PGTerms:
    if variant == "gspo":
        scores = batch.scores if log_ratio_clamp is None else batch.scores.clamp(max=log_ratio_clamp)
        ratio = torch.exp(scores)  # [B] sequence-level ratio exp(mean_t log-ratio), the log-ratio ≤ the clamp
        high, low = clip_masks(ratio.detach(), adv, clip_low, clip_high)
        active = ~(high | low)
        # beyond the clamp the log-ratio is a constant: no gradient
        active_grad = active if log_ratio_clamp is None else active & (batch.scores.detach() <= log_ratio_clamp)
        bound = torch.full_like(ratio, 1 - clip_low).masked_fill_(high, 1 + clip_high).detach()
        value = torch.where(active, ratio, bound)
        active_ratio = torch.where(active_grad & batch.mask.any(-1), ratio.detach(), torch.zeros_like(value))
        active_ratio = batch.weigh_rows(active_ratio)
        return _PGTerms(value, active_ratio, high.to(value.dtype), low.to(value.dtype))
    ratio = torch.exp(batch.log_ratio)  # [B, T]; exactly 1 outside the mask, where no clip can be active
    high, low = clip_masks(ratio.detach(), adv[:, None], clip_low, clip_high)
    clipped = high | low
    dual = n_dual = None
    if dual_clip is not None:  # A < 0 and ρ > c: the constant c·A (ρ > c > 1 is never clipped low)
        dual = (ratio.detach() > dual_clip).logical_and_(adv[:, None] < 0).logical_and_(batch.mask)
        clipped = clipped | dual
        n_dual = dual.sum(-1).to(ratio.dtype)
    active = clipped.logical_not_().logical_and_(batch.mask)
    active_sum = torch.where(active, ratio, torch.zeros((), dtype=ratio.dtype, device=ratio.device)).sum(-1)
    n_high, n_low = high.sum(-1).to(ratio.dtype), low.sum(-1).to(ratio.dtype)
    value_sum = active_sum + (1 + clip_high) * n_high + (1 - clip_low) * n_low
    if n_dual is not None:
        value_sum = value_sum + dual_clip * n_dual
    if batch.weights is None:
        return _PGTerms(value_sum, active_sum.detach(), n_high, n_low, n_dual)
    weighted = torch.where(active, ratio.detach() * batch.weights.tokens, ratio.new_zeros(()))
    return _PGTerms(value_sum, weighted.sum(-1), n_high, n_low, n_dual)


@dataclass(frozen=True)
class _StepCounts:
    """The step's sequences and tokens as 0-dim constants of the compute dtype (from ``counts=``)."""

    sequences: Tensor
    tokens: Tensor

    @classmethod
    def of(cls, counts: BatchCounts | None, batch: PreparedBatch) -> _StepCounts | None:
        if counts is None:
            return None
        like = batch.lengths
        return cls(step_normalizer(counts.sequences, like), step_normalizer(counts.tokens, like))


def _aggregate(row_objective: Tensor, batch: PreparedBatch, variant: Variant, step: _StepCounts | None) -> Tensor:
    """Scalar loss from each row's summed objective A_i·value_sum_i [B]; ``step=None``: the batch's own means."""
    if variant == "gspo":
        return -row_objective.mean() if step is None else -row_objective.sum() / step.sequences
    if variant == "grpo":
        per_sequence = row_objective / batch.lengths
        return -per_sequence.mean() if step is None else -per_sequence.sum() / step.sequences
    tokens = batch.mask.sum().clamp_min(1) if step is None else step.tokens
    return -row_objective.sum() / tokens  # dapo: token-mean over the step


def _closed_form_weights(
    terms: _PGTerms, adv: Tensor, batch: PreparedBatch, variant: Variant, step: _StepCounts | None
) -> Tensor:
    """[B] N·Σ_t ∂loss/∂logprobs[i, t] (N sequences in the step): the effective weight on s_i, from the formula.

    Per token ∂(−min(ρA, clip(ρ)A))/∂log π = −Aρ where the clip is inactive, 0 where it is active;
    for GSPO ∂ρ/∂s = ρ. So the weight is −A_i·Σ_active ρ times the aggregation's factor
    (1/|o_i| for GRPO, N/N_tok for DAPO); importance weights turn Σ_active ρ into Σ_active w_t·ρ_t
    (GSPO: ρ_i times the row's mean token weight).
    """
    signal = -adv * terms.active_ratio_sum
    if variant == "gspo":
        return signal
    if variant == "grpo":
        return signal / batch.lengths
    if step is None:
        return signal * batch.mask.shape[0] / batch.mask.sum().clamp_min(1)
    return signal * step.sequences / step.tokens


def _pg_loss(
    variant: Variant,
    logprobs: Tensor,
    old_logprobs: Tensor,
    response_mask: Tensor,
    rewards: Tensor,
    group_ids: Tensor,
    clip_low: float,
    clip_high: float,
    adv_eps: float,
    scale_adv_by_std: bool,
    counts: BatchCounts | None,
    importance_weights: Tensor | None,
    log_ratio_clamp: float | None = None,
    dual_clip: float | None = None,
) -> LossOutput:
    if clip_low < 0 or clip_high < 0:
        raise ValueError(f"clip_low and clip_high must be >= 0, got {clip_low}, {clip_high}")
    if log_ratio_clamp is not None and not log_ratio_clamp > 0:
        raise ValueError(f"log_ratio_clamp must be > 0 or None, got {log_ratio_clamp}")
    _check_dual_clip(dual_clip, variant)
    batch = prepare(logprobs, old_logprobs, response_mask, rewards, group_ids, importance_weights)
    step = _StepCounts.of(counts, batch)
    adv = group_advantages(batch.rewards, batch.groups, adv_eps, scale_adv_by_std)
    terms = _terms(batch, variant, clip_low, clip_high, adv, log_ratio_clamp, dual_clip)
    loss = batch.finish(_aggregate(adv * terms.value_sum, batch, variant, step))
    normalizer = batch.mask.shape[0] if step is None else step.sequences
    metrics = base_metrics(batch, _closed_form_weights(terms, adv, batch, variant, step), normalizer)
    metrics["advantages"] = adv
    units = batch.mask.shape[0] if variant == "gspo" else batch.mask.sum().clamp_min(1)  # sequences or tokens
    metrics["clip_fraction_high"] = terms.clip_high.sum() / units
    metrics["clip_fraction_low"] = terms.clip_low.sum() / units
    metrics["clip_fraction"] = metrics["clip_fraction_high"] + metrics["clip_fraction_low"]
    metrics["clip_high_tokens"] = terms.clip_high  # [B], for the share of positive-advantage tokens clipped
    if terms.clip_dual is not None:
        metrics["clip_fraction_dual"] = terms.clip_dual.sum() / units
        metrics["clip_fraction"] = metrics["clip_fraction"] + metrics["clip_fraction_dual"]
    return LossOutput(loss, metrics)


def _check_dual_clip(dual_clip: float | None, variant: Variant) -> None:
    if dual_clip is None:
        return
    if variant == "gspo":
        raise ValueError("dual_clip applies to the token-level ratio of grpo and dapo, not gspo")
    if not dual_clip > 1:
        raise ValueError(f"dual_clip must be > 1 or None, got {dual_clip}")


def pg_gradient_weights(
    variant: Variant,
    *,
    logprobs: Tensor,
    old_logprobs: Tensor,
    response_mask: Tensor,
    rewards: Tensor,
    group_ids: Tensor,
    clip_low: float | None = None,
    clip_high: float | None = None,
    adv_eps: float = DEFAULT_ADV_EPS,
    scale_adv_by_std: bool = True,
    counts: BatchCounts | None = None,
    importance_weights: Tensor | None = None,
    log_ratio_clamp: float | None = None,
    dual_clip: float | None = None,
) -> Tensor:
    """Closed-form effective per-rollout weights [B] of a GRPO-family loss, N·Σ_t ∂loss/∂logprobs[i, t].

    grpo: −A_i·mean_t(ρ_t·[unclipped]); dapo: −A_i·(N/N_tok)·Σ_t ρ_t·[unclipped]; gspo: −A_i·e^{s_i}·[unclipped].
    N and N_tok are the sequences and response tokens of the step (``counts``; ``None``: of this
    batch), so only DAPO's weight depends on them. On-policy (ρ = 1) GRPO's weight is −A_i,
    whatever the rollout's probability. Clip ranges default to the variant's (:data:`CLIP_RANGES`).
    With ``importance_weights`` ρ_t becomes w_t·ρ_t (gspo: e^{s_i} times the row's mean weight); with
    ``dual_clip`` c, tokens of negative-advantage rollouts with ρ_t > c leave the sums too.
    """
    default_low, default_high = CLIP_RANGES[variant]
    clip_low = default_low if clip_low is None else clip_low
    clip_high = default_high if clip_high is None else clip_high
    _check_dual_clip(dual_clip, variant)
    with torch.no_grad():
        batch = prepare(logprobs, old_logprobs, response_mask, rewards, group_ids, importance_weights)
        adv = group_advantages(batch.rewards, batch.groups, adv_eps, scale_adv_by_std)
        terms = _terms(batch, variant, clip_low, clip_high, adv, log_ratio_clamp, dual_clip)
        return _closed_form_weights(terms, adv, batch, variant, _StepCounts.of(counts, batch))


def grpo_loss(
    *,
    logprobs: Tensor,
    old_logprobs: Tensor,
    response_mask: Tensor,
    rewards: Tensor,
    group_ids: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    adv_eps: float = DEFAULT_ADV_EPS,
    scale_adv_by_std: bool = True,
    counts: BatchCounts | None = None,
    importance_weights: Tensor | None = None,
    dual_clip: float | None = None,
) -> LossOutput:
    """GRPO: token-level PPO clip, mean over each sequence's tokens, then over sequences.

    Args:
        logprobs: as in :func:`~real_lightning.losses.real.real_loss`.
        old_logprobs: as in :func:`~real_lightning.losses.real.real_loss`.
        response_mask: as in :func:`~real_lightning.losses.real.real_loss`.
        rewards: as in :func:`~real_lightning.losses.real.real_loss`.
        group_ids: as in :func:`~real_lightning.losses.real.real_loss`.
        clip_low: ε_low, the ratio is clipped below at 1 − ε_low for negative advantages.
        clip_high: ε_high, the ratio is clipped above at 1 + ε_high for positive advantages.
        adv_eps: added to the group std in the advantage's denominator.
        scale_adv_by_std: divide the centred reward by the group std (False: Dr. GRPO).
        counts: the optimizer step's counts (:class:`~real_lightning.losses.common.BatchCounts`);
            the sum over sequences is divided by ``counts.sequences``. ``None``: this batch's.
        importance_weights: truncated importance sampling weights, [B, T] per token
            (w_t = min(π_old/π_behaviour, C)) or [B] per sequence, detached, finite and ≥ 0. Each
            token's gradient −A·ρ_t·(1/|o_i|)/N (0 where clipped) is multiplied by w_t; the loss
            value is unchanged (:func:`~real_lightning.losses.common.prepare`). ``None``: no correction.
        dual_clip: c > 1, or None (off): a token of a negative-advantage rollout whose ratio exceeds c
            contributes the constant c·A and no gradient (dual-clip PPO, verl's ``clip_ratio_c``, usually 3).
    """
    return _pg_loss(
        "grpo",
        logprobs,
        old_logprobs,
        response_mask,
        rewards,
        group_ids,
        clip_low,
        clip_high,
        adv_eps,
        scale_adv_by_std,
        counts,
        importance_weights,
        dual_clip=dual_clip,
    )


def dapo_loss(
    *,
    logprobs: Tensor,
    old_logprobs: Tensor,
    response_mask: Tensor,
    rewards: Tensor,
    group_ids: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    adv_eps: float = DEFAULT_ADV_EPS,
    scale_adv_by_std: bool = True,
    counts: BatchCounts | None = None,
    importance_weights: Tensor | None = None,
    dual_clip: float | None = None,
) -> LossOutput:
    """DAPO: clip-higher (ε_low 0.2, ε_high 0.28) and a token-mean over the whole step (``counts.tokens``).

    Dynamic sampling (dropping groups whose rewards are all equal) happens in the data pipeline;
    such groups have zero advantage here. Arguments as in :func:`grpo_loss`.
    """
    return _pg_loss(
        "dapo",
        logprobs,
        old_logprobs,
        response_mask,
        rewards,
        group_ids,
        clip_low,
        clip_high,
        adv_eps,
        scale_adv_by_std,
        counts,
        importance_weights,
        dual_clip=dual_clip,
    )


def gspo_loss(
    *,
    logprobs: Tensor,
    old_logprobs: Tensor,
    response_mask: Tensor,
    rewards: Tensor,
    group_ids: Tensor,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
    adv_eps: float = DEFAULT_ADV_EPS,
    scale_adv_by_std: bool = True,
    counts: BatchCounts | None = None,
    importance_weights: Tensor | None = None,
    log_ratio_clamp: float | None = None,
) -> LossOutput:
    """GSPO: sequence-level ratio exp(s_i) = exp(mean_t log-ratio), clip 3e-4/4e-4, mean over the step's sequences.

    Arguments as in :func:`grpo_loss`; ``clip_fraction`` counts sequences, not tokens. ``log_ratio_clamp``:
    s_i is clamped above at it before the exponential (the official REAL/verl GSPO uses 10: it bounds the
    ratio of a negative-advantage rollout, which the PPO clip leaves unbounded); beyond it the rollout gets no
    gradient. None: no clamp.
    """
    return _pg_loss(
        "gspo",
        logprobs,
        old_logprobs,
        response_mask,
        rewards,
        group_ids,
        clip_low,
        clip_high,
        adv_eps,
        scale_adv_by_std,
        counts,
        importance_weights,
        log_ratio_clamp,
    )
