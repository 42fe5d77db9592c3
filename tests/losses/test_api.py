"""Registry, signatures and defaults, input errors, metrics, dtypes and numerical stability."""

from __future__ import annotations

import inspect

import pytest
import torch

from real_lightning.losses import LOSSES, LossOutput
from real_lightning.utils.registry import UnknownNameError
from tests.losses.conftest import LOSS_NAMES, RolloutTensors, make_batch, scale_for

PAPER_DEFAULTS = {
    "real": {"tau": 0.5},
    "real_bce": {"tau": 0.5},
    "real_product": {"tau": 0.5},
    "real_s0": {"tau": 0.5},
    "grpo": {"clip_low": 0.2, "clip_high": 0.2},
    "dapo": {"clip_low": 0.2, "clip_high": 0.28},
    "gspo": {"clip_low": 3e-4, "clip_high": 4e-4},
}
INPUTS = ["logprobs", "old_logprobs", "response_mask", "rewards", "group_ids"]


def test_registry_holds_exactly_the_seven_losses() -> None:
    assert set(LOSSES) == set(PAPER_DEFAULTS)


def test_unknown_loss_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError, match="unknown loss 'ppo'; valid names: dapo, grpo, gspo, real, real_bce"):
        LOSSES["ppo"]
    with pytest.raises(KeyError):
        LOSSES["ppo"]


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_signature_is_keyword_only_with_paper_defaults(name: str) -> None:
    params = inspect.signature(LOSSES[name]).parameters
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())
    assert list(params)[:5] == INPUTS
    assert all(params[arg].default is inspect.Parameter.empty for arg in INPUTS)
    for hparam, value in PAPER_DEFAULTS[name].items():
        assert params[hparam].default == value


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_metrics_are_detached_and_complete(name: str) -> None:
    batch = make_batch(0, scale=scale_for(name))
    out = LOSSES[name](**batch.kwargs())
    assert isinstance(out, LossOutput) and out.loss.dim() == 0 and out.loss.requires_grad
    required = {
        "scores",
        "grad_weights",
        "weight_normalizer",
        "labels",
        "contrast_fraction",
        "ppo_kl",
        "low_var_kl",
        "weight_abs_mean_pos",
        "weight_abs_mean_neg",
    }
    if name in ("grpo", "dapo", "gspo"):
        required |= {"clip_fraction", "clip_fraction_high", "clip_fraction_low", "advantages"}
    assert required <= set(out.metrics)
    batch_size = batch.rewards.shape[0]
    for key, value in out.metrics.items():
        assert isinstance(value, torch.Tensor) and not value.requires_grad, key
        assert value.shape in ((), (batch_size,)), key


