"""The peer for ``loss_speed.py``: straightforward per-group Python-loop losses.

This is how the losses are usually first written: select each group's rows, compute its loss,
accumulate. Same values as ``real_lightning.losses`` (checked by ``loss_speed.py --check``).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _group_rows(group_ids: Tensor) -> list[Tensor]:
    return [torch.nonzero(group_ids == g).flatten() for g in torch.unique(group_ids)]


def _row_scores(logprobs: Tensor, old: Tensor, mask: Tensor) -> Tensor:
    return ((logprobs - old) * mask).sum(-1) / mask.sum(-1).clamp_min(1)


def real_loop(logprobs, old_logprobs, response_mask, rewards, group_ids, tau=0.5) -> Tensor:
    groups = _group_rows(group_ids)
    total = logprobs.new_zeros(())
    for rows in groups:
        s = _row_scores(logprobs[rows], old_logprobs[rows], response_mask[rows])
        r = rewards[rows]
        if r.max() == r.min():
            continue
        pos, neg = r == r.max(), r != r.max()
        zero = s.new_zeros(1)
        total = total + torch.logsumexp(torch.cat([zero, -s[pos] / tau]), 0)
        total = total + torch.logsumexp(torch.cat([zero, s[neg] / tau]), 0)
    return total / len(groups)


def real_bce_loop(logprobs, old_logprobs, response_mask, rewards, group_ids, tau=0.5) -> Tensor:
    terms, count = logprobs.new_zeros(()), 0
    for rows in _group_rows(group_ids):
        s = _row_scores(logprobs[rows], old_logprobs[rows], response_mask[rows])
        r = rewards[rows]
        if r.max() == r.min():
            continue
        labels = (r == r.max()).to(s.dtype)
        terms = terms + torch.nn.functional.binary_cross_entropy_with_logits(s / tau, labels, reduction="sum")
        count += len(rows)
    return terms / max(count, 1)


def real_product_loop(logprobs, old_logprobs, response_mask, rewards, group_ids, tau=0.5) -> Tensor:
    groups = _group_rows(group_ids)
    total = logprobs.new_zeros(())
    for rows in groups:
        s = _row_scores(logprobs[rows], old_logprobs[rows], response_mask[rows])
        r = rewards[rows]
        if r.max() == r.min():
            continue
        u = torch.logsumexp(s[r != r.max()] / tau, 0) + torch.logsumexp(-s[r == r.max()] / tau, 0)
        total = total + torch.nn.functional.softplus(u)
    return total / len(groups)


def _advantage(r: Tensor) -> Tensor:
    if r.numel() == 1:
        return r / (1 + 1e-6)
    return (r - r.mean()) / (r.std() + 1e-6)


def _pg_loop(logprobs, old_logprobs, response_mask, rewards, group_ids, low, high, mode) -> Tensor:
    """Per group: advantages, token ratios, clipped objective; then the variant's aggregation."""
    seq_terms, token_sum = [], logprobs.new_zeros(())
    for rows in _group_rows(group_ids):
        adv = _advantage(rewards[rows])[:, None]
        mask = response_mask[rows]
        log_ratio = (logprobs[rows] - old_logprobs[rows]) * mask
        if mode == "gspo":
            ratio = torch.exp(log_ratio.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp_min(1))
        else:
            ratio = torch.exp(log_ratio)
        loss = -torch.min(ratio * adv, torch.clamp(ratio, 1 - low, 1 + high) * adv)
        if mode == "gspo":
            seq_terms.append(loss[:, 0])
        elif mode == "grpo":
            seq_terms.append((loss * mask).sum(-1) / mask.sum(-1).clamp_min(1))
        else:
            token_sum = token_sum + (loss * mask).sum()
    if mode == "dapo":
        return token_sum / response_mask.sum().clamp_min(1)
    return torch.cat(seq_terms).mean()


def grpo_loop(logprobs, old_logprobs, response_mask, rewards, group_ids) -> Tensor:
    return _pg_loop(logprobs, old_logprobs, response_mask, rewards, group_ids, 0.2, 0.2, "grpo")


def dapo_loop(logprobs, old_logprobs, response_mask, rewards, group_ids) -> Tensor:
    return _pg_loop(logprobs, old_logprobs, response_mask, rewards, group_ids, 0.2, 0.28, "dapo")


def gspo_loop(logprobs, old_logprobs, response_mask, rewards, group_ids) -> Tensor:
    return _pg_loop(logprobs, old_logprobs, response_mask, rewards, group_ids, 3e-4, 4e-4, "gspo")


LOOP_LOSSES = {
    "real": real_loop,
    "real_bce": real_bce_loop,
    "real_product": real_product_loop,
    "grpo": grpo_loop,
    "dapo": dapo_loop,
    "gspo": gspo_loop,
}
