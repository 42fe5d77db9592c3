"""What REAL's argument is about, measured per optimizer step: how far ratios moved, and where the weight went.

The paper says GRPO's weight on a positive rollout rises with its score s until the clip cuts it to 0
("misassignment") and its weight on a negative grows without bound ("domination"), while REAL's falls for
positives and is capped at 1/τ for negatives. Those claims bite only where s moves away from 0, as with stale
rollouts. :func:`mechanism_stats` measures, from one step's per-rollout loss outputs and rollouts:

- ``score_abs_p50_pos`` / ``_p90_pos`` / ``_neg``: quantiles of |s_i| over positives / negatives (groups with a
  label contrast);
- ``clipped_pos_share``: the share of positive-advantage tokens whose gradient the clip removed (GRPO family);
- ``neg_domination_mean`` / ``_p95``: among the negatives of a group (groups with ≥ 2), the largest rollout's share
  of their total |weight| (1/k when even, → 1 when one dominates), mean and 95th percentile over groups;
- ``rank_corr_pos``: within-group Spearman correlation of |weight| with s among positives, averaged over the
  groups where it is defined (≥ 2 positives, both varying; absent when none is), and ``rank_corr_pos_defined``,
  the share of contrast groups where it is;
- ``distinct_correct_mean``: distinct correct responses (token sequences) per group with a correct one;
  ``multi_correct_share``: the share of contrast groups with ≥ 2 distinct correct responses;
- ``pass_at_n``: the share of groups with a correct response (pass@n for n rollouts per prompt).

A statistic with nothing to measure (no negatives, say) is left out rather than reported as 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from real_lightning.analysis.allocation import within_group_rank_correlation
from real_lightning.utils.groups import NEGATIVE, POSITIVE, group_index, segment_amax, segment_sum


def _quantiles(values: Tensor, name: str, out: dict[str, float]) -> None:
    if values.numel():
        p50, p90 = torch.quantile(values.double(), torch.tensor([0.5, 0.9], dtype=torch.float64)).tolist()
        out[f"score_abs_p50_{name}"], out[f"score_abs_p90_{name}"] = p50, p90


def mechanism_stats(
    weights: Tensor,
    scores: Tensor,
    labels: Tensor,
    group_ids: Tensor,
    rewards: Tensor,
    responses: list[tuple[int, ...]],
    lengths: Tensor,
    clip_high_tokens: Tensor | None = None,
    advantages: Tensor | None = None,
) -> dict[str, float]:
    """The statistics of the module docstring for one step's B rollouts.

    Args:
        weights: [B] per-rollout gradient weights (``LossOutput.metrics["grad_weights"]``).
        scores: [B] sequence scores s_i.
        labels: [B] 1 positive, 0 negative, -1 without label contrast.
        group_ids: [B] group of each rollout.
        rewards: [B] rewards; a response is correct when its reward is > 0.
        responses: B response token sequences (to count distinct correct ones).
        lengths: [B] response tokens counted by the loss.
        clip_high_tokens: [B] tokens clipped above per rollout (GRPO family), or None.
        advantages: [B] advantages (GRPO family), or None.

    Returns:
        name → value, without the statistics that have nothing to measure.
    """
    weights, scores = weights.detach().double().cpu(), scores.detach().double().cpu()
    labels, group_ids, rewards = labels.cpu(), group_ids.cpu(), rewards.cpu()
    out: dict[str, float] = {}
    positive, negative = labels == POSITIVE, labels == NEGATIVE
    _quantiles(scores[positive].abs(), "pos", out)
    _quantiles(scores[negative].abs(), "neg", out)
    if clip_high_tokens is not None and advantages is not None:
        up = advantages.cpu() > 0
        tokens = lengths.cpu()[up].double().sum()
        if tokens > 0:
            out["clipped_pos_share"] = float(clip_high_tokens.cpu()[up].double().sum() / tokens)
    if negative.any():
        index, count = group_index(group_ids[negative])
        magnitude = weights[negative].abs()
        members = torch.bincount(index, minlength=count)
        total = segment_sum(magnitude, index, count)
        share = segment_amax(magnitude, index, count, 0.0) / total.clamp_min(1e-300)
        share = share[(members >= 2) & (total > 0)]
        if share.numel():
            out["neg_domination_mean"] = float(share.mean())
            out["neg_domination_p95"] = float(torch.quantile(share, 0.95))
    contrast_groups = int(torch.unique(group_ids[labels >= 0]).numel())
    if positive.sum() >= 2 and contrast_groups:
        corr, defined = within_group_rank_correlation(weights[positive].abs(), scores[positive], group_ids[positive])
        out["rank_corr_pos_defined"] = float(defined.sum()) / contrast_groups
        if defined.any():
            out["rank_corr_pos"] = float(corr[defined].mean())
    correct: dict[int, set[tuple[int, ...]]] = {}
    for group, reward, response in zip(group_ids.tolist(), rewards.tolist(), responses, strict=True):
        seen = correct.setdefault(group, set())
        if reward > 0:
            seen.add(response)
    solved = [len(seen) for seen in correct.values() if seen]
    if correct:
        out["pass_at_n"] = len(solved) / len(correct)
    if solved:
        out["distinct_correct_mean"] = sum(solved) / len(solved)
    if contrast_groups:
        in_contrast = set(group_ids[labels >= 0].tolist())
        out["multi_correct_share"] = sum(len(correct[g]) >= 2 for g in in_contrast) / contrast_groups
    return out
