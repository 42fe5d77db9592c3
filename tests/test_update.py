"""One optimizer step as micro-batches: the gradient does not depend on the split (float64, every loss)."""

from __future__ import annotations

import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from real_lightning.losses import LOSSES
from real_lightning.losses.common import BatchCounts
from real_lightning.losses.kl import KLPenalty
from real_lightning.module import RealPolicyModule
from real_lightning.step import ImportanceSampling, accumulate_step, old_logprobs_pass
from real_lightning.step.accumulate import backward_if_finite, step_counts
from real_lightning.step.importance import mismatch
from real_lightning.step.metrics import StepMetrics
from tests.rollout.test_batch import make_rollouts

LOSS_NAMES = sorted(LOSSES)
COLLECTIVE_HOMES = ("real_lightning.step.accumulate", "real_lightning.step.metrics")  # the step's all-reduces


def _rollouts(vocab: int) -> object:
    """13 groups of unequal sizes (1..4), shuffled non-contiguous ids, mixed contrast, tokens < vocab."""
    gen = torch.Generator().manual_seed(11)
    batch = make_rollouts(groups=13, n=4, prompt=6, response=9, seed=5)
    keep = torch.cat([torch.arange(g * 4, g * 4 + 1 + g % 4) for g in range(13)])  # group g keeps 1 + g % 4 rows
    batch = batch.select(keep)
    batch.input_ids = batch.input_ids % vocab
    batch.group_ids = (batch.group_ids * 7 + 3) % 101
    batch.rewards = torch.randint(0, 2, (len(batch),), generator=gen).float()
    batch.rewards[batch.group_ids == batch.group_ids[0]] = 1.0  # one group without contrast
    batch.prompt_ids = torch.arange(len(batch))  # a row id, to match rows across splits
    return batch


def _accumulate(
    module: RealPolicyModule, batch, budget, loss_fn=LOSSES["real"], logprobs_fn=None, backward=None, **options
):
    """One step of ``batch`` on one CPU process with plain backward (options: importance_sampling, ...)."""
    return accumulate_step(
        batch,
        budget,
        logprobs_fn=logprobs_fn or module.response_logprobs,
        loss_fn=loss_fn,
        loss_kwargs={},
        backward=backward or (lambda value: value.backward()),
        device=torch.device("cpu"),
        world_size=1,
        **options,
    )


def _step(module: RealPolicyModule, batch, budget, loss: str) -> tuple[torch.Tensor, object]:
    module.policy.zero_grad(set_to_none=True)
    result = _accumulate(module, batch, budget, loss_fn=LOSSES[loss])
    grad = torch.cat([p.grad.flatten() for p in module.policy.parameters() if p.grad is not None])
    return grad, result


@pytest.fixture(scope="module")
def module64(policy_dir) -> RealPolicyModule:
    return RealPolicyModule(pretrained=policy_dir, dtype="float64")


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_step_gradient_does_not_depend_on_the_micro_batch_split(module64, loss) -> None:
    batch = _rollouts(module64.policy.config.vocab_size)
    old = old_logprobs_pass(module64.response_logprobs, batch, (None, None), torch.device("cpu"))
    noise = torch.randn(old.shape, generator=torch.Generator().manual_seed(1), dtype=old.dtype) * 0.3
    batch.old_logprobs = (old + noise).where(batch.response_mask, torch.zeros_like(old))  # off-policy: clips active
    whole, whole_result = _step(module64, batch, (None, None), loss)
    assert whole.abs().sum() > 0 and not whole_result.skipped
    for budget in ((None, 4), (None, 1), (60, None), (150, 6)):
        parts = len(batch.micro_batch_rows(*budget))
        assert parts > 1
        split, result = _step(module64, batch, budget, loss)
        torch.testing.assert_close(split, whole, rtol=0, atol=1e-10, msg=f"{loss} with {parts} micro-batches")
        torch.testing.assert_close(result.metrics["train/loss"], whole_result.metrics["train/loss"], rtol=1e-6, atol=0)

        # the per-rollout weights the monitor logs do not depend on the split either
        def by_row(r):
            return r.loss_output.metrics["grad_weights"][torch.argsort(r.rollouts.prompt_ids)]

        assert len(result.rollouts) == len(batch)
        torch.testing.assert_close(by_row(result), by_row(whole_result), rtol=1e-9, atol=1e-12)


def test_old_logprobs_pass_is_the_same_in_micro_batches(module64) -> None:
    batch = _rollouts(module64.policy.config.vocab_size)
    whole = old_logprobs_pass(module64.response_logprobs, batch, (None, None), torch.device("cpu"))
    split = old_logprobs_pass(module64.response_logprobs, batch, (None, 3), torch.device("cpu"))
    assert whole.shape == batch.response_mask.shape
    torch.testing.assert_close(split[batch.response_mask], whole[batch.response_mask], rtol=0, atol=1e-12)
    assert (split[~batch.response_mask] == 0).all()


