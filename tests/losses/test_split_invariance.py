"""Global normalisers: micro-batches of whole groups, each divided by the step's counts, add up to the step.

For any partition of a batch into sub-batches of whole groups, Σ_k loss(sub-batch k, counts=counts
of the full batch) equals loss(full batch) in value and in gradient, and each rollout's
``grad_weights`` is the same whichever sub-batch it is in.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from real_lightning.losses import LOSSES, BatchCounts, pg_gradient_weights
from tests.losses.conftest import LOSS_NAMES, TIGHT, RolloutTensors, make_batch, scale_for

# make_batch's groups: id → rewards. 42 (all 1) and -5 (all 0) have no contrast; 7 is a single rollout
# (no contrast for REAL; advantage r/(1 + eps) in the GRPO family). Row 3 is an empty response.
GROUP_IDS = [100, 7, 42, -5, 3, 11]
NO_CONTRAST = [42, -5]
SPLITS = {
    "k1": [GROUP_IDS],
    "k2": [[100, 42, 3], [7, -5, 11]],
    "k2_uneven": [[11], [100, 7, 42, -5, 3]],
    "k3": [[100, 7], NO_CONTRAST, [3, 11]],  # the middle one holds only groups without contrast
    "k3_uneven": [[3], [42, 100, -5, 7], [11]],
}
PG_LOSSES = ["grpo", "dapo", "gspo"]


def _off_policy_batch(name: str, seed: int = 3) -> RolloutTensors:
    """make_batch with old_logprobs ≠ logprobs, spread so that the GRPO family's clips are active."""
    return make_batch(seed, scale=scale_for(name))


def _rows(batch: RolloutTensors, group_ids: list[int]) -> torch.Tensor:
    return torch.isin(batch.group_ids, torch.tensor(group_ids))


def _sub_batch(batch: RolloutTensors, rows: torch.Tensor) -> RolloutTensors:
    return RolloutTensors(
        batch.logprobs.detach()[rows].clone().requires_grad_(),
        batch.old_logprobs[rows],
        batch.response_mask[rows],
        batch.rewards[rows],
        batch.group_ids[rows],
    )


def _counts(batch: RolloutTensors) -> BatchCounts:
    return BatchCounts.of(batch.response_mask, batch.rewards, batch.group_ids)


def _split_sums(name: str, batch: RolloutTensors, parts: list[list[int]], counts: BatchCounts):
    """Σ_k of the sub-batch losses, their gradients scattered back to rows, and the rows' grad_weights."""
    loss = torch.zeros((), dtype=batch.logprobs.dtype)
    grad = torch.zeros_like(batch.logprobs)
    weights = torch.full_like(batch.rewards, float("nan"))
    normalizers = []
    for group_ids in parts:
        rows = _rows(batch, group_ids)
        sub = _sub_batch(batch, rows)
        out = LOSSES[name](**sub.kwargs(), counts=counts)
        (g,) = torch.autograd.grad(out.loss, sub.logprobs)
        loss, grad[rows], weights[rows] = loss + out.loss.detach(), g, out.metrics["grad_weights"]
        normalizers.append(out.metrics["weight_normalizer"])
    return loss, grad, weights, normalizers


def test_the_batch_is_off_policy_with_active_clips_and_no_contrast_groups() -> None:
    """Guard on the fixture: the cases the split tests are meant to cover are really there."""
    for name in PG_LOSSES:
        batch = _off_policy_batch(name)
        assert not torch.equal(batch.logprobs.detach(), batch.old_logprobs)
        out = LOSSES[name](**batch.kwargs())
        assert out.metrics["clip_fraction_high"] > 0 and out.metrics["clip_fraction_low"] > 0, name
    batch = _off_policy_batch("real")
    sizes = torch.bincount(torch.unique(batch.group_ids, return_inverse=True)[1]).tolist()
    assert sorted(sizes) == [1, 2, 3, 4, 5, 8]
    assert not torch.equal(batch.group_ids, batch.group_ids.sort().values)  # shuffled rows
    assert (batch.response_mask.sum(-1) == 0).any()  # an empty response
    for group_id in NO_CONTRAST:
        assert batch.rewards[batch.group_ids == group_id].unique().numel() == 1


