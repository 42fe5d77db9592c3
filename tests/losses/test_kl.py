"""The KL penalty to a reference policy against formulas written here: value and gradient, k1/k2/k3, the clamp,
zero at π_θ = π_ref, additivity over micro-batches; and in a whole optimizer step."""

from __future__ import annotations

import math

import pytest
import torch

from real_lightning.losses import LOSSES
from real_lightning.losses.common import BatchCounts
from real_lightning.losses.kl import KLPenalty, kl_penalty
from real_lightning.module import RealPolicyModule
from real_lightning.step.accumulate import accumulate_step, old_logprobs_pass
from tests.test_update import _rollouts


def _reference_value(logprobs, ref, mask, estimator: str, clamp: float) -> float:
    """Token mean, one token at a time, in Python floats."""
    total, tokens = 0.0, 0
    for i in range(logprobs.shape[0]):
        for t in range(logprobs.shape[1]):
            if not mask[i, t]:
                continue
            x = float(logprobs[i, t]) - float(ref[i, t])
            if estimator == "k1":
                k = x
            elif estimator == "k2":
                k = x * x / 2
            else:
                k = min(max(math.exp(-x) - 1 + x, -clamp), clamp)
            total, tokens = total + k, tokens + 1
    return total / tokens


def _reference_grad(logprobs, ref, mask, estimator: str, clamp: float) -> torch.Tensor:
    """d/d logprobs of the token mean: k1 → 1, k2 → x, k3 → 1 − e^{−x} (0 where the clamp binds); / tokens."""
    x = (logprobs - ref).double()
    if estimator == "k1":
        d = torch.ones_like(x)
    elif estimator == "k2":
        d = x
    else:
        k3 = torch.exp(-x) - 1 + x
        d = torch.where(k3.abs() < clamp, 1 - torch.exp(-x), torch.zeros_like(x))
    return torch.where(mask, d, torch.zeros_like(d)) / mask.sum()


def _data(seed: int = 0, extreme: bool = False):
    gen = torch.Generator().manual_seed(seed)
    logprobs = -torch.rand(5, 7, generator=gen, dtype=torch.float64) * 3
    ref = -torch.rand(5, 7, generator=gen, dtype=torch.float64) * 3
    if extreme:  # log-ratios of ±20: k3 = e^{20} − 21 is clamped; e^{−20} − 1 − 20 too
        ref[0, :3], ref[1, :3] = logprobs[0, :3] + 20, logprobs[1, :3] - 20
    mask = torch.rand(5, 7, generator=gen) < 0.7
    mask[:, 0] = True
    return logprobs, ref, mask


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
@pytest.mark.parametrize("extreme", [False, True])
def test_value_and_gradient_match_the_formulas(estimator: str, extreme: bool) -> None:
    logprobs, ref, mask = _data(extreme=extreme)
    lp = logprobs.clone().requires_grad_(True)
    value = kl_penalty(lp, ref, mask, estimator=estimator, clamp=10.0)
    value.backward()
    expected = _reference_value(logprobs, ref, mask, estimator, 10.0)
    assert float(value.detach()) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    torch.testing.assert_close(lp.grad, _reference_grad(logprobs, ref, mask, estimator, 10.0), rtol=1e-10, atol=1e-12)
    if extreme and estimator == "k3":
        assert lp.grad[0, :3].abs().max() == 0 and lp.grad[1, :3].abs().max() == 0  # clamped: no gradient


def test_zero_when_the_policy_is_the_reference() -> None:
    logprobs, _, mask = _data()
    for estimator in ("k1", "k2", "k3"):
        lp = logprobs.clone().requires_grad_(True)
        value = kl_penalty(lp, logprobs, mask, estimator=estimator)
        value.backward()
        assert float(value) == 0.0
        if estimator != "k1":  # k1's gradient is 1 per token whatever the policy
            assert lp.grad.abs().max() == 0


def test_micro_batches_add_up_to_the_step_with_counts() -> None:
    logprobs, ref, mask = _data(seed=3)
    whole = kl_penalty(logprobs, ref, mask, estimator="k3")
    counts = BatchCounts.of(mask, torch.zeros(5), torch.arange(5))
    parts = sum(kl_penalty(logprobs[r], ref[r], mask[r], estimator="k3", counts=counts) for r in ([0, 1], [2, 3, 4]))
    assert float(parts) == pytest.approx(float(whole), rel=1e-12)


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="kl_estimator must be one of k1, k2, k3"):
        KLPenalty(0.1, "k4")
    with pytest.raises(ValueError, match="kl_coef must be >= 0"):
        KLPenalty(-1.0)


