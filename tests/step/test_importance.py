"""Truncated importance sampling and the engine-vs-trainer mismatch of one micro-batch, against hand values."""

from __future__ import annotations

import math

import pytest
import torch

from real_lightning.step.importance import ImportanceSampling, mismatch, truncated_importance

MASK = torch.tensor([[True, True, False], [True, False, False]])
OLD = torch.tensor([[-1.0, -2.0, float("-inf")], [-0.5, 0.0, 0.0]])  # padding may hold anything
BEHAVIOUR = torch.tensor([[-1.5, -1.75, float("-inf")], [-1.5, 3.0, 0.0]])


def test_token_weights_are_the_truncated_ratio_per_response_token() -> None:
    terms = truncated_importance(ImportanceSampling("token", cap=2.0), OLD, BEHAVIOUR, MASK)
    expected = torch.tensor([[math.exp(0.5), math.exp(-0.25), 1.0], [2.0, 1.0, 1.0]])  # e^1 > 2: cut to 2
    torch.testing.assert_close(terms.weights, expected)
    assert int(terms.clipped) == 1 and int(terms.units) == 3  # units: response tokens
    assert float(terms.weight_sum) == pytest.approx(math.exp(0.5) + math.exp(-0.25) + 2.0)
    assert not terms.weights.requires_grad and terms.weights.dtype == OLD.dtype


def test_sequence_weights_are_the_truncated_product_per_rollout() -> None:
    terms = truncated_importance(ImportanceSampling("sequence", cap=1.5), OLD.double(), BEHAVIOUR, MASK)
    torch.testing.assert_close(terms.weights, torch.tensor([math.exp(0.25), 1.5], dtype=torch.float64))
    assert terms.weights.dtype == torch.float64  # old's dtype
    assert int(terms.clipped) == 1 and terms.units == 2  # units: rollouts
    assert float(terms.weight_sum) == pytest.approx(math.exp(0.25) + 1.5)


def test_no_weights_when_off_or_without_behaviour_logprobs() -> None:
    assert truncated_importance(None, OLD, BEHAVIOUR, MASK) is None
    assert truncated_importance(ImportanceSampling("off"), OLD, BEHAVIOUR, MASK) is None
    assert truncated_importance(ImportanceSampling("token"), OLD, None, MASK) is None
    with pytest.raises(ValueError, match=r"importance_sampling\.mode must be off, token or sequence"):
        ImportanceSampling("tokens")  # type: ignore[arg-type]


def test_mismatch_sums_the_gap_over_response_tokens_only() -> None:
    gap = mismatch(OLD, BEHAVIOUR, MASK)
    g = torch.tensor([0.5, -0.25, 1.0])
    assert float(gap.abs_sum) == pytest.approx(1.75)
    assert float(gap.k3_sum) == pytest.approx(float((torch.expm1(g) - g).sum()))
    assert int(gap.tokens) == 3 and float(gap.abs_max) == 1.0  # the 3.0 outside the mask does not count
    assert all(t.dim() == 0 for t in (gap.abs_sum, gap.k3_sum, gap.tokens, gap.abs_max))