@pytest.mark.parametrize("split", sorted(SPLITS))
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_sub_batches_with_step_counts_add_up_to_the_full_batch(name: str, split: str) -> None:
    batch = _off_policy_batch(name)
    full = LOSSES[name](**batch.kwargs())
    (full_grad,) = torch.autograd.grad(full.loss, batch.logprobs)
    loss, grad, weights, normalizers = _split_sums(name, batch, SPLITS[split], _counts(batch))
    torch.testing.assert_close(loss, full.loss.detach(), **TIGHT)
    torch.testing.assert_close(grad, full_grad, **TIGHT)
    torch.testing.assert_close(weights, full.metrics["grad_weights"], **TIGHT)
    for normalizer in normalizers:  # every micro-batch reports the step's Z
        torch.testing.assert_close(normalizer, full.metrics["weight_normalizer"], rtol=0, atol=0)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_local_counts_break_the_sum(name: str) -> None:
    """Control: the same split without the step's counts does not add up (the split tests can fail)."""
    batch = _off_policy_batch(name)
    full = LOSSES[name](**batch.kwargs())
    (full_grad,) = torch.autograd.grad(full.loss, batch.logprobs)
    grad = torch.zeros_like(full_grad)
    for group_ids in SPLITS["k2"]:
        rows = _rows(batch, group_ids)
        sub = _sub_batch(batch, rows)
        (grad[rows],) = torch.autograd.grad(LOSSES[name](**sub.kwargs()).loss, sub.logprobs)
    assert (grad - full_grad).abs().max() > 1e-6


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(LOSS_NAMES),
    seed=st.integers(0, 50),
    assignment=st.lists(st.integers(0, 2), min_size=len(GROUP_IDS), max_size=len(GROUP_IDS)),
)
def test_any_partition_into_whole_groups_adds_up(name: str, seed: int, assignment: list[int]) -> None:
    batch = make_batch(seed, scale=scale_for(name))
    parts = [[g for g, k in zip(GROUP_IDS, assignment, strict=True) if k == part] for part in range(3)]
    parts = [p for p in parts if p]
    full = LOSSES[name](**batch.kwargs())
    (full_grad,) = torch.autograd.grad(full.loss, batch.logprobs)
    counts = sum(_counts(_sub_batch(batch, _rows(batch, p))) for p in parts)  # as a trainer would: per micro-batch
    loss, grad, weights, _ = _split_sums(name, batch, parts, counts)
    torch.testing.assert_close(loss, full.loss.detach(), **TIGHT)
    torch.testing.assert_close(grad, full_grad, **TIGHT)
    torch.testing.assert_close(weights, full.metrics["grad_weights"], **TIGHT)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_counts_none_is_bit_identical_to_the_batch_own_counts(name: str, dtype: torch.dtype) -> None:
    batch = make_batch(5, scale=scale_for(name), dtype=dtype)
    out = LOSSES[name](**batch.kwargs())
    (grad,) = torch.autograd.grad(out.loss, batch.logprobs)
    out_c = LOSSES[name](**batch.kwargs(), counts=_counts(batch))
    (grad_c,) = torch.autograd.grad(out_c.loss, batch.logprobs)
    assert torch.equal(out_c.loss, out.loss)
    assert torch.equal(grad_c, grad)
    assert set(out_c.metrics) == set(out.metrics)
    for key, value in out.metrics.items():
        assert value.dtype == out_c.metrics[key].dtype and torch.equal(out_c.metrics[key], value), key


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_grad_weights_are_the_step_normalizer_times_autograd_in_a_micro_batch(name: str) -> None:
    batch = _off_policy_batch(name)
    counts = _counts(batch)
    sub = _sub_batch(batch, _rows(batch, SPLITS["k2"][1]))
    out = LOSSES[name](**sub.kwargs(), counts=counts)
    (grad,) = torch.autograd.grad(out.loss, sub.logprobs)
    torch.testing.assert_close(
        out.metrics["grad_weights"], (grad * sub.response_mask).sum(-1) * out.metrics["weight_normalizer"], **TIGHT
    )
    assert out.metrics["grad_weights"].abs().sum() > 0


