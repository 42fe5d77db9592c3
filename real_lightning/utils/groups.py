"""Group structure and segment (per-group) operations, shared by the losses and the rollout side.

No Python loop over groups.

Rollouts of one prompt share a group id. Ids are arbitrary integers: groups may differ in size,
need not be contiguous, and may appear in any order. Every function here works on a dense
*segment index* in ``[0, G)`` produced by :func:`group_index`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

POSITIVE, NEGATIVE, NO_CONTRAST = 1, 0, -1
"""Values of :attr:`Groups.labels`."""


@dataclass(frozen=True)
class Groups:
    """Dense group structure of a batch of B rollouts.

    Attributes:
        index: [B] long, segment index of each rollout in ``[0, num_groups)``.
        num_groups: G, the number of distinct group ids in the batch.
        sizes: [G] long, rollouts per group.
        contrast: [G] bool, the group holds at least two distinct rewards (a label contrast).
        labels: [B] long, ``POSITIVE`` (1) for a rollout whose reward equals its group's best in a
            group with a contrast, ``NEGATIVE`` (0) for the other rollouts of such a group, and
            ``NO_CONTRAST`` (-1) for every rollout of a group without a contrast.
    """

    index: Tensor
    num_groups: int
    sizes: Tensor
    contrast: Tensor
    labels: Tensor

    @property
    def positive(self) -> Tensor:
        """[B] bool, rollouts labelled positive."""
        return self.labels == POSITIVE

    @property
    def negative(self) -> Tensor:
        """[B] bool, rollouts labelled negative."""
        return self.labels == NEGATIVE


def group_index(group_ids: Tensor) -> tuple[Tensor, int]:
    """Map arbitrary integer group ids [B] to a dense segment index [B] in ``[0, G)`` and G."""
    unique, index = torch.unique(group_ids, return_inverse=True)
    return index, unique.numel()


def group_index_no_sync(group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`group_index` without a host sync: the same dense index [B] and G as a 0-dim long tensor.

    Segments ``[G, B)`` are empty, so size per-segment buffers by B (``group_ids.numel()``), not by G.
    """
    sorted_ids, order = torch.sort(group_ids)
    first = torch.ones_like(sorted_ids, dtype=torch.bool)  # [B] the first rollout of each id, in sorted order
    first[1:] = sorted_ids[1:] != sorted_ids[:-1]
    rank = first.cumsum(0) - 1
    return torch.empty_like(rank).scatter_(0, order, rank), first.sum()


def segment_sum(values: Tensor, index: Tensor, num_segments: int) -> Tensor:
    """Differentiable per-segment sum: [B] values → [G]."""
    return values.new_zeros(num_segments).index_add(0, index, values)


def segment_amax(values: Tensor, index: Tensor, num_segments: int, initial: float) -> Tensor:
    """Per-segment max of [B] values (not differentiated), ``initial`` for empty segments → [G]."""
    out = values.new_full((num_segments,), initial)
    return out.scatter_reduce(0, index, values.detach(), reduce="amax", include_self=True)


def build_groups(rewards: Tensor, group_ids: Tensor) -> Groups:
    """Group structure and labels from rewards [B] and group ids [B].

    The label of a rollout is "its reward equals the best reward of its group"; for binary
    rewards this is reward == 1. A group whose rewards are all equal carries no contrast.
    """
    index, num_groups = group_index(group_ids)
    rewards = rewards.detach()
    group_max = segment_amax(rewards, index, num_groups, float("-inf"))
    group_min = -segment_amax(-rewards, index, num_groups, float("-inf"))
    contrast = group_max > group_min
    best = rewards == group_max[index]
    labels = torch.where(contrast[index], best.long(), torch.full_like(index, NO_CONTRAST))
    sizes = torch.bincount(index, minlength=num_groups)
    return Groups(index=index, num_groups=num_groups, sizes=sizes, contrast=contrast, labels=labels)


def segment_logsumexp(x: Tensor, index: Tensor, num_segments: int, include: Tensor, anchor: bool) -> Tensor:
    """Per-segment ``log(a + Σ_{i in segment, include_i} exp(x_i))`` → [G], stable for any |x|.

    Args:
        x: [B] logits.
        index: [B] segment index.
        num_segments: G.
        include: [B] bool, which entries take part.
        anchor: add a logit fixed at 0 to every segment (``a = 1``); without it ``a = 0`` and a
            segment with no included entry returns 0 (callers mask such segments out).

    The max-shift ``m`` is taken with the anchor included and detached, so values and gradients
    stay finite for |x| up to the dtype's range; the gradient is the exact softmax.
    """
    neg_inf = torch.tensor(float("-inf"), dtype=x.dtype, device=x.device)
    masked = torch.where(include, x, neg_inf)
    shift = segment_amax(masked, index, num_segments, 0.0 if anchor else float("-inf"))
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))  # empty, anchor-free segments
    terms = torch.exp(torch.where(include, x - shift[index], neg_inf))  # [B], 0 where excluded
    total = segment_sum(terms, index, num_segments)
    if anchor:
        total = total + torch.exp(-shift)
    else:
        total = torch.where(total > 0, total, torch.ones_like(total))  # log(1) = 0 for empty segments
    return torch.log(total) + shift
