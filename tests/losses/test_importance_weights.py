"""Truncated importance sampling: ``importance_weights`` scale each token's gradient, never the loss value.

For every loss, per-token [B, T] and per-sequence [B] weights, without and with step counts (the batch
as half of a larger step, so that the normalisers differ from the batch's own), on the off-policy
fixture (unequal groups, groups without contrast, an empty response, active clips):

- the loss value and every metric but ``grad_weights`` (and its means ``weight_abs_mean_*``) equal
  the unweighted ones;
- ∂loss/∂logprobs equals the unweighted gradient times w. Every loss depends on logprobs[i, t]
  only through token t's own log-ratio (GRPO/DAPO through its own clipped term, GSPO and the
  REAL family through s_i, to which each token contributes log-ratio_t/|o_i|), so "multiply the
  token's contribution to the gradient by w_t" is well defined; it is checked against the
  unweighted autograd gradient, against verl-style losses whose token terms are multiplied by w
  (GRPO family) and against the closed-form token shares (∂L/∂s_i)·w_t/|o_i| (REAL family);
- ``grad_weights`` equals Z·Σ_t of that gradient;
- all-ones weights equal no weights, and ``None`` is the unweighted loss itself.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from real_lightning.losses import (
    LOSSES,
    BatchCounts,
    grpo_advantages,
    pg_gradient_weights,
    real_bce_gradient_weights,
    real_gradient_weights,
    real_product_gradient_weights,
)
from tests.losses.conftest import LOSS_NAMES, TIGHT, RolloutTensors, make_batch, scale_for

KINDS = ["token", "sequence"]
COUNTS = ["batch", "step"]
PG = {"grpo": (0.2, 0.2), "dapo": (0.2, 0.28), "gspo": (3e-4, 4e-4)}
REAL_CLOSED_FORMS = {
    "real": real_gradient_weights,
    "real_bce": real_bce_gradient_weights,
    "real_product": real_product_gradient_weights,
}
CHANGED_BY_WEIGHTS = {"grad_weights", "weight_abs_mean_pos", "weight_abs_mean_neg", "importance_weight_mean"}


def _batch(name: str, seed: int = 3) -> RolloutTensors:
    return make_batch(seed, scale=scale_for(name))


def _weights(batch: RolloutTensors, kind: str, seed: int = 0) -> Tensor:
    """Weights in [0, 2] (the default cap C = 2) with exact 0s and 2s; finite garbage outside the mask."""
    gen = torch.Generator().manual_seed(seed)
    shape = batch.logprobs.shape if kind == "token" else batch.rewards.shape
    w = torch.rand(shape, generator=gen, dtype=torch.float64) * 2.5
    w = w.clamp(max=2.0)
    w.view(-1)[::7] = 0.0
    if kind == "token":
        w = torch.where(batch.response_mask.bool(), w, torch.full_like(w, 7.0))
    return w


def _token_weights(batch: RolloutTensors, w: Tensor) -> Tensor:
    """[B, T] weight of each response token (0 outside the mask), whatever the kind."""
    full = w if w.dim() == 2 else w[:, None].expand_as(batch.logprobs)
    return full * batch.response_mask


def _counts(batch: RolloutTensors, mode: str) -> BatchCounts | None:
    if mode == "batch":
        return None
    own = BatchCounts.of(batch.response_mask, batch.rewards, batch.group_ids)
    return own + own  # the batch is half of the step: every normaliser doubles


def _run(name: str, batch: RolloutTensors, **kwargs):
    out = LOSSES[name](**batch.kwargs(), **kwargs)
    (grad,) = torch.autograd.grad(out.loss, batch.logprobs)
    return out, grad


def _cases():
    return [(n, k, c) for n in LOSS_NAMES for k in KINDS for c in COUNTS]


def test_fixture_exercises_the_cases() -> None:
    for name in PG:
        out = LOSSES[name](**_batch(name).kwargs())
        assert out.metrics["clip_fraction_high"] > 0 and out.metrics["clip_fraction_low"] > 0, name
    batch = _batch("real")
    w = _weights(batch, "token")
    mask = batch.response_mask.bool()
    assert (w[mask] == 0).any() and (w[mask] == 2).any() and ((w[mask] > 0) & (w[mask] < 2)).any()
    assert (batch.response_mask.sum(-1) == 0).any(), "an empty response"
    assert len(set(torch.unique(batch.group_ids, return_counts=True)[1].tolist())) > 2, "unequal group sizes"


@pytest.mark.parametrize(("name", "kind", "counts"), _cases())
def test_value_and_metrics_are_unweighted(name: str, kind: str, counts: str) -> None:
    batch = _batch(name)
    plain = LOSSES[name](**batch.kwargs(), counts=_counts(batch, counts))
    weighted = LOSSES[name](**batch.kwargs(), counts=_counts(batch, counts), importance_weights=_weights(batch, kind))
    assert torch.equal(weighted.loss.detach(), plain.loss.detach())
    assert set(weighted.metrics) == set(plain.metrics) | {"importance_weight_mean"}
    for key, value in plain.metrics.items():
        if key not in CHANGED_BY_WEIGHTS:
            assert torch.equal(weighted.metrics[key], value), key
    assert not torch.allclose(weighted.metrics["grad_weights"], plain.metrics["grad_weights"])


@pytest.mark.parametrize(("name", "kind", "counts"), _cases())
def test_gradient_is_unweighted_gradient_times_weights(name: str, kind: str, counts: str) -> None:
    batch = _batch(name)
    w = _weights(batch, kind)
    _, plain = _run(name, batch, counts=_counts(batch, counts))
    _, weighted = _run(name, batch, counts=_counts(batch, counts), importance_weights=w)
    assert plain.abs().sum() > 0
    torch.testing.assert_close(weighted, plain * _token_weights(batch, w), **TIGHT)


@pytest.mark.parametrize(("name", "kind", "counts"), _cases())
def test_grad_weights_equal_normalizer_times_token_sum_of_gradient(name: str, kind: str, counts: str) -> None:
    batch = _batch(name)
    out, grad = _run(name, batch, counts=_counts(batch, counts), importance_weights=_weights(batch, kind))
    expected = (grad * batch.response_mask).sum(-1) * out.metrics["weight_normalizer"]
    torch.testing.assert_close(out.metrics["grad_weights"], expected, **TIGHT)
    assert out.metrics["grad_weights"].abs().sum() > 0


def _verl_style_pg_loss(name: str, batch: RolloutTensors, w: Tensor, counts: BatchCounts | None) -> Tensor:
    """Each token's clipped term −min(ρA, clip(ρ)A) times w_t, aggregated as the loss does (value ≠ ours).

    GSPO's token ratio is verl's: value e^{s_i} (s_i detached), gradient e^{s_i} per unit of log π_θ(t)/|o_i|.
    """
    low, high = PG[name]
    lp, mask = batch.logprobs, batch.response_mask
    adv = grpo_advantages(batch.rewards, batch.group_ids)[:, None]
    lengths = mask.sum(-1).clamp_min(1)
    log_ratio = (lp - batch.old_logprobs) * mask
    if name == "gspo":
        s = (log_ratio.sum(-1) / lengths).detach()[:, None]
        ratio = torch.exp(s + (lp - lp.detach()) / lengths[:, None])
    else:
        ratio = torch.exp(log_ratio)
    terms = -torch.min(ratio * adv, ratio.clamp(1 - low, 1 + high) * adv) * _token_weights(batch, w)
    sequences = batch.rewards.shape[0] if counts is None else counts.sequences
    if name == "dapo":
        return terms.sum() / (mask.sum() if counts is None else counts.tokens)
    if name == "gspo":  # the sum over a row's tokens of gradient shares 1/|o_i| is the sequence's term
        return terms.sum() / sequences
    return (terms.sum(-1) / lengths).sum() / sequences


@pytest.mark.parametrize(("name", "kind", "counts"), [c for c in _cases() if c[0] in PG])
def test_pg_gradient_equals_verl_style_weighted_token_terms(name: str, kind: str, counts: str) -> None:
    batch = _batch(name)
    w = _weights(batch, kind)
    step = _counts(batch, counts)
    _, grad = _run(name, batch, counts=step, importance_weights=w)
    (expected,) = torch.autograd.grad(_verl_style_pg_loss(name, batch, w, step), batch.logprobs)
    torch.testing.assert_close(grad, expected, **TIGHT)
    closed = pg_gradient_weights(name, **batch.kwargs(), counts=step, importance_weights=w)
    normalizer = batch.rewards.shape[0] if step is None else step.sequences
    torch.testing.assert_close(closed, (expected * batch.response_mask).sum(-1) * normalizer, **TIGHT)


@pytest.mark.parametrize(("name", "kind", "counts"), [c for c in _cases() if c[0] in REAL_CLOSED_FORMS])
def test_real_family_gradient_is_closed_form_token_shares(name: str, kind: str, counts: str) -> None:
    """∂loss/∂logprobs[i, t] = (∂L/∂s_i / Z)·w_t/|o_i| with the unweighted closed form ∂L/∂s_i."""
    batch = _batch(name)
    w = _weights(batch, kind)
    out, grad = _run(name, batch, counts=_counts(batch, counts), importance_weights=w)
    mask = batch.response_mask
    lengths = mask.sum(-1).clamp_min(1)
    scores = ((batch.logprobs.detach() - batch.old_logprobs) * mask).sum(-1) / lengths
    per_score = REAL_CLOSED_FORMS[name](scores, batch.rewards, batch.group_ids) / out.metrics["weight_normalizer"]
    expected = per_score[:, None] * _token_weights(batch, w) / lengths[:, None]
    torch.testing.assert_close(grad, expected, **TIGHT)


@pytest.mark.parametrize(("name", "kind", "counts"), _cases())
def test_all_ones_weights_equal_no_weights(name: str, kind: str, counts: str) -> None:
    batch = _batch(name)
    ones = torch.ones(batch.logprobs.shape if kind == "token" else batch.rewards.shape, dtype=torch.float64)
    plain, grad = _run(name, batch, counts=_counts(batch, counts))
    weighted, grad_w = _run(name, batch, counts=_counts(batch, counts), importance_weights=ones)
    assert torch.equal(weighted.loss, plain.loss) and torch.equal(grad_w, grad)
    for key, value in plain.metrics.items():
        assert torch.equal(weighted.metrics[key], value), key
    assert weighted.metrics["importance_weight_mean"] == 1.0


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_none_is_the_unweighted_loss(name: str) -> None:
    batch = _batch(name)
    plain, grad = _run(name, batch)
    explicit, grad_none = _run(name, batch, importance_weights=None)
    assert torch.equal(explicit.loss, plain.loss) and torch.equal(grad_none, grad)
    assert explicit.metrics.keys() == plain.metrics.keys() and "importance_weight_mean" not in plain.metrics
    for key, value in plain.metrics.items():
        assert torch.equal(explicit.metrics[key], value), key


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("kind", KINDS)
def test_importance_weight_mean_is_the_response_token_mean(name: str, kind: str) -> None:
    batch = _batch(name)
    w = _weights(batch, kind)
    out = LOSSES[name](**batch.kwargs(), importance_weights=w)
    expected = _token_weights(batch, w).sum() / batch.response_mask.sum()
    torch.testing.assert_close(out.metrics["importance_weight_mean"], expected, **TIGHT)
    assert not out.metrics["importance_weight_mean"].requires_grad


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("kind", KINDS)
def test_micro_batches_with_step_counts_add_up_to_the_step(name: str, kind: str) -> None:
    batch = _batch(name)
    w = _weights(batch, kind)
    whole, grad = _run(name, batch, importance_weights=w)
    counts = BatchCounts.of(batch.response_mask, batch.rewards, batch.group_ids)
    loss, grad_parts = torch.zeros((), dtype=torch.float64), torch.zeros_like(grad)
    grad_weights = torch.zeros_like(batch.rewards)
    for ids in ([100, 42, 3], [7, -5, 11]):
        rows = torch.isin(batch.group_ids, torch.tensor(ids))
        sub = RolloutTensors(
            batch.logprobs.detach()[rows].clone().requires_grad_(),
            batch.old_logprobs[rows],
            batch.response_mask[rows],
            batch.rewards[rows],
            batch.group_ids[rows],
        )
        out, g = _run(name, sub, counts=counts, importance_weights=w[rows])
        loss, grad_parts[rows], grad_weights[rows] = loss + out.loss.detach(), g, out.metrics["grad_weights"]
    torch.testing.assert_close(loss, whole.loss.detach(), **TIGHT)
    torch.testing.assert_close(grad_parts, grad, **TIGHT)
    torch.testing.assert_close(grad_weights, whole.metrics["grad_weights"], **TIGHT)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_bad_shapes_and_dtypes_raise_naming_the_argument(name: str) -> None:
    batch = _batch(name)
    b, t = batch.logprobs.shape
    for shape in [(b, t + 1), (b + 1,), (b, t, 1), (), (1, t), (b, 1), (t,)]:
        with pytest.raises(ValueError, match=r"importance_weights must be \[B, T\] = \[\d+, \d+\].*or \[B\]"):
            LOSSES[name](**batch.kwargs(), importance_weights=torch.ones(shape, dtype=torch.float64))
    with pytest.raises(ValueError, match="importance_weights must be floating point"):
        LOSSES[name](**batch.kwargs(), importance_weights=torch.ones(b, t, dtype=torch.long))


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf")])
def test_invalid_weight_on_a_response_token_makes_the_loss_nan(name: str, kind: str, bad: float) -> None:
    """No host sync, so no exception: the loss turns NaN and the caller's non-finite check skips the step."""
    batch = _batch(name)
    w = _weights(batch, kind)
    row = int(torch.nonzero(batch.response_mask.sum(-1) > 0)[0])
    w[(row, 0) if kind == "token" else row] = bad
    out = LOSSES[name](**batch.kwargs(), importance_weights=w)
    assert torch.isnan(out.loss)


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("kind", KINDS)
def test_weights_outside_the_response_are_ignored(name: str, kind: str) -> None:
    """NaN/inf/negative padding (token weights) or weights of empty responses change nothing."""
    batch = _batch(name)
    w = _weights(batch, kind)
    clean, grad = _run(name, batch, importance_weights=w)
    dirty = w.clone()
    if kind == "token":
        padding = ~batch.response_mask.bool()
        dirty[padding] = (
            torch.tensor([float("nan"), float("inf"), -3.0]).repeat(int(padding.sum()))[: int(padding.sum())].to(dirty)
        )
    else:
        dirty[batch.response_mask.sum(-1) == 0] = float("nan")
    out, grad_dirty = _run(name, batch, importance_weights=dirty)
    assert torch.equal(out.loss, clean.loss) and torch.equal(grad_dirty, grad)
    for key, value in clean.metrics.items():
        assert torch.equal(out.metrics[key], value), key


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_low_precision_weights_and_logprobs(name: str) -> None:
    """bfloat16 log-probs and weights: the math runs in float32, the gradient is still g·w."""
    batch = _batch(name)
    lp = batch.logprobs.detach().to(torch.bfloat16).requires_grad_()
    low = RolloutTensors(lp, batch.old_logprobs.to(torch.bfloat16), batch.response_mask, batch.rewards, batch.group_ids)
    w = _weights(batch, "token").to(torch.bfloat16)
    plain, grad = _run(name, low)
    weighted, grad_w = _run(name, low, importance_weights=w)
    assert weighted.loss.dtype == torch.float32 and torch.equal(weighted.loss.detach(), plain.loss.detach())
    expected = (grad.float() * _token_weights(batch, w.double()).float()).to(torch.bfloat16)
    torch.testing.assert_close(grad_w, expected, rtol=1e-2, atol=1e-6)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_weights_are_treated_as_constants(name: str) -> None:
    batch = _batch(name)
    w = _weights(batch, "token").requires_grad_()
    LOSSES[name](**batch.kwargs(), importance_weights=w).loss.backward()
    assert w.grad is None and batch.logprobs.grad is not None
