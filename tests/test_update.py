"""One optimizer step as micro-batches: the gradient does not depend on the split (float64, every loss)."""

from __future__ import annotations

import pytest
import torch

from real_lightning.losses import LOSSES
from real_lightning.module import RealPolicyModule
from real_lightning.step.accumulate import accumulate_step, old_logprobs_pass
from tests.rollout.test_batch import make_rollouts

LOSS_NAMES = sorted(LOSSES)


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


def _accumulate(module: RealPolicyModule, batch, budget, loss_fn=LOSSES["real"], logprobs_fn=None, **options):
    """One step of ``batch`` on one CPU process with plain backward (options: importance_sampling, ...)."""
    return accumulate_step(
        batch,
        budget,
        logprobs_fn=logprobs_fn or module.response_logprobs,
        loss_fn=loss_fn,
        loss_kwargs={},
        backward=lambda value: value.backward(),
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
    monkeypatch.setattr(
        "real_lightning.step.accumulate.all_reduce", lambda t, op="sum": sent.append(t.clone()) or t.clone()
    )
    busy = _accumulate(module64, batch, budget, loss_fn=LOSSES["grpo"])
    micro_batches = len(batch.micro_batches(*budget))
    assert "train/ppo_kl" in busy.metrics and "train/clip_fraction" in busy.metrics and micro_batches > 1

    calls = iter(sent)  # the idle rank's collectives meet the busy rank's, in the same order

    def with_busy(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        other = next(calls).to(t.dtype)
        return t + other if op == "sum" else torch.maximum(t, other)

    monkeypatch.setattr("real_lightning.step.accumulate.all_reduce", with_busy)
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
    from real_lightning.step.accumulate import ImportanceSampling

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