def test_a_non_finite_loss_skips_the_step(module64) -> None:
    batch = _rollouts(module64.policy.config.vocab_size)

    def nan_loss(**kwargs):
        out = LOSSES["real"](**kwargs)
        out.loss = out.loss * float("nan")
        return out

    module64.policy.zero_grad(set_to_none=True)
    result = _accumulate(module64, batch, (None, 4), loss_fn=nan_loss)
    assert result.skipped
    assert all(torch.isfinite(p.grad).all() for p in module64.policy.parameters() if p.grad is not None)


def test_a_rank_with_fewer_micro_batches_runs_zero_weight_passes(module64, monkeypatch) -> None:
    """A rank with no rollout in a step (dynamic sampling came up short) runs as many passes as the busiest rank."""
    batch = _rollouts(module64.policy.config.vocab_size)
    empty = batch.select(torch.zeros(0, dtype=torch.long))
    calls = []

    def counted(batch, with_entropy=False):
        calls.append(len(batch))
        return module64.response_logprobs(batch, with_entropy)

    module64.policy.zero_grad(set_to_none=True)
    result = _accumulate(module64, empty, (None, None), loss_fn=LOSSES["real"], logprobs_fn=counted)
    assert calls == [] and not result.skipped and result.loss_output is None  # one process: nothing to line up
    assert float(result.metrics["train/loss"]) == 0.0

    monkeypatch.setattr(
        "real_lightning.step.accumulate.all_reduce_max", lambda value: 2
    )  # another rank has 2 micro-batches
    result = _accumulate(module64, empty, (None, None), loss_fn=LOSSES["real"], logprobs_fn=counted)
    assert calls == [1, 1] and not result.skipped  # two one-token dummy passes
    grads = [p.grad for p in module64.policy.parameters()]
    assert all(g is not None and not g.any() for g in grads)  # every parameter took part, with zero weight


