"""REAL — Rewards as Labels (arXiv 2602.05630) and its BCE and product variants.

Each rollout i of a prompt gets the sequence score s_i (mean token log-ratio against the
sampling policy, see :func:`~real_lightning.losses.common.sequence_scores`) and a label:
positive when its reward equals the best reward of its group, negative otherwise. Groups whose
rewards are all equal carry no label contrast and contribute exactly zero loss and gradient.

Every loss here is a function of the scores, so with truncated importance sampling
(``importance_weights=``, see :func:`~real_lightning.losses.common.prepare`) token t of rollout i
gets ∂loss/∂logprobs[i, t] = (∂loss/∂s_i)·w_t/|o_i| instead of (∂loss/∂s_i)/|o_i|: the rollout's
total weight is ∂loss/∂s_i times its mean token weight (w_i for per-sequence weights). The loss
value is unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from real_lightning.losses.common import (
    BatchCounts,
    LossOutput,
    base_metrics,
    check_positive,
    prepare,
    step_normalizer,
)
from real_lightning.utils.groups import Groups, build_groups, segment_logsumexp

DEFAULT_TAU = 0.5
"""The paper's temperature τ."""


def _label_logsumexps(x: Tensor, groups: Groups, anchor: bool) -> tuple[Tensor, Tensor]:
    """Per group [G]: logsumexp of −x over positives and of x over negatives (with or without the 0 anchor)."""
    pos = segment_logsumexp(-x, groups.index, groups.num_groups, groups.positive, anchor=anchor)
    neg = segment_logsumexp(x, groups.index, groups.num_groups, groups.negative, anchor=anchor)
    return pos, neg


def _real_weights(scores: Tensor, groups: Groups, tau: float) -> Tensor:
    x = scores.detach() / tau
    pos_lse, neg_lse = _label_logsumexps(x, groups, anchor=True)
    index = groups.index
    pos_weight = -torch.exp(-x - pos_lse[index]) / tau  # −(1/τ) e^{−s_i/τ} / (1 + Σ_{O+} e^{−s/τ})
    neg_weight = torch.exp(x - neg_lse[index]) / tau  # +(1/τ) e^{s_j/τ} / (1 + Σ_{O−} e^{s/τ})
    return torch.where(groups.positive, pos_weight, torch.where(groups.negative, neg_weight, torch.zeros_like(x)))


def real_gradient_weights(scores: Tensor, rewards: Tensor, group_ids: Tensor, tau: float = DEFAULT_TAU) -> Tensor:
    """Closed-form REAL gradient weights ∂L_q/∂s_i of each rollout's group loss L_q.

    Args:
        scores: [B] sequence scores s_i.
        rewards: [B] rewards (the label is "reward equals the group's best").
        group_ids: [B] integer group ids.
        tau: temperature τ > 0.

    Returns:
        [B] weights: −(1/τ)·e^{−s_i/τ}/(1 + Σ_{O+} e^{−s/τ}) for positives, +(1/τ)·e^{s_j/τ}/(1 + Σ_{O−} e^{s/τ})
        for negatives, 0 in groups without contrast. Each lies in (−1/τ, 0) or (0, 1/τ) and is monotone in s.
        The batch loss of :func:`real_loss` has ∂loss/∂s_i = weight_i / G.
    """
    check_positive(tau=tau)
    return _real_weights(scores, build_groups(rewards, group_ids), tau)


