"""Closed-form gradient weights equal autograd; REAL's are monotone and bounded by 1/τ."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from real_lightning.losses import (
    CLIP_RANGES,
    LOSSES,
    pg_gradient_weights,
    real_bce_gradient_weights,
    real_gradient_weights,
    real_product_gradient_weights,
)
from tests.losses import reference
from tests.losses.conftest import LOSS_NAMES, TIGHT, make_batch, scale_for

CLOSED_FORMS = {
    "real": real_gradient_weights,
    "real_bce": real_bce_gradient_weights,
    "real_product": real_product_gradient_weights,
}


def _effective_autograd_weights(name: str, batch, **hparams) -> tuple[torch.Tensor, dict]:
    """Z · Σ_t ∂loss/∂logprobs[i, t] from autograd, and the loss metrics."""
    out = LOSSES[name](**batch.kwargs(), **hparams)
    (grad,) = torch.autograd.grad(out.loss, batch.logprobs)
    return (grad * batch.response_mask).sum(-1) * out.metrics["weight_normalizer"], out.metrics


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_metric_weights_equal_autograd(name: str) -> None:
    batch = make_batch(4, scale=scale_for(name))
    autograd_weights, metrics = _effective_autograd_weights(name, batch)
    torch.testing.assert_close(metrics["grad_weights"], autograd_weights, **TIGHT)
    assert metrics["grad_weights"].abs().sum() > 0


@pytest.mark.parametrize("name", ["real", "real_bce", "real_product"])
def test_real_closed_forms_equal_autograd_on_scores(name: str) -> None:
    """With one token per rollout and π_old = 1, logprobs[:, 0] *is* s, so autograd gives ∂loss/∂s."""
    batch = make_batch(6)
    scores = torch.randn(batch.rewards.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    s = scores.clone()[:, None].requires_grad_()
    out = LOSSES[name](
        logprobs=s,
        old_logprobs=torch.zeros_like(s),
        response_mask=torch.ones_like(s),
        rewards=batch.rewards,
        group_ids=batch.group_ids,
        tau=0.7,
    )
    (grad,) = torch.autograd.grad(out.loss, s)
    closed = CLOSED_FORMS[name](scores, batch.rewards, batch.group_ids, tau=0.7)
    torch.testing.assert_close(closed, grad[:, 0] * out.metrics["weight_normalizer"], **TIGHT)


def test_real_closed_form_equals_design_formula_written_with_math() -> None:
    batch = make_batch(2)
    scores = torch.linspace(-2, 2, batch.rewards.shape[0], dtype=torch.float64)
    weights = real_gradient_weights(scores, batch.rewards, batch.group_ids, tau=0.5)
    for members in reference.groups_of(batch.group_ids).values():
        rewards = [batch.rewards[i].item() for i in members]
        for k, i in enumerate(members):
            if max(rewards) == min(rewards):
                assert weights[i].item() == 0.0
                continue
            labels = [int(r == max(rewards)) for r in rewards]
            expected = reference.real_weight([scores[j].item() for j in members], labels, k, 0.5)
            assert weights[i].item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("variant", ["grpo", "dapo", "gspo"])
def test_pg_closed_form_equals_autograd(variant: str) -> None:
    batch = make_batch(7, scale=scale_for(variant))
    autograd_weights, metrics = _effective_autograd_weights(variant, batch)
    closed = pg_gradient_weights(variant, **batch.kwargs())
    torch.testing.assert_close(closed, autograd_weights, **TIGHT)
    assert 0 < metrics["clip_fraction"] < 1, "the batch must exercise both clipped and unclipped tokens"


def test_pg_default_clip_ranges_agree_with_loss_signatures() -> None:
    import inspect

    for variant, (low, high) in CLIP_RANGES.items():
        params = inspect.signature(LOSSES[variant]).parameters
        assert (params["clip_low"].default, params["clip_high"].default) == (low, high)


def test_grpo_on_policy_weight_is_minus_advantage_whatever_the_probability() -> None:
    """GRPO's misassignment: on-policy every positive gets −A regardless of how likely it already is."""
    batch = make_batch(0)
    weights = pg_gradient_weights(
        "grpo",
        logprobs=batch.old_logprobs,
        old_logprobs=batch.old_logprobs,
        response_mask=batch.response_mask,
        rewards=batch.rewards,
        group_ids=batch.group_ids,
    )
    from real_lightning.losses import grpo_advantages

    nonempty = batch.response_mask.sum(-1) > 0
    adv = grpo_advantages(batch.rewards, batch.group_ids)
    torch.testing.assert_close(weights[nonempty], -adv[nonempty], **TIGHT)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(2, 9), min_size=1, max_size=5),
    seed=st.integers(0, 10_000),
    tau=st.floats(0.05, 5.0),
    spread=st.floats(0.01, 20.0),
)
def test_real_weights_bounded_and_strictly_monotone(sizes: list[int], seed: int, tau: float, spread: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    group_ids = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    rewards = torch.randint(0, 2, group_ids.shape, generator=gen).to(torch.float64)
    scores = torch.randn(group_ids.shape, generator=gen, dtype=torch.float64) * spread
    weights = real_gradient_weights(scores, rewards, group_ids, tau)
    assert torch.all(weights.abs() <= 1 / tau)
    # strictly below 1/τ wherever float64 resolves 1 − p: then the margin is at least 1/(1 + e^{|s|/τ})
    moderate = scores.abs() / tau < 30
    assert torch.all(weights.abs()[moderate] < 1 / tau)
    for g in range(len(sizes)):
        in_group = group_ids == g
        for label, sign in ((1.0, -1), (0.0, 1)):
            members = in_group & (rewards == label)
            if rewards[in_group].unique().numel() < 2:
                assert torch.all(weights[in_group] == 0)
                continue
            w, s = weights[members], scores[members]
            assert torch.all(w * sign >= 0)
            # nonzero wherever exp cannot underflow (|s|/τ ≤ 400 for every rollout of the test)
            assert torch.all((w * sign > 0)[s.abs() / tau < 300]) or scores.abs().max() / tau > 400
            order = torch.argsort(s)
            s_sorted, w_sorted = s[order], w[order]
            distinct = s_sorted[1:] > s_sorted[:-1]
            steps = w_sorted[1:] - w_sorted[:-1]
            # larger s: negatives get more weight, positives less (their weight rises towards 0)
            nonflat = distinct & (steps.abs() > 0)
            assert torch.all(steps[nonflat] > 0)
            # strictness wherever float64 can resolve the difference
            resolvable = distinct & ((s_sorted[1:] - s_sorted[:-1]) / tau > 1e-6) & (w_sorted[1:].abs() > 1e-250)
            assert torch.all(steps[resolvable] > 0)