def test_a_rank_without_rollouts_logs_the_same_metrics_as_the_busy_rank(module64, monkeypatch) -> None:
    """Two ranks, one with every rollout and one with none: the idle rank's logged keys and values are the busy
    rank's (train/ppo_kl and the clip fractions included), so a callback sees the same stream on every rank."""
    batch = _rollouts(module64.policy.config.vocab_size)
    budget = (None, 4)
    sent: list[torch.Tensor] = []

    def record(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        sent.append(t.clone())
        return t.clone()

    for home in COLLECTIVE_HOMES:
        monkeypatch.setattr(f"{home}.all_reduce", record)
    busy = _accumulate(module64, batch, budget, loss_fn=LOSSES["grpo"])
    micro_batches = len(batch.micro_batches(*budget))
    assert "train/ppo_kl" in busy.metrics and "train/clip_fraction" in busy.metrics and micro_batches > 1

    calls = iter(sent)  # the idle rank's collectives meet the busy rank's, in the same order

    def with_busy(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        other = next(calls).to(t.dtype)
        return t + other if op == "sum" else torch.maximum(t, other)

    for home in COLLECTIVE_HOMES:
        monkeypatch.setattr(f"{home}.all_reduce", with_busy)
    monkeypatch.setattr("real_lightning.step.accumulate.all_reduce_max", lambda value: micro_batches)
    idle = _accumulate(module64, batch.select(torch.zeros(0, dtype=torch.long)), budget, loss_fn=LOSSES["grpo"])
    assert idle.metrics.keys() == busy.metrics.keys()
    for key, value in busy.metrics.items():
        assert torch.equal(idle.metrics[key], value), key


def test_train_inference_mismatch_is_logged_when_the_engine_reports_behaviour_logprobs(module64) -> None:
    batch = _rollouts(module64.policy.config.vocab_size)
    batch.old_logprobs = old_logprobs_pass(module64.response_logprobs, batch, (None, None), torch.device("cpu"))
    gap = torch.where(torch.arange(len(batch))[:, None] % 2 == 0, 0.1, -0.3).expand_as(batch.old_logprobs)
    batch.behaviour_logprobs = (batch.old_logprobs - gap).where(batch.response_mask, torch.zeros(()))
    _, result = _step(module64, batch, (None, 4), "real")
    counted = gap[batch.response_mask].double()
    metrics = result.metrics
    torch.testing.assert_close(metrics["rollout/mismatch_abs_mean"].double(), counted.abs().mean(), rtol=1e-6, atol=0)
    torch.testing.assert_close(
        metrics["rollout/mismatch_abs_max"].double(), torch.tensor(0.3).double(), rtol=1e-6, atol=0
    )
    expected_k3 = (torch.expm1(counted) - counted).mean()
    torch.testing.assert_close(metrics["rollout/mismatch_k3"].double(), expected_k3, rtol=1e-5, atol=0)
    batch.behaviour_logprobs = None
    assert "rollout/mismatch_k3" not in _step(module64, batch, (None, 4), "real")[1].metrics


def test_truncated_importance_sampling_weights_the_step_gradient(module64) -> None:
    batch = _rollouts(module64.policy.config.vocab_size)
    old = old_logprobs_pass(module64.response_logprobs, batch, (None, None), torch.device("cpu"))
    batch.old_logprobs = (old * 1024).round() / 1024  # exact in float32: the log-ratio below is exactly 1/8
    batch.behaviour_logprobs = (batch.old_logprobs - 0.125).where(batch.response_mask, torch.zeros(()))
    ratio = float(torch.exp(torch.tensor(0.125)))  # the weight, as computed (float32)

    def step(sampling):
        module64.policy.zero_grad(set_to_none=True)
        result = _accumulate(module64, batch, (None, 4), loss_fn=LOSSES["grpo"], importance_sampling=sampling)
        return torch.cat([p.grad.flatten() for p in module64.policy.parameters()]), result.metrics

    plain, metrics = step(ImportanceSampling("off"))
    assert "rollout/is_weight_mean" not in metrics
    # Qwen2's RMSNorm and rotary embedding compute in float32 even in a float64 model, so a scaled upstream
    # gradient comes back scaled up to float32 rounding (~1e-7 of the largest entry), not bit for bit
    tol = {"rtol": 1e-6, "atol": 1e-6 * float(plain.abs().max())}
    token, metrics = step(ImportanceSampling("token", cap=2.0))  # every weight e^(1/8), below the cap
    torch.testing.assert_close(token, plain * ratio, **tol)
    assert float(metrics["rollout/is_clipped_fraction"]) == 0.0
    capped, metrics = step(ImportanceSampling("token", cap=1.05))  # every weight truncated to 1.05
    torch.testing.assert_close(capped, plain * 1.05, **tol)
    assert float(metrics["rollout/is_clipped_fraction"]) == 1.0
    assert float(metrics["rollout/is_weight_mean"]) == pytest.approx(1.05, rel=1e-6)
    sequence, metrics = step(ImportanceSampling("sequence", cap=1.0))  # Π_t e^(1/8) > 1: every rollout at the cap
    torch.testing.assert_close(sequence, plain, rtol=0, atol=0)  # weights exactly 1: the same computation
    assert float(metrics["rollout/is_clipped_fraction"]) == 1.0
    with pytest.raises(ValueError, match=r"importance_sampling.cap must be > 0"):
        ImportanceSampling("token", cap=0)


class _HostReads(TorchDispatchMode):
    """Records, while ``armed``, every read of a tensor's value into Python: ``.item()``, ``bool()``, ``float()``,
    ``int()``, ``if tensor`` all reach ``aten._local_scalar_dense`` (a device→host copy and a sync on a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.reads: list[str] = []

    def record(self, what: str) -> None:
        if self.armed:
            self.reads.append(what + "\n" + "".join(traceback.format_stack(limit=6)[:-2]))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.record("a tensor's value read into Python")
        return func(*args, **(kwargs or {}))


def _recorded(guard: _HostReads, name: str, method):
    def call(self, *args, **kwargs):
        guard.record(f"Tensor.{name}()")
        return method(self, *args, **kwargs)

    return call


def _guarded_step(module: RealPolicyModule, batch, monkeypatch, **options) -> tuple[_HostReads, list[int], object]:
    """accumulate_step with a host-read check armed from the loop's first pass until the step's reduction, and
    disarmed inside the callers' functions (the policy's forward, the loss, the strategy's backward)."""
    guard = _HostReads()
    reductions: list[int] = []

    def outside(fn):
        def call(*args, **kwargs):
            armed, guard.armed = guard.armed, False
            try:
                return fn(*args, **kwargs)
            finally:
                guard.armed = armed

        return call

    def start_loop(value: int) -> int:  # the loop's range: one more pass than micro-batches (a dummy pass)
        guard.armed = True
        return value + 1

    reduce = StepMetrics.reduce

    def reduce_once(self, *args, **kwargs):
        guard.armed = False
        reductions.append(1)
        return reduce(self, *args, **kwargs)

    monkeypatch.setattr("real_lightning.step.accumulate.all_reduce_max", start_loop)
    monkeypatch.setattr(StepMetrics, "reduce", reduce_once)
    for name in ("cpu", "tolist", "numpy", "item"):  # copies to the host that do not all dispatch an operator
        monkeypatch.setattr(torch.Tensor, name, _recorded(guard, name, getattr(torch.Tensor, name)))
    with guard:
        result = _accumulate(
            module,
            batch,
            (None, 4),
            loss_fn=outside(options.pop("loss_fn", LOSSES["grpo"])),
            logprobs_fn=outside(module.response_logprobs),
            backward=outside(lambda value: value.backward()),
            **options,
        )
    return guard, reductions, result


def test_the_micro_batch_loop_copies_nothing_to_the_host(module64, monkeypatch) -> None:
    """Between the loop's first pass and the step's one reduction, the step's own code reads no tensor back
    (no sync per micro-batch): importance sampling, the KL term, the mismatch, a non-finite loss and a dummy pass
    included. The check is not blind: a ``float()`` or ``.cpu()`` of a micro-batch's tensor in the loop is caught."""
    batch = _rollouts(module64.policy.config.vocab_size)
    old = old_logprobs_pass(module64.response_logprobs, batch, (None, None), torch.device("cpu"))
    batch.old_logprobs = old
    batch.behaviour_logprobs = (old - 0.1).where(batch.response_mask, torch.zeros(()))
    batch.ref_logprobs = old - 0.2
    calls = []

    def nan_on_the_second(**kwargs):
        out = LOSSES["grpo"](**kwargs)
        calls.append(1)
        out.loss = out.loss * (float("nan") if len(calls) == 2 else 1.0)
        return out

    options = {"importance_sampling": ImportanceSampling("token", 1.05), "kl": KLPenalty(0.1)}
    guard, reductions, result = _guarded_step(module64, batch, monkeypatch, loss_fn=nan_on_the_second, **options)
    assert guard.reads == [], "\n".join(guard.reads)
    assert reductions == [1] and len(calls) == len(batch.micro_batches(None, 4)) > 2 and result.skipped
    assert {"rollout/is_weight_mean", "rollout/mismatch_abs_max", "train/kl_ref"} <= result.metrics.keys()

    from real_lightning.step import accumulate

    def reads_back(old, behaviour, mask):
        gap = mismatch(old, behaviour, mask)
        float(gap.abs_max), gap.tokens.cpu()  # what the loop must not do
        return gap

    monkeypatch.setattr(accumulate, "mismatch", reads_back)
    guard, _, _ = _guarded_step(module64, batch, monkeypatch)
    assert len(guard.reads) == 2 * len(calls), "\n".join(guard.reads)


def test_backward_if_finite_is_the_plain_backward_or_zero(module64) -> None:
    """The gradient of a finite loss is bit for bit ``backward(loss · scale)``'s; a NaN loss back-propagates zeros."""
    batch = _rollouts(module64.policy.config.vocab_size).select(torch.arange(6))
    batch.old_logprobs = old_logprobs_pass(module64.response_logprobs, batch, (None, None), torch.device("cpu")) - 0.1

    def grads(scale_nan: float, plain: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        module64.policy.zero_grad(set_to_none=True)
        logprobs, _ = module64.response_logprobs(batch)
        loss = LOSSES["grpo"](
            logprobs=logprobs, old_logprobs=batch.old_logprobs, response_mask=batch.response_mask,
            rewards=batch.rewards, group_ids=batch.group_ids,
        ).loss * scale_nan  # fmt: skip
        finite = None
        if plain:
            (loss * 3).backward()
        else:
            finite = backward_if_finite(loss, logprobs, lambda value: value.backward(), scale=3)
        return torch.cat([p.grad.flatten() for p in module64.policy.parameters()]), finite

    plain, _ = grads(1.0, plain=True)
    gated, finite = grads(1.0, plain=False)
    assert plain.abs().sum() > 0 and torch.equal(gated, plain) and bool(finite)
    assert torch.equal(gated.view(torch.int64), plain.view(torch.int64))  # the signs of zeros too
    zero, finite = grads(float("nan"), plain=False)
    assert not bool(finite) and torch.equal(zero, torch.zeros_like(zero))


def test_step_counts_are_the_sum_of_the_micro_batches_counts() -> None:
    """The step's normalisers: every micro-batch's counts (whole groups) added up, [] float64 on the device."""
    batch = _rollouts(64)
    counts = step_counts(batch, torch.device("cpu"))
    parts = sum(BatchCounts.of(m.response_mask, m.rewards, m.group_ids) for m in batch.micro_batches(None, 4))
    assert torch.equal(counts.as_tensor(), parts.as_tensor())
    assert counts.groups == 13 and counts.sequences == len(batch) and counts.tokens == batch.response_mask.sum()
    units = {k: v for k, v in vars(counts).items() if k != "extra"}
    assert counts.extra == {} and all(v.dtype == torch.float64 and v.dim() == 0 for v in units.values())
