"""Independent per-group reference implementations of every loss, written from DESIGN.md §1.

Deliberately naive: Python loops over groups and rollouts, no code shared with
``real_lightning.losses``. Inputs are float64 tensors; outputs are differentiable scalars.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def scores(logprobs: Tensor, old: Tensor, mask: Tensor) -> list[Tensor]:
    """s_i = (1/|o_i|) Σ_t (log π_θ − log π_old) over the tokens of each row (0 for an empty row)."""
    out = []
    for i in range(logprobs.shape[0]):
        terms = [logprobs[i, t] - old[i, t] for t in range(logprobs.shape[1]) if mask[i, t]]
        out.append(sum(terms) / len(terms) if terms else logprobs[i].sum() * 0)
    return out


def groups_of(group_ids: Tensor) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(group_ids.tolist()):
        groups.setdefault(g, []).append(i)
    return groups


def _log1p_sum_exp(xs: list[Tensor]) -> Tensor:
    """log(1 + Σ exp(x)) via logsumexp over [0] + xs."""
    return torch.logsumexp(torch.stack([torch.zeros((), dtype=torch.float64), *xs]), 0)


def real(logprobs, old, mask, rewards, group_ids, tau=0.5) -> Tensor:
    s = scores(logprobs, old, mask)
    groups = groups_of(group_ids)
    total = logprobs.sum() * 0
    for members in groups.values():
        r = [rewards[i].item() for i in members]
        if max(r) == min(r):
            continue
        pos = [-s[i] / tau for i in members if rewards[i].item() == max(r)]
        neg = [s[i] / tau for i in members if rewards[i].item() != max(r)]
        total = total + _log1p_sum_exp(pos) + _log1p_sum_exp(neg)
    return total / len(groups)


def real_bce(logprobs, old, mask, rewards, group_ids, tau=0.5) -> Tensor:
    s = scores(logprobs, old, mask)
    terms = []
    for members in groups_of(group_ids).values():
        r = [rewards[i].item() for i in members]
        if max(r) == min(r):
            continue
        for i in members:
            z = s[i] / tau
            y = 1.0 if rewards[i].item() == max(r) else 0.0
            # −[y log σ(z) + (1 − y) log(1 − σ(z))] = log(1 + e^{z}) − y z
            terms.append(torch.logaddexp(z, torch.zeros((), dtype=torch.float64)) - y * z)
    return sum(terms) / len(terms) if terms else logprobs.sum() * 0


def real_product(logprobs, old, mask, rewards, group_ids, tau=0.5) -> Tensor:
    s = scores(logprobs, old, mask)
    groups = groups_of(group_ids)
    total = logprobs.sum() * 0
    for members in groups.values():
        r = [rewards[i].item() for i in members]
        if max(r) == min(r):
            continue
        pos = torch.stack([-s[i] / tau for i in members if rewards[i].item() == max(r)])
        neg = torch.stack([s[i] / tau for i in members if rewards[i].item() != max(r)])
        u = torch.logsumexp(neg, 0) + torch.logsumexp(pos, 0)
        total = total + torch.logaddexp(u, torch.zeros((), dtype=torch.float64))
    return total / len(groups)


def real_s0(logprobs, old, mask, rewards, group_ids, tau=0.5) -> Tensor:
    """Σ_i c_i·s_i / G, c_i = ∓(1/τ)/(1 + k): minus for a positive (k its group's positives), plus for a negative."""
    s = scores(logprobs, old, mask)
    groups = groups_of(group_ids)
    total = logprobs.sum() * 0
    for members in groups.values():
        r = [rewards[i].item() for i in members]
        if max(r) == min(r):
            continue
        positives = [i for i in members if rewards[i].item() == max(r)]
        negatives = [i for i in members if rewards[i].item() != max(r)]
        for i in positives:
            total = total - s[i] / (tau * (1 + len(positives)))
        for i in negatives:
            total = total + s[i] / (tau * (1 + len(negatives)))
    return total / len(groups)


def advantages(rewards: Tensor, group_ids: Tensor, eps: float = 1e-6) -> list[float]:
    """verl's GRPO advantage: torch.std (unbiased) per group; a group of one: mean 0, std 1."""
    adv = [0.0] * rewards.shape[0]
    for members in groups_of(group_ids).values():
        r = torch.tensor([rewards[i].item() for i in members], dtype=torch.float64)
        mean, std = (0.0, 1.0) if len(members) == 1 else (r.mean().item(), r.std().item())
        for i in members:
            adv[i] = (rewards[i].item() - mean) / (std + eps)
    return adv


def _clipped(ratio: Tensor, a: float, low: float, high: float) -> Tensor:
    return torch.min(ratio * a, torch.clamp(ratio, 1 - low, 1 + high) * a)


def _dual_clipped(ratio: Tensor, a: float, low: float, high: float, c: float | None) -> Tensor:
    """verl's dual clip: for a < 0, max(min(ρa, clip(ρ)a), c·a); otherwise the PPO clip."""
    clipped = _clipped(ratio, a, low, high)
    if c is None or a >= 0:
        return clipped
    return torch.max(clipped, torch.tensor(c * a, dtype=torch.float64))


def grpo(logprobs, old, mask, rewards, group_ids, clip_low=0.2, clip_high=0.2, dual_clip=None) -> Tensor:
    adv = advantages(rewards, group_ids)
    seq_losses = []
    for i in range(logprobs.shape[0]):
        toks = [
            -_dual_clipped(torch.exp(logprobs[i, t] - old[i, t]), adv[i], clip_low, clip_high, dual_clip)
            for t in range(logprobs.shape[1])
            if mask[i, t]
        ]
        seq_losses.append(sum(toks) / len(toks) if toks else logprobs[i].sum() * 0)
    return sum(seq_losses) / len(seq_losses)


def dapo(logprobs, old, mask, rewards, group_ids, clip_low=0.2, clip_high=0.28, dual_clip=None) -> Tensor:
    adv = advantages(rewards, group_ids)
    toks = [
        -_dual_clipped(torch.exp(logprobs[i, t] - old[i, t]), adv[i], clip_low, clip_high, dual_clip)
        for i in range(logprobs.shape[0])
        for t in range(logprobs.shape[1])
        if mask[i, t]
    ]
    return sum(toks) / len(toks)


def gspo(logprobs, old, mask, rewards, group_ids, clip_low=3e-4, clip_high=4e-4, log_ratio_clamp=None) -> Tensor:
    adv = advantages(rewards, group_ids)
    s = scores(logprobs, old, mask)
    if log_ratio_clamp is not None:
        s = [torch.clamp(s[i], max=log_ratio_clamp) for i in range(len(s))]
    seq = [-_clipped(torch.exp(s[i]), adv[i], clip_low, clip_high) for i in range(logprobs.shape[0])]
    return sum(seq) / len(seq)


REFERENCES = {
    "real": real,
    "real_bce": real_bce,
    "real_product": real_product,
    "real_s0": real_s0,
    "grpo": grpo,
    "dapo": dapo,
    "gspo": gspo,
}


def real_weight(s: list[float], labels: list[int], i: int, tau: float) -> float:
    """DESIGN.md's closed form for rollout i of one group, computed with math (no torch)."""
    if labels[i] == 1:
        den = 1 + sum(math.exp(-s[j] / tau) for j in range(len(s)) if labels[j] == 1)
        return -(1 / tau) * math.exp(-s[i] / tau) / den
    den = 1 + sum(math.exp(s[j] / tau) for j in range(len(s)) if labels[j] == 0)
    return (1 / tau) * math.exp(s[i] / tau) / den