def real_loss(
    *,
    logprobs: Tensor,
    old_logprobs: Tensor,
    response_mask: Tensor,
    rewards: Tensor,
    group_ids: Tensor,
    tau: float = DEFAULT_TAU,
    counts: BatchCounts | None = None,
    importance_weights: Tensor | None = None,
) -> LossOutput:
    """REAL: per group L_q = log(1 + Σ_{O+} e^{−s_i/τ}) + log(1 + Σ_{O−} e^{s_j/τ}); loss = Σ_q L_q / G.

    Args:
        logprobs: [B, T] log π_θ of the response tokens (differentiable).
        old_logprobs: [B, T] log π_old of the same tokens (treated as constants).
        response_mask: [B, T] 1/True where a token counts.
        rewards: [B] verifiable rewards.
        group_ids: [B] integer ids, shared by the rollouts of one prompt.
        tau: temperature τ > 0 (paper: 0.5).
        counts: the optimizer step's counts (:class:`~real_lightning.losses.common.BatchCounts`);
            ``None``: this batch's.
        importance_weights: truncated importance sampling weights, [B, T] per token
            (w_t = min(π_old/π_behaviour, C)) or [B] per sequence, detached, finite and ≥ 0. They scale
            each token's gradient, ∂loss/∂logprobs[i, t] = (∂loss/∂s_i)·w_t/|o_i|; the loss value is
            unchanged (:func:`~real_lightning.losses.common.prepare`). ``None``: no correction.

    G = ``counts.groups`` counts every group of the step, with or without contrast, so the losses
    of micro-batches of whole groups add up to the step's. No ratio clipping: the weights are
    bounded by 1/τ (:func:`real_gradient_weights`).
    """
    check_positive(tau=tau)
    batch = prepare(logprobs, old_logprobs, response_mask, rewards, group_ids, importance_weights)
    scores, groups = batch.scores, batch.groups
    pos_lse, neg_lse = _label_logsumexps(scores / tau, groups, anchor=True)
    normalizer = groups.num_groups if counts is None else step_normalizer(counts.groups, scores)
    loss = (pos_lse + neg_lse).sum() / normalizer  # groups without contrast have both terms = log 1 = 0
    weights = batch.weigh_rows(_real_weights(scores, groups, tau))
    return LossOutput(batch.finish(loss), base_metrics(batch, weights, normalizer))


def _bce_weights(scores: Tensor, groups: Groups, tau: float) -> Tensor:
    x = scores.detach() / tau
    weights = (torch.sigmoid(x) - groups.positive.to(x.dtype)) / tau
    return torch.where(groups.labels >= 0, weights, torch.zeros_like(x))


def real_bce_gradient_weights(scores: Tensor, rewards: Tensor, group_ids: Tensor, tau: float = DEFAULT_TAU) -> Tensor:
    """Closed-form weights ∂ℓ_i/∂s_i = (σ(s_i/τ) − y_i)/τ of each rollout's BCE term ℓ_i; 0 without contrast.

    The batch loss of :func:`real_bce_loss` has ∂loss/∂s_i = weight_i / N_c (N_c rollouts in contrast groups).
    """
    check_positive(tau=tau)
    return _bce_weights(scores, build_groups(rewards, group_ids), tau)


def real_bce_loss(
    *,
    logprobs: Tensor,
    old_logprobs: Tensor,
    response_mask: Tensor,
    rewards: Tensor,
    group_ids: Tensor,
    tau: float = DEFAULT_TAU,
    counts: BatchCounts | None = None,
    importance_weights: Tensor | None = None,
) -> LossOutput:
    """REAL-BCE: binary cross-entropy with logit s_i/τ and label y_i = [reward_i is the group's best].

    The sum runs over the rollouts of groups with a label contrast and is divided by N_c, their
    number in the step (``counts.contrast_rollouts``, at least 1; loss 0 when there are none).
    Arguments as in :func:`real_loss`.
    """
    check_positive(tau=tau)
    batch = prepare(logprobs, old_logprobs, response_mask, rewards, group_ids, importance_weights)
    scores, groups = batch.scores, batch.groups
    counted = groups.labels >= 0
    per_rollout = F.binary_cross_entropy_with_logits(scores / tau, groups.positive.to(scores.dtype), reduction="none")
    if counts is None:
        normalizer = counted.sum().clamp_min(1)
    else:
        normalizer = step_normalizer(counts.contrast_rollouts, scores)
    loss = torch.where(counted, per_rollout, torch.zeros_like(per_rollout)).sum() / normalizer
    weights = batch.weigh_rows(_bce_weights(scores, groups, tau))
    return LossOutput(batch.finish(loss), base_metrics(batch, weights, normalizer))


