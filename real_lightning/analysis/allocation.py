"""How a loss allocates gradient across the rollouts of each group: the statistics the monitor logs.

All functions take the per-rollout tensors a :class:`~real_lightning.losses.LossOutput` carries
(``grad_weights``, ``scores``, ``labels``) and the batch's ``group_ids``; they are pure and
vectorised over groups.
"""

from __future__ import annotations

import torch
from torch import Tensor

from real_lightning.utils.groups import NEGATIVE, POSITIVE, group_index, segment_amax, segment_sum


def _segment_ranks(values: Tensor, segment: Tensor) -> Tensor:
    """[B] average rank (0-based, ties averaged) of each value within its segment."""
    # sort by (segment, value): ranks are positions within the segment's run
    order = torch.argsort(values, stable=True)
    order = order[torch.argsort(segment[order], stable=True)]
    sorted_seg, sorted_val = segment[order], values[order]
    position = torch.arange(values.numel(), device=values.device, dtype=torch.float64)
    seg_start = torch.zeros_like(position).scatter_reduce(0, sorted_seg, position, "amin", include_self=False)
    rank_sorted = position - seg_start[sorted_seg]
    # average the ranks of ties (same segment, same value)
    key_change = torch.ones_like(sorted_seg, dtype=torch.bool)
    key_change[1:] = (sorted_seg[1:] != sorted_seg[:-1]) | (sorted_val[1:] != sorted_val[:-1])
    tie_id = torch.cumsum(key_change.long(), 0) - 1
    tie_count = torch.bincount(tie_id).to(torch.float64)
    tie_mean = torch.zeros_like(tie_count).index_add_(0, tie_id, rank_sorted) / tie_count
    ranks = torch.empty_like(position)
    ranks[order] = tie_mean[tie_id]
    return ranks


def within_group_rank_correlation(weights: Tensor, scores: Tensor, segment: Tensor) -> tuple[Tensor, Tensor]:
    """Spearman correlation of weight and score inside each segment → ([S] correlations, [S] defined).

    A segment's correlation is defined when it has at least two members and both weight and score
    vary within it; undefined entries are 0.
    """
    index, count = group_index(segment)
    x = _segment_ranks(scores.double(), index)
    y = _segment_ranks(weights.double(), index)
    n = torch.bincount(index, minlength=count).to(torch.float64)
    mx, my = segment_sum(x, index, count) / n, segment_sum(y, index, count) / n
    dx, dy = x - mx[index], y - my[index]
    cov = segment_sum(dx * dy, index, count)
    vx, vy = segment_sum(dx * dx, index, count), segment_sum(dy * dy, index, count)
    defined = (n >= 2) & (vx > 0) & (vy > 0)
    corr = torch.where(defined, cov / (vx * vy).clamp_min(1e-300).sqrt(), torch.zeros_like(cov))
    return corr, defined


def allocation_stats(weights: Tensor, scores: Tensor, labels: Tensor, group_ids: Tensor) -> dict[str, Tensor]:
    """Scalar statistics of a batch's gradient allocation (keys as logged, without the ``weights/`` prefix).

    - ``{pos,neg}_abs_max`` / ``_abs_mean``: max and mean |weight| of positive / negative rollouts.
    - ``domination_max`` / ``_mean``: over groups with a label contrast, the largest single rollout's
      share of its group's total |weight| (1/n when spread evenly, → 1 when one rollout dominates).
    - ``pos_zero_fraction``: share of positive rollouts whose weight is exactly 0 — the clip of
      GRPO-style losses removing them ("gradient misassignment"); 0 for REAL.
    - ``rank_corr_{pos,neg}``: mean within-group Spearman correlation between weight and score
      among positives / negatives (groups where both vary); REAL's weights are monotone, so 1.
    """
    weights, scores = weights.detach().double(), scores.detach().double()
    out: dict[str, Tensor] = {}
    zero = torch.zeros((), dtype=torch.float64, device=weights.device)
    for name, label in (("pos", POSITIVE), ("neg", NEGATIVE)):
        chosen = labels == label
        magnitude = weights.abs()[chosen]
        out[f"{name}_abs_max"] = magnitude.max() if magnitude.numel() else zero
        out[f"{name}_abs_mean"] = magnitude.mean() if magnitude.numel() else zero
        if chosen.sum() >= 2:
            corr, defined = within_group_rank_correlation(weights[chosen], scores[chosen], group_ids[chosen])
            out[f"rank_corr_{name}"] = corr[defined].mean() if defined.any() else zero
        else:
            out[f"rank_corr_{name}"] = zero
    positives = labels == POSITIVE
    out["pos_zero_fraction"] = (weights[positives] == 0).double().mean() if positives.any() else zero
    in_contrast = labels >= 0
    if in_contrast.any():
        index, count = group_index(group_ids[in_contrast])
        magnitude = weights.abs()[in_contrast]
        total = segment_sum(magnitude, index, count)
        largest = segment_amax(magnitude, index, count, 0.0)
        share = torch.where(total > 0, largest / total.clamp_min(1e-300), torch.zeros_like(total))
        out["domination_max"], out["domination_mean"] = share.max(), share.mean()
    else:
        out["domination_max"] = out["domination_mean"] = zero
    return out
