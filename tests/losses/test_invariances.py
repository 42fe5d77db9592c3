"""Row order, group-id relabelling, filtered groups, mini-batch splitting."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from real_lightning.losses import LOSSES
from tests.losses.conftest import LOSS_NAMES, TIGHT, RolloutTensors, make_batch, scale_for

SCALAR_METRICS = ["contrast_fraction", "ppo_kl", "low_var_kl", "weight_abs_mean_pos", "weight_abs_mean_neg"]


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(LOSS_NAMES), seed=st.integers(0, 1000))
def test_row_order_invariance(name: str, seed: int) -> None:
    batch = make_batch(seed % 7, scale=scale_for(name))
    perm = torch.randperm(batch.rewards.shape[0], generator=torch.Generator().manual_seed(seed))
    shuffled = batch.permuted(perm)
    out, out_p = LOSSES[name](**batch.kwargs()), LOSSES[name](**shuffled.kwargs())
    torch.testing.assert_close(out_p.loss, out.loss, **TIGHT)
    (grad,) = torch.autograd.grad(out.loss, batch.logprobs)
    (grad_p,) = torch.autograd.grad(out_p.loss, shuffled.logprobs)
    torch.testing.assert_close(grad_p, grad[perm], **TIGHT)
    torch.testing.assert_close(out_p.metrics["grad_weights"], out.metrics["grad_weights"][perm], **TIGHT)
    for key in SCALAR_METRICS:
        torch.testing.assert_close(out_p.metrics[key], out.metrics[key], **TIGHT)


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(LOSS_NAMES), offset=st.integers(-(10**12), 10**12), stride=st.integers(1, 1000))
def test_group_id_relabelling_invariance(name: str, offset: int, stride: int) -> None:
    batch = make_batch(2, scale=scale_for(name))
    ids = batch.group_ids
    relabelled = RolloutTensors(
        batch.logprobs, batch.old_logprobs, batch.response_mask, batch.rewards, (-ids) * stride + offset
    )  # order-reversing, far-apart ids
    out, out_r = LOSSES[name](**batch.kwargs()), LOSSES[name](**relabelled.kwargs())
    torch.testing.assert_close(out_r.loss, out.loss, **TIGHT)
    torch.testing.assert_close(out_r.metrics["grad_weights"], out.metrics["grad_weights"], **TIGHT)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_groups_with_equal_rewards_get_exactly_zero_gradient(name: str) -> None:
    batch = make_batch(0, scale=scale_for(name))
    out = LOSSES[name](**batch.kwargs())
    (grad,) = torch.autograd.grad(out.loss, batch.logprobs)
    # all-correct, all-wrong; the single-rollout group 7 too, except in the GRPO family, where a group
    # of one takes mean 0 and std 1 (verl) and so keeps advantage r / (1 + eps)
    no_contrast = [42, -5] if name in ("grpo", "dapo", "gspo") else [42, -5, 7]
    filtered = torch.isin(batch.group_ids, torch.tensor(no_contrast))
    assert filtered.sum() == 6 + (len(no_contrast) == 3)
    assert torch.all(grad[filtered] == 0)
    assert torch.all(out.metrics["grad_weights"][filtered] == 0)
    assert torch.all(out.metrics["labels"][filtered] == -1)
    assert torch.all(out.metrics["labels"][batch.group_ids == 7] == -1)
    if name.startswith("real"):  # unclipped: every non-empty rollout of a contrast group gets gradient
        assert torch.all(grad[~filtered].abs().sum(-1)[batch.response_mask[~filtered].sum(-1) > 0] > 0)
    torch.testing.assert_close(out.metrics["contrast_fraction"], torch.tensor(3 / 6, dtype=torch.float64))


@pytest.mark.parametrize("name", ["real", "real_product"])
def test_filtered_groups_only_change_the_group_count(name: str) -> None:
    """Adding groups without contrast leaves Σ_q L_q unchanged: loss·G is the same."""
    batch = make_batch(0)
    keep = ~torch.isin(batch.group_ids, torch.tensor([42, -5, 7]))
    sub = RolloutTensors(
        batch.logprobs.detach()[keep].requires_grad_(),
        batch.old_logprobs[keep],
        batch.response_mask[keep],
        batch.rewards[keep],
        batch.group_ids[keep],
    )
    full, part = LOSSES[name](**batch.kwargs()), LOSSES[name](**sub.kwargs())
    torch.testing.assert_close(full.loss * 6, part.loss * 3, **TIGHT)


@pytest.mark.parametrize("name", ["real", "real_product", "grpo", "gspo"])
def test_split_into_mini_batches_of_whole_groups_equals_full_batch(name: str) -> None:
    """Gradient accumulation over two halves (weighted by their normalisers) equals one full batch."""
    batch = make_batch(3, scale=scale_for(name))
    out = LOSSES[name](**batch.kwargs())
    (full_grad,) = torch.autograd.grad(out.loss, batch.logprobs)
    total = out.metrics["weight_normalizer"]
    first = torch.isin(batch.group_ids, torch.tensor([100, 42, 3]))
    acc = torch.zeros_like(full_grad)
    for part in (first, ~first):
        sub = RolloutTensors(
            batch.logprobs.detach()[part].requires_grad_(),
            batch.old_logprobs[part],
            batch.response_mask[part],
            batch.rewards[part],
            batch.group_ids[part],
        )
        sub_out = LOSSES[name](**sub.kwargs())
        (g,) = torch.autograd.grad(sub_out.loss * sub_out.metrics["weight_normalizer"] / total, sub.logprobs)
        acc[part] = g
    torch.testing.assert_close(acc, full_grad, **TIGHT)