@pytest.mark.parametrize("variant", PG_LOSSES)
def test_pg_closed_form_with_step_counts_equals_the_loss_metric(variant: str) -> None:
    batch = _off_policy_batch(variant)
    counts = _counts(batch)
    sub = _sub_batch(batch, _rows(batch, SPLITS["k2_uneven"][1]))
    out = LOSSES[variant](**sub.kwargs(), counts=counts)
    closed = pg_gradient_weights(variant, **sub.kwargs(), counts=counts)
    torch.testing.assert_close(closed, out.metrics["grad_weights"], **TIGHT)
    if variant == "dapo":  # the only closed form that depends on the counts
        local = pg_gradient_weights(variant, **sub.kwargs())
        assert (local - closed).abs().max() > 1e-6


def test_normalizers_are_the_step_counts_in_each_loss_unit() -> None:
    batch = _off_policy_batch("real")
    counts = BatchCounts(groups=10.0, contrast_rollouts=20.0, sequences=30.0, tokens=400.0)
    expected = {"real": 10, "real_product": 10, "real_s0": 10, "real_bce": 20, "grpo": 30, "dapo": 30, "gspo": 30}
    for name in LOSS_NAMES:
        out = LOSSES[name](**batch.kwargs(), counts=counts)
        assert out.metrics["weight_normalizer"].item() == expected[name], name
        # the loss scales as 1/count in its own unit: doubling the others changes nothing
        unit = {"real": "groups", "real_product": "groups", "real_s0": "groups", "real_bce": "contrast_rollouts"}
        unit |= {"grpo": "sequences"}
        unit |= {"dapo": "tokens", "gspo": "sequences"}
        doubled = {f: 2 * getattr(counts, f) for f in ("groups", "contrast_rollouts", "sequences", "tokens")}
        others = BatchCounts(**{f: (v if f != unit[name] else getattr(counts, f)) for f, v in doubled.items()})
        mine = BatchCounts(**{f: (v if f == unit[name] else getattr(counts, f)) for f, v in doubled.items()})
        base = out.loss.detach()
        torch.testing.assert_close(LOSSES[name](**batch.kwargs(), counts=others).loss.detach(), base, **TIGHT)
        torch.testing.assert_close(LOSSES[name](**batch.kwargs(), counts=mine).loss.detach(), base / 2, **TIGHT)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_signature_takes_counts_with_default_none(name: str) -> None:
    param = inspect.signature(LOSSES[name]).parameters["counts"]
    assert param.kind is inspect.Parameter.KEYWORD_ONLY and param.default is None


# ---------------------------------------------------------------- BatchCounts


def _counts_by_hand(batch: RolloutTensors) -> list[float]:
    rewards: dict[int, list[float]] = {}
    for group_id, reward in zip(batch.group_ids.tolist(), batch.rewards.tolist(), strict=True):
        rewards.setdefault(group_id, []).append(reward)
    contrast = sum(len(rs) for rs in rewards.values() if len(set(rs)) > 1)
    return [len(rewards), contrast, len(batch.rewards), float(batch.response_mask.sum())]


