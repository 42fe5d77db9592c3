"""The staleness study's extra losses: dual-clip GRPO/DAPO and the ``real_s0`` control, against reference.py."""

from __future__ import annotations

import pytest
import torch

from real_lightning.losses import DAPO, GRPO, GSPO, LOSSES, REALS0, pg_gradient_weights, real_gradient_weights
from tests.losses import reference
from tests.losses.conftest import TIGHT, make_batch


def _grad(value: torch.Tensor, leaf: torch.Tensor) -> torch.Tensor:
    (grad,) = torch.autograd.grad(value, leaf)
    return grad


@pytest.mark.parametrize("name", ["grpo", "dapo"])
@pytest.mark.parametrize("dual_clip", [1.5, 3.0])
def test_dual_clip_matches_the_reference_value_and_gradient(name: str, dual_clip: float) -> None:
    batch = make_batch(3, scale=1.5)  # log-ratios spread wide: many ratios beyond 1.5 and 3
    ratio = torch.exp(batch.logprobs.detach() - batch.old_logprobs)
    assert ((ratio > dual_clip) & (batch.response_mask > 0)).sum() >= 5
    out = LOSSES[name](**batch.kwargs(), dual_clip=dual_clip)
    leaf = batch.logprobs.detach().clone().requires_grad_()
    ref = reference.REFERENCES[name](
        leaf, batch.old_logprobs, batch.response_mask, batch.rewards, batch.group_ids, dual_clip=dual_clip
    )
    grad_dual = _grad(out.loss, batch.logprobs)
    torch.testing.assert_close(out.loss, ref, **TIGHT)
    torch.testing.assert_close(grad_dual, _grad(ref, leaf), **TIGHT)
    assert out.metrics["clip_fraction_dual"] > 0
    plain = LOSSES[name](**batch.kwargs())
    assert not torch.allclose(out.loss, plain.loss)
    # the dual clip only removes gradient, from tokens of negative-advantage rollouts with ratio > c
    grad_plain = _grad(plain.loss, batch.logprobs)
    changed = (grad_dual - grad_plain).abs() > 0
    adv = out.metrics["advantages"][:, None].expand_as(ratio)
    assert changed.any() and bool(((adv < 0) & (ratio > dual_clip))[changed].all())
    assert bool((grad_dual[changed] == 0).all())


@pytest.mark.parametrize("name", ["grpo", "dapo"])
def test_dual_clip_closed_form_weights_equal_autograd(name: str) -> None:
    batch = make_batch(4, scale=1.5)
    out = LOSSES[name](**batch.kwargs(), dual_clip=2.0)
    per_row = _grad(out.loss, batch.logprobs).sum(-1) * batch.logprobs.shape[0]
    torch.testing.assert_close(out.metrics["grad_weights"], per_row, **TIGHT)
    closed = pg_gradient_weights(name, **batch.kwargs(), dual_clip=2.0)
    torch.testing.assert_close(torch.where(batch.response_mask.any(-1), closed, 0.0), per_row, **TIGHT)


def test_dual_clip_options_are_checked() -> None:
    batch = make_batch(0)
    with pytest.raises(ValueError, match=r"dual_clip must be > 1 or None, got 1\.0"):
        LOSSES["grpo"](**batch.kwargs(), dual_clip=1.0)
    with pytest.raises(ValueError, match="not gspo"):
        pg_gradient_weights("gspo", **batch.kwargs(), dual_clip=3.0)
    with pytest.raises(ValueError, match=r"GRPO\.dual_clip must be > 1 or null, got 0\.5"):
        GRPO(dual_clip=0.5)
    assert DAPO(dual_clip=3.0).hparams["dual_clip"] == 3.0
    assert "dual_clip" not in GSPO().hparams
    # off by default: bit-identical to not passing it
    assert torch.equal(LOSSES["grpo"](**batch.kwargs(), dual_clip=None).loss, LOSSES["grpo"](**batch.kwargs()).loss)


def test_clip_high_tokens_count_the_clipped_positive_advantage_tokens() -> None:
    batch = make_batch(2, scale=1.0)
    out = LOSSES["grpo"](**batch.kwargs())
    ratio = torch.exp(batch.logprobs.detach() - batch.old_logprobs)
    adv = out.metrics["advantages"][:, None]
    expected = ((ratio > 1.2) & (adv > 0) & (batch.response_mask > 0)).sum(-1).to(torch.float64)
    torch.testing.assert_close(out.metrics["clip_high_tokens"], expected)


def test_real_s0_is_real_at_s_zero_and_ignores_s_elsewhere() -> None:
    batch = make_batch(1, scale=0.5)
    on_policy = {**batch.kwargs(), "old_logprobs": batch.logprobs.detach()}
    real, s0 = LOSSES["real"](**on_policy), LOSSES["real_s0"](**on_policy)
    torch.testing.assert_close(_grad(s0.loss, batch.logprobs), _grad(real.loss, batch.logprobs), **TIGHT)
    assert s0.loss.item() == 0.0
    # off-policy: weights stay those of s = 0, REAL's move with s
    out = LOSSES["real_s0"](**batch.kwargs())
    zeros = torch.zeros(batch.rewards.shape, dtype=torch.float64)
    at_zero = real_gradient_weights(zeros, batch.rewards, batch.group_ids)
    nonempty = batch.response_mask.any(-1)
    torch.testing.assert_close(out.metrics["grad_weights"], torch.where(nonempty, at_zero, 0.0), **TIGHT)
    moved = real_gradient_weights(out.metrics["scores"], batch.rewards, batch.group_ids)
    assert not torch.allclose(moved[nonempty], at_zero[nonempty])
    assert REALS0(tau=0.25).hparams == {"tau": 0.25}


def test_real_s0_gives_the_negatives_of_a_one_positive_group_64_percent() -> None:
    rewards = torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0])
    weights = real_gradient_weights(torch.zeros(8, dtype=torch.float64), rewards, torch.zeros(8, dtype=torch.long))
    negative_share = weights[1:].abs().sum() / weights.abs().sum()
    assert negative_share.item() == pytest.approx((7 / 8) / (1 / 2 + 7 / 8))  # 0.636...
    assert weights[0].item() == pytest.approx(-1.0) and weights[1].item() == pytest.approx(2 / 8)