def _product_weights(scores: Tensor, groups: Groups, tau: float) -> Tensor:
    x = scores.detach() / tau
    pos_lse, neg_lse = _label_logsumexps(x, groups, anchor=False)
    gate = torch.sigmoid(pos_lse + neg_lse)[groups.index]  # d softplus(u)/du
    index = groups.index
    pos_weight = -gate * torch.exp(-x - pos_lse[index]) / tau
    neg_weight = gate * torch.exp(x - neg_lse[index]) / tau
    return torch.where(groups.positive, pos_weight, torch.where(groups.negative, neg_weight, torch.zeros_like(x)))


def real_product_gradient_weights(
    scores: Tensor, rewards: Tensor, group_ids: Tensor, tau: float = DEFAULT_TAU
) -> Tensor:
    """Closed-form weights ∂L_q/∂s_i of the product loss: ∓(σ(u_q)/τ)·softmax within the label set.

    u_q = logsumexp_{O−}(s/τ) + logsumexp_{O+}(−s/τ). ∂loss/∂s_i = weight_i / G for :func:`real_product_loss`.
    """
    check_positive(tau=tau)
    return _product_weights(scores, build_groups(rewards, group_ids), tau)


def real_product_loss(
    *,
    logprobs: Tensor,
    old_logprobs: Tensor,
    response_mask: Tensor,
    rewards: Tensor,
    group_ids: Tensor,
    tau: float = DEFAULT_TAU,
    counts: BatchCounts | None = None,
    importance_weights: Tensor | None = None,
) -> LossOutput:
    """REAL product (circle-loss) form: L_q = softplus(logsumexp_{O−}(s/τ) + logsumexp_{O+}(−s/τ)).

    Summed over groups with a contrast and divided by the number of groups G of the step
    (``counts.groups``). Arguments as in :func:`real_loss`.
    """
    check_positive(tau=tau)
    batch = prepare(logprobs, old_logprobs, response_mask, rewards, group_ids, importance_weights)
    scores, groups = batch.scores, batch.groups
    pos_lse, neg_lse = _label_logsumexps(scores / tau, groups, anchor=False)
    u = pos_lse + neg_lse
    per_group = torch.logaddexp(u, torch.zeros_like(u))  # softplus without F.softplus's linear cut-off at 20
    normalizer = groups.num_groups if counts is None else step_normalizer(counts.groups, scores)
    loss = torch.where(groups.contrast, per_group, torch.zeros_like(per_group)).sum() / normalizer
    weights = batch.weigh_rows(_product_weights(scores, groups, tau))
    return LossOutput(batch.finish(loss), base_metrics(batch, weights, normalizer))


def real_s0_loss(
    *,
    logprobs: Tensor,
    old_logprobs: Tensor,
    response_mask: Tensor,
    rewards: Tensor,
    group_ids: Tensor,
    tau: float = DEFAULT_TAU,
    counts: BatchCounts | None = None,
    importance_weights: Tensor | None = None,
) -> LossOutput:
    """``real_s0``: REINFORCE with REAL's weights taken at s = 0, a control for REAL's dependence on s.

    loss = Σ_i c_i·s_i / G with the constant c_i = −(1/τ)/(1 + k⁺) for a positive and +(1/τ)/(1 + k⁻) for a
    negative (k⁺, k⁻ the positives and negatives of its group; 0 without a label contrast): REAL's weights
    ∂L_q/∂s_i at s = 0, so at s = 0 its gradient is REAL's exactly, and it keeps how REAL splits a group's weight
    (a group with one positive of 8 gives its 7 negatives (7/8)/(1/2 + 7/8) ≈ 64 % of it) while dropping how the
    weights move with s. The loss value is 0 on-policy. Arguments as in :func:`real_loss`.
    """
    check_positive(tau=tau)
    batch = prepare(logprobs, old_logprobs, response_mask, rewards, group_ids, importance_weights)
    scores, groups = batch.scores, batch.groups
    at_zero = _real_weights(torch.zeros_like(scores), groups, tau)  # constants: no gradient through s
    normalizer = groups.num_groups if counts is None else step_normalizer(counts.groups, scores)
    loss = (at_zero * scores).sum() / normalizer
    return LossOutput(batch.finish(loss), base_metrics(batch, batch.weigh_rows(at_zero), normalizer))