def test_kl_metrics_match_their_definitions() -> None:
    batch = make_batch(1)
    out = LOSSES["real"](**batch.kwargs())
    mask = batch.response_mask.bool()
    d = (batch.old_logprobs - batch.logprobs.detach())[mask]  # log π_old − log π_θ per token
    torch.testing.assert_close(out.metrics["ppo_kl"], d.mean(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out.metrics["low_var_kl"], (torch.exp(d) - d - 1).mean(), rtol=1e-12, atol=1e-14)
    expected_scores = torch.stack(
        [
            -d_row.mean() if d_row.numel() else torch.zeros((), dtype=torch.float64)
            for d_row in [(batch.old_logprobs - batch.logprobs.detach())[i][mask[i]] for i in range(mask.shape[0])]
        ]
    )
    torch.testing.assert_close(out.metrics["scores"], expected_scores, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_no_item_or_host_sync_inside_the_loss(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    batch = make_batch(0, scale=scale_for(name))

    def forbidden(*_args, **_kwargs):
        raise AssertionError("a loss must not call .item()/.tolist()")

    monkeypatch.setattr(torch.Tensor, "item", forbidden)
    monkeypatch.setattr(torch.Tensor, "tolist", forbidden)
    LOSSES[name](**batch.kwargs())


@pytest.mark.parametrize(
    ("kwargs_update", "message"),
    [
        ({"logprobs": torch.zeros(4)}, "logprobs must be \\[B, T\\]"),
        ({"old_logprobs": torch.zeros(4, 2)}, "old_logprobs must have the shape of logprobs"),
        ({"response_mask": torch.ones(3, 3)}, "response_mask must have the shape of logprobs"),
        ({"rewards": torch.zeros(4, 1)}, "rewards must be \\[B\\] = \\[4\\]"),
        ({"group_ids": torch.zeros(5, dtype=torch.long)}, "group_ids must be \\[B\\] = \\[4\\]"),
        ({"group_ids": torch.zeros(4)}, "group_ids must be an integer tensor"),
    ],
)
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_bad_inputs_name_the_argument(name: str, kwargs_update: dict, message: str) -> None:
    kwargs = {
        "logprobs": torch.zeros(4, 3),
        "old_logprobs": torch.zeros(4, 3),
        "response_mask": torch.ones(4, 3),
        "rewards": torch.zeros(4),
        "group_ids": torch.zeros(4, dtype=torch.long),
    }
    kwargs.update(kwargs_update)
    with pytest.raises(ValueError, match=message):
        LOSSES[name](**kwargs)


@pytest.mark.parametrize(
    ("name", "hparams", "message"),
    [
        ("real", {"tau": 0.0}, "tau must be > 0"),
        ("real_bce", {"tau": -1.0}, "tau must be > 0"),
        ("real_product", {"tau": float("nan")}, "tau must be > 0"),
        ("grpo", {"clip_low": -0.1}, "clip_low and clip_high must be >= 0"),
    ],
)
def test_bad_hyperparameters_are_named(name: str, hparams: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LOSSES[name](**make_batch(0).kwargs(), **hparams)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_masked_positions_may_hold_inf_or_nan(name: str) -> None:
    """Padding can carry -inf/NaN log-probs: they never reach the loss or the gradient."""
    batch = make_batch(0, scale=scale_for(name))
    clean = LOSSES[name](**batch.kwargs())
    pad = batch.response_mask == 0
    dirty_lp = batch.logprobs.detach().masked_fill(pad, float("nan")).requires_grad_()
    dirty = RolloutTensors(
        dirty_lp,
        batch.old_logprobs.masked_fill(pad, float("-inf")),
        batch.response_mask,
        batch.rewards,
        batch.group_ids,
    )
    out = LOSSES[name](**dirty.kwargs())
    torch.testing.assert_close(out.loss, clean.loss, rtol=0, atol=0)
    (grad,) = torch.autograd.grad(out.loss, dirty_lp)
    assert torch.isfinite(grad).all() and torch.all(grad[pad] == 0)


@pytest.mark.parametrize("name", ["real", "real_bce", "real_product"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_finite_with_s_over_tau_up_to_1e3(name: str, dtype: torch.dtype) -> None:
    batch = make_batch(0)
    size = batch.rewards.shape[0]
    scores = torch.linspace(-500, 500, size, dtype=torch.float64)  # |s|/τ up to 1e3 at τ = 0.5
    lp = (batch.old_logprobs + scores[:, None]).to(dtype).requires_grad_()
    out = LOSSES[name](
        logprobs=lp,
        old_logprobs=batch.old_logprobs.to(dtype),
        response_mask=batch.response_mask,
        rewards=batch.rewards,
        group_ids=batch.group_ids,
    )
    (grad,) = torch.autograd.grad(out.loss, lp)
    assert torch.isfinite(out.loss) and torch.isfinite(grad.float()).all()
    assert torch.isfinite(out.metrics["grad_weights"]).all()
    assert out.metrics["grad_weights"].abs().max() <= 1 / 0.5
    assert out.loss.dtype == torch.float32  # reduced precision is computed in float32


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_bfloat16_inputs_match_float64_on_the_same_values(name: str) -> None:
    batch = make_batch(2, scale=scale_for(name) if name != "gspo" else 0.0)
    lp16 = batch.logprobs.detach().to(torch.bfloat16).requires_grad_()
    old16 = batch.old_logprobs.to(torch.bfloat16)
    out16 = LOSSES[name](
        logprobs=lp16,
        old_logprobs=old16,
        response_mask=batch.response_mask,
        rewards=batch.rewards,
        group_ids=batch.group_ids,
    )
    lp64 = lp16.detach().double().requires_grad_()
    out64 = LOSSES[name](
        logprobs=lp64,
        old_logprobs=old16.double(),
        response_mask=batch.response_mask,
        rewards=batch.rewards,
        group_ids=batch.group_ids,
    )
    (g16,) = torch.autograd.grad(out16.loss, lp16)
    (g64,) = torch.autograd.grad(out64.loss, lp64)
    assert g16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.loss.double(), out64.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g16.double(), g64, rtol=1e-2, atol=1e-4)  # the gradient is rounded to bf16


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_batch_without_any_contrast_gives_zero_loss_and_gradient(name: str) -> None:
    lp = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    out = LOSSES[name](
        logprobs=lp,
        old_logprobs=lp.detach() + 0.1,
        response_mask=torch.ones(6, 4),
        rewards=torch.tensor([1.0, 1, 1, 0, 0, 0], dtype=torch.float64),
        group_ids=torch.tensor([0, 0, 0, 1, 1, 1]),
    )
    (grad,) = torch.autograd.grad(out.loss, lp)
    assert out.loss.item() == 0.0 and torch.all(grad == 0)
    assert out.metrics["contrast_fraction"].item() == 0.0
