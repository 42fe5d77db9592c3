"""PassAtK against the combinatorial definition of Chen et al. (2021)."""

from __future__ import annotations

from math import comb

import pytest
import torch

from real_lightning.analysis.metrics import PassAtK, pass_at_k


@pytest.mark.parametrize("n", [1, 4, 8, 16])
def test_pass_at_k_equals_one_minus_binomial_ratio(n: int) -> None:
    for k in range(1, n + 1):
        for c in range(n + 1):
            correct = torch.zeros(1, n, dtype=torch.bool)
            correct[0, :c] = True
            expected = 1 - comb(n - c, k) / comb(n, k)
            assert pass_at_k(correct, k).item() == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_pass_at_1_is_mean_correctness_and_metric_accumulates() -> None:
    gen = torch.Generator().manual_seed(0)
    batches = [torch.rand(5, 8, generator=gen) < 0.3 for _ in range(3)]
    metric = PassAtK(1)
    for b in batches:
        metric.update(b)
    assert metric.compute().item() == pytest.approx(torch.cat(batches).double().mean().item(), rel=1e-12)


def test_pass_at_k_errors() -> None:
    with pytest.raises(ValueError, match="k must be in"):
        pass_at_k(torch.ones(2, 4, dtype=torch.bool), 5)
    with pytest.raises(ValueError, match="num_prompts, n"):
        pass_at_k(torch.ones(4, dtype=torch.bool), 1)
    with pytest.raises(ValueError, match="k must be >= 1"):
        PassAtK(0)