def test_the_step_term_is_the_penalty_with_the_options_and_needs_reference_logprobs() -> None:
    """KLPenalty.penalty (the KL term of a micro-batch, before β) is kl_penalty with its estimator and clamp, over
    the step's tokens; rollouts without reference log-probs are an error."""
    gen = torch.Generator().manual_seed(3)
    logprobs = (torch.randn(3, 4, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    ref = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    mask = torch.rand(3, 4, generator=gen) > 0.3
    counts = BatchCounts(groups=1, contrast_rollouts=0, sequences=3, tokens=20)
    for options in (KLPenalty(0.5, "k3", clamp=1.0), KLPenalty(0.1, "k2"), KLPenalty(2.0, "k1")):
        term = options.penalty(logprobs, ref, mask, counts)
        expected = kl_penalty(logprobs, ref, mask, estimator=options.estimator, clamp=options.clamp, counts=counts)
        assert torch.equal(term, expected) and term.requires_grad
        tokens = int(mask.sum())
        value = _reference_value(logprobs.detach(), ref, mask, options.estimator, options.clamp) * tokens / 20
        assert float(term) == pytest.approx(value, rel=1e-12)
    with pytest.raises(ValueError, match="no reference log-probs"):
        KLPenalty(0.5).penalty(logprobs, None, mask, counts)


def test_a_step_with_kl_is_the_policy_loss_plus_beta_kl_in_any_split(policy_dir) -> None:
    """accumulate_step with β > 0: the gradient of (REAL loss + β·KL) of the whole mini-batch, the same in
    micro-batches; train/kl_ref is the token mean of k3; without reference log-probs it is an error."""
    module = RealPolicyModule(pretrained=policy_dir, dtype="float64")
    batch = _rollouts(module.policy.config.vocab_size)
    device = torch.device("cpu")
    old = old_logprobs_pass(module.response_logprobs, batch, (None, None), device)
    batch.old_logprobs = old + 0.05 * torch.randn(old.shape, generator=torch.Generator().manual_seed(1)).double()
    batch.ref_logprobs = old - 0.3 * batch.response_mask
    kl = KLPenalty(0.5, "k3")
    grads, logged = [], []
    for budget in ((None, None), (None, 5)):
        module.policy.zero_grad(set_to_none=True)
        result = accumulate_step(
            batch, budget, logprobs_fn=module.response_logprobs, loss_fn=LOSSES["real"], loss_kwargs={},
            backward=lambda v: v.backward(), device=device, world_size=1, kl=kl,
        )  # fmt: skip
        grads.append(torch.cat([p.grad.flatten() for p in module.policy.parameters()]))
        logged.append(float(result.metrics["train/kl_ref"]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-9, atol=1e-12)
    module.policy.zero_grad(set_to_none=True)
    logprobs, _ = module.response_logprobs(batch)
    expected = LOSSES["real"](
        logprobs=logprobs, old_logprobs=batch.old_logprobs, response_mask=batch.response_mask,
        rewards=batch.rewards, group_ids=batch.group_ids,
    ).loss + 0.5 * kl_penalty(logprobs, batch.ref_logprobs, batch.response_mask, estimator="k3")  # fmt: skip
    expected.backward()
    torch.testing.assert_close(grads[0], torch.cat([p.grad.flatten() for p in module.policy.parameters()]))
    x = (logprobs.detach() - batch.ref_logprobs)[batch.response_mask]
    assert logged[0] == pytest.approx(float((torch.exp(-x) - 1 + x).mean()), rel=1e-6) == logged[1]
    batch.ref_logprobs = None
    with pytest.raises(ValueError, match="no reference log-probs"):
        accumulate_step(
            batch, (None, None), logprobs_fn=module.response_logprobs, loss_fn=LOSSES["real"], loss_kwargs={},
            backward=lambda v: v.backward(), device=device, world_size=1, kl=kl,
        )  # fmt: skip