def test_counts_of_make_batch() -> None:
    batch = make_batch(0)
    counts = _counts(batch)
    # groups 100 (3), 3 (5), 11 (8) have a contrast: 16 rollouts; 42, -5 and the single 7 do not
    assert counts.as_tensor().tolist() == [6, 16, 23, batch.response_mask.sum().item()]
    assert counts.as_tensor().tolist() == _counts_by_hand(batch)
    for value in (counts.groups, counts.contrast_rollouts, counts.sequences, counts.tokens):
        assert isinstance(value, torch.Tensor) and value.shape == () and value.dtype == torch.float64


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    sizes=st.lists(st.integers(1, 8), min_size=1, max_size=7),
    id_span=st.integers(1, 10**6),
)
def test_counts_equal_a_python_count_and_add_over_sub_batches(seed: int, sizes: list[int], id_span: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randperm(max(id_span, len(sizes)), generator=gen)[: len(sizes)] - id_span // 2  # distinct, any sign
    group_ids = ids.repeat_interleave(torch.tensor(sizes))
    rewards = torch.randint(0, 2, group_ids.shape, generator=gen).double()
    mask = (torch.rand(group_ids.shape[0], 6, generator=gen) < 0.7).long()  # integer mask, some rows empty
    perm = torch.randperm(group_ids.shape[0], generator=gen)
    batch = RolloutTensors(torch.zeros(mask.shape), torch.zeros(mask.shape), mask[perm], rewards[perm], group_ids[perm])
    full = _counts(batch)
    assert full.as_tensor().tolist() == _counts_by_hand(batch)
    # any partition into whole groups: the counts add up
    owner = torch.randint(0, 3, (len(sizes),), generator=gen)
    parts = [ids[owner == k].tolist() for k in range(3)]
    summed = sum(_counts(_sub_batch(batch, _rows(batch, p))) for p in parts if p)
    assert torch.equal(summed.as_tensor(), full.as_tensor())
    # as one all-reduce would: stack, sum, read back
    stacked = torch.stack([_counts(_sub_batch(batch, _rows(batch, p))).as_tensor() for p in parts if p]).sum(0)
    assert torch.equal(BatchCounts.from_tensor(stacked).as_tensor(), full.as_tensor())


def test_counts_tensor_round_trip_and_python_numbers() -> None:
    counts = BatchCounts(groups=2, contrast_rollouts=3.0, sequences=torch.tensor(4), tokens=torch.tensor(5.0))
    t = counts.as_tensor()
    assert t.dtype == torch.float64 and t.tolist() == [2, 3, 4, 5]
    back = BatchCounts.from_tensor(t)
    assert back.as_tensor().tolist() == [2, 3, 4, 5]
    assert (back + counts).as_tensor().tolist() == [4, 6, 8, 10]
    assert sum([counts, back]).as_tensor().tolist() == [4, 6, 8, 10]
    with pytest.raises(ValueError, match=r"\[4\]"):
        BatchCounts.from_tensor(torch.zeros(3))
    with pytest.raises(ValueError, match="rewards"):
        BatchCounts.of(torch.ones(3, 2), torch.ones(2), torch.zeros(3, dtype=torch.long))


def test_counts_of_an_empty_batch_are_zero() -> None:
    empty = BatchCounts.of(torch.ones(0, 4), torch.ones(0), torch.zeros(0, dtype=torch.long))
    assert empty.as_tensor().tolist() == [0, 0, 0, 0]


def test_counts_of_runs_on_meta_tensors() -> None:
    """No data-dependent op (unique, nonzero, .item()): all of them fail on the meta device, as a host sync would."""
    mask, rewards = torch.ones(7, 5, device="meta"), torch.ones(7, device="meta")
    counts = BatchCounts.of(mask, rewards, torch.zeros(7, dtype=torch.long, device="meta"))
    t = counts.as_tensor()
    assert t.device.type == "meta" and t.shape == (4,) and t.dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to detect host syncs")
def test_counts_of_needs_no_host_sync() -> None:
    batch = make_batch(1)
    args = [t.cuda() for t in (batch.response_mask, batch.rewards, batch.group_ids)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        counts = BatchCounts.of(*args)
        t = counts.as_tensor()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert t.cpu().tolist() == _counts_by_hand(batch)
