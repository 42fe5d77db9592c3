"""Every loss against the independent per-group loop in reference.py: value and gradient."""

from __future__ import annotations

import pytest
import torch

from real_lightning.losses import LOSSES
from tests.losses import reference
from tests.losses.conftest import LOSS_NAMES, TIGHT, RolloutTensors, make_batch, scale_for


def _value_and_grad(name: str, batch: RolloutTensors, **hparams):
    out = LOSSES[name](**batch.kwargs(), **hparams)
    (grad,) = torch.autograd.grad(out.loss, batch.logprobs)
    return out, grad


def _reference_value_and_grad(name: str, batch: RolloutTensors, **hparams):
    leaf = batch.logprobs.detach().clone().requires_grad_()
    value = reference.REFERENCES[name](
        leaf, batch.old_logprobs, batch.response_mask, batch.rewards, batch.group_ids, **hparams
    )
    (grad,) = torch.autograd.grad(value, leaf)
    return value, grad


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_value_and_gradient_match_per_group_reference(name: str, seed: int) -> None:
    batch = make_batch(seed, scale=scale_for(name))
    out, grad = _value_and_grad(name, batch)
    ref_value, ref_grad = _reference_value_and_grad(name, batch)
    torch.testing.assert_close(out.loss, ref_value, **TIGHT)
    torch.testing.assert_close(grad, ref_grad, **TIGHT)


@pytest.mark.parametrize(
    ("name", "hparams"),
    [
        ("real", {"tau": 0.1}),
        ("real", {"tau": 2.0}),
        ("real_bce", {"tau": 0.25}),
        ("real_product", {"tau": 1.5}),
        ("grpo", {"clip_low": 0.1, "clip_high": 0.3}),
        ("dapo", {"clip_low": 0.05, "clip_high": 0.5}),
        ("gspo", {"clip_low": 1e-4, "clip_high": 2e-4}),
    ],
)
def test_non_default_hyperparameters_match_reference(name: str, hparams: dict) -> None:
    batch = make_batch(5, scale=scale_for(name))
    out, grad = _value_and_grad(name, batch, **hparams)
    ref_value, ref_grad = _reference_value_and_grad(name, batch, **hparams)
    torch.testing.assert_close(out.loss, ref_value, **TIGHT)
    torch.testing.assert_close(grad, ref_grad, **TIGHT)


@pytest.mark.parametrize("name", ["real", "real_bce", "real_product"])
@pytest.mark.parametrize("magnitude", [50.0, 500.0])
def test_extreme_scores_match_reference(name: str, magnitude: float) -> None:
    """|s|/τ up to 1e3 in float64: the anchored logsumexp stays exact, not just finite."""
    batch = make_batch(3)
    signs = torch.where(torch.arange(batch.logprobs.shape[0]) % 2 == 0, 1.0, -1.0).to(torch.float64)
    extreme = batch.old_logprobs + signs[:, None] * magnitude
    batch = RolloutTensors(
        extreme.requires_grad_(), batch.old_logprobs, batch.response_mask, batch.rewards, batch.group_ids
    )
    out, grad = _value_and_grad(name, batch)
    ref_value, ref_grad = _reference_value_and_grad(name, batch)
    torch.testing.assert_close(out.loss, ref_value, **TIGHT)
    torch.testing.assert_close(grad, ref_grad, **TIGHT)


def test_grpo_advantages_match_torch_std() -> None:
    from real_lightning.losses import grpo_advantages

    batch = make_batch(1)
    expected = torch.tensor(reference.advantages(batch.rewards, batch.group_ids), dtype=torch.float64)
    torch.testing.assert_close(grpo_advantages(batch.rewards, batch.group_ids), expected, **TIGHT)


@pytest.mark.parametrize("clamp", [10.0, 0.05])
def test_gspo_log_ratio_clamp_matches_reference(clamp: float) -> None:
    """The official GSPO clamps the sequence log-ratio at 10: rows pushed to s = ±40 (beyond it and far below),
    value and gradient against the per-row reference; clamped rows get no gradient; the closed-form weight
    (the allocation monitors') still equals autograd's."""
    from real_lightning.losses import pg_gradient_weights

    batch = make_batch(3, scale=scale_for("gspo"))
    with torch.no_grad():
        batch.logprobs[0] += 40.0 * batch.response_mask[0]  # s_0 ≈ 40 > clamp
        batch.logprobs[1] -= 40.0 * batch.response_mask[1]  # s_1 ≈ −40
    out, grad = _value_and_grad("gspo", batch, log_ratio_clamp=clamp)
    ref_value, ref_grad = _reference_value_and_grad("gspo", batch, log_ratio_clamp=clamp)
    torch.testing.assert_close(out.loss, ref_value, **TIGHT)
    torch.testing.assert_close(grad, ref_grad, **TIGHT)
    assert torch.isfinite(out.loss) and grad[0].abs().max() == 0
    weights = pg_gradient_weights("gspo", **batch.kwargs(), log_ratio_clamp=clamp)
    autograd = (grad * batch.response_mask).sum(-1) * out.metrics["weight_normalizer"]
    torch.testing.assert_close(weights, autograd, **TIGHT)
    with pytest.raises(ValueError, match="log_ratio_clamp must be > 0"):
        LOSSES["gspo"](**batch.kwargs(), log_ratio_clamp=0.0)
