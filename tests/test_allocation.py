"""allocation_stats against per-group loops written out in the test."""

from __future__ import annotations

import pytest
import torch

from real_lightning.analysis.allocation import allocation_stats, within_group_rank_correlation
from real_lightning.losses import LOSSES


def _spearman(x: list[float], y: list[float]) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return cov / (vx * vy) ** 0.5


def test_rank_correlation_matches_a_loop_with_ties() -> None:
    gen = torch.Generator().manual_seed(0)
    segment = torch.tensor([5, 5, 5, 5, 9, 9, 9, 2, 2, 2, 2, 2, 7])
    scores = torch.randint(0, 4, (13,), generator=gen).double()  # ties on purpose
    weights = torch.randn(13, generator=gen, dtype=torch.float64)
    corr, defined = within_group_rank_correlation(weights, scores, segment)
    for i, g in enumerate(sorted(set(segment.tolist()))):
        members = (segment == g).nonzero().flatten().tolist()
        xs, ys = [scores[m].item() for m in members], [weights[m].item() for m in members]
        if len(members) < 2 or len(set(xs)) < 2 or len(set(ys)) < 2:
            assert not defined[i]
        else:
            assert defined[i] and corr[i].item() == pytest.approx(_spearman(ys, xs), rel=1e-12)


def test_stats_by_hand() -> None:
    # group 0: positives weights -1, -0.5 (scores 0, 1), negatives +0.2, +0.8 (scores -1, 2)
    # group 1: all equal rewards → labels -1, ignored
    weights = torch.tensor([-1.0, -0.5, 0.2, 0.8, 0.0, 0.0], dtype=torch.float64)
    scores = torch.tensor([0.0, 1.0, -1.0, 2.0, 0.3, 0.1], dtype=torch.float64)
    labels = torch.tensor([1, 1, 0, 0, -1, -1])
    groups = torch.tensor([0, 0, 0, 0, 1, 1])
    stats = allocation_stats(weights, scores, labels, groups)
    assert stats["pos_abs_max"] == 1.0 and stats["pos_abs_mean"] == 0.75
    assert stats["neg_abs_max"] == 0.8 and stats["neg_abs_mean"] == pytest.approx(0.5)
    assert stats["domination_max"] == pytest.approx(1.0 / 2.5) and stats["domination_mean"] == pytest.approx(0.4)
    assert stats["pos_zero_fraction"] == 0.0
    assert stats["rank_corr_pos"] == pytest.approx(1.0) and stats["rank_corr_neg"] == pytest.approx(1.0)


def test_real_is_monotone_and_grpo_clips_positives_off_policy() -> None:
    gen = torch.Generator().manual_seed(1)
    groups = torch.arange(16).repeat_interleave(8)
    rewards = (torch.rand(128, generator=gen) < 0.5).double()
    old = -torch.rand(128, 6, generator=gen, dtype=torch.float64)
    logprobs = old + torch.randn(128, 6, generator=gen, dtype=torch.float64) * 0.4
    kwargs = {
        "logprobs": logprobs,
        "old_logprobs": old,
        "response_mask": torch.ones(128, 6),
        "rewards": rewards,
        "group_ids": groups,
    }
    real, grpo = LOSSES["real"](**kwargs).metrics, LOSSES["grpo"](**kwargs).metrics
    real_stats = allocation_stats(real["grad_weights"], real["scores"], real["labels"], groups)
    grpo_stats = allocation_stats(grpo["grad_weights"], grpo["scores"], grpo["labels"], groups)
    assert real_stats["rank_corr_pos"] == pytest.approx(1.0) and real_stats["rank_corr_neg"] == pytest.approx(1.0)
    assert real_stats["pos_zero_fraction"] == 0 and real_stats["pos_abs_max"] < 2.0
    assert grpo_stats["pos_zero_fraction"] == 0  # token-level clip: partial, rarely a whole rollout
    gspo = LOSSES["gspo"](**kwargs).metrics  # sequence-level clip: whole positive rollouts get 0
    assert allocation_stats(gspo["grad_weights"], gspo["scores"], gspo["labels"], groups)["pos_zero_fraction"] > 0
