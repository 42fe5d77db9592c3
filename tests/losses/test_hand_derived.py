"""Small cases worked out by hand; each derivation is written next to its numbers."""

from __future__ import annotations

import math

import pytest
import torch

from real_lightning.losses import LOSSES


def _one_token(scores: list[float], rewards: list[float], group_ids: list[int]):
    """One response token per rollout and log π_old = 0, so s_i = logprobs[i, 0]."""
    s = torch.tensor(scores, dtype=torch.float64)[:, None].requires_grad_()
    return s, {
        "logprobs": s,
        "old_logprobs": torch.zeros_like(s),
        "response_mask": torch.ones_like(s),
        "rewards": torch.tensor(rewards, dtype=torch.float64),
        "group_ids": torch.tensor(group_ids),
    }


def test_real_one_positive_one_negative_at_zero() -> None:
    # s = (0, 0), τ = 0.5, one group (G = 1).
    # L = log(1 + e^{-0/τ}) + log(1 + e^{0/τ}) = 2 log 2.
    # ∂L/∂s_+ = −(1/τ)·e^0/(1 + e^0) = −2·1/2 = −1;   ∂L/∂s_− = +(1/τ)·1/2 = +1.
    s, kw = _one_token([0.0, 0.0], [1.0, 0.0], [0, 0])
    out = LOSSES["real"](**kw)
    assert out.loss.item() == pytest.approx(2 * math.log(2), rel=1e-15)
    (grad,) = torch.autograd.grad(out.loss, s)
    assert grad[:, 0].tolist() == pytest.approx([-1.0, 1.0], rel=1e-15)


def test_real_two_positives_and_a_second_group() -> None:
    # Group a: positives s = τ·ln 3 and 0, negative s = −τ·ln 2 (τ = 0.5).
    #   e^{−s/τ} for the positives: 1/3 and 1 → log(1 + 1/3 + 1) = log(7/3).
    #   e^{s/τ} for the negative: 1/2      → log(1 + 1/2)     = log(3/2).
    # Group b: all rewards 0 → no contrast, L_b = 0 but it counts in G = 2.
    # loss = (log(7/3) + log(3/2)) / 2 = log(7/2) / 2.
    # Weights of group a: −2·(1/3)/(7/3) = −2/7, −2·1/(7/3) = −6/7, +2·(1/2)/(3/2) = +2/3;
    # ∂loss/∂s = weight / G.
    tau = 0.5
    s, kw = _one_token([tau * math.log(3), 0.0, -tau * math.log(2), 1.0, -1.0], [1, 1, 0, 0, 0], [9, 9, 9, 4, 4])
    out = LOSSES["real"](**kw, tau=tau)
    assert out.loss.item() == pytest.approx(math.log(7 / 2) / 2, rel=1e-14)
    (grad,) = torch.autograd.grad(out.loss, s)
    expected_weights = [-2 / 7, -6 / 7, 2 / 3, 0.0, 0.0]
    assert (grad[:, 0] * 2).tolist() == pytest.approx(expected_weights, rel=1e-14, abs=1e-300)
    assert out.metrics["grad_weights"].tolist() == pytest.approx(expected_weights, rel=1e-14, abs=1e-300)
    assert out.metrics["contrast_fraction"].item() == 0.5
    # mean |weight|: positives (2/7 + 6/7)/2 = 4/7, negatives 2/3 (one negative with contrast)
    assert out.metrics["weight_abs_mean_pos"].item() == pytest.approx(4 / 7, rel=1e-14)
    assert out.metrics["weight_abs_mean_neg"].item() == pytest.approx(2 / 3, rel=1e-14)


def test_real_bce_at_zero_and_at_tau_ln3() -> None:
    # BCE with logit z = s/τ: ℓ = log(1 + e^z) − y·z, ∂ℓ/∂s = (σ(z) − y)/τ.
    # Rollouts: (s = 0, y = 1): ℓ = log 2, weight (1/2 − 1)/0.5 = −1.
    #           (s = τ ln 3, y = 0): z = ln 3, ℓ = log 4, σ = 3/4, weight (3/4)/0.5 = 3/2.
    # N_c = 2 → loss = (log 2 + log 4)/2 = (3/2) log 2.
    tau = 0.5
    s, kw = _one_token([0.0, tau * math.log(3)], [1, 0], [0, 0])
    out = LOSSES["real_bce"](**kw)
    assert out.loss.item() == pytest.approx(1.5 * math.log(2), rel=1e-15)
    (grad,) = torch.autograd.grad(out.loss, s)
    assert (grad[:, 0] * 2).tolist() == pytest.approx([-1.0, 1.5], rel=1e-14)


def test_real_product_two_by_two() -> None:
    # Positives s = (0, 0), negatives s = (0, τ ln 2), τ = 0.5:
    #   logsumexp_{O+}(−s/τ) = log 2, logsumexp_{O−}(s/τ) = log(1 + 2) = log 3 → u = log 6.
    #   L = softplus(log 6) = log 7; σ(u) = 6/7.
    # Weights: positives −(1/τ)(6/7)(1/2) = −6/7 each; negatives +(1/τ)(6/7)(1/3) = 4/7 and (1/τ)(6/7)(2/3) = 8/7.
    tau = 0.5
    s, kw = _one_token([0.0, 0.0, 0.0, tau * math.log(2)], [1, 1, 0, 0], [5, 5, 5, 5])
    out = LOSSES["real_product"](**kw)
    assert out.loss.item() == pytest.approx(math.log(7), rel=1e-15)
    (grad,) = torch.autograd.grad(out.loss, s)
    assert grad[:, 0].tolist() == pytest.approx([-6 / 7, -6 / 7, 4 / 7, 8 / 7], rel=1e-14)


def test_grpo_clip_by_hand() -> None:
    # One group, rewards (1, 0): mean 1/2, unbiased std sqrt(((1/2)² + (1/2)²)/1) = 1/√2,
    # A = ±(1/2)/(1/√2 + 1e-6) ≈ ±0.70710578.
    # Rollout 0 (A > 0), two tokens with log-ratio ln 1.5 (clipped at 1.2: gradient 0) and 0 (ρ = 1):
    #   token losses −1.2·A and −A, sequence loss −1.1·A.
    # Rollout 1 (A < 0), one token with log-ratio ln 0.5 (ρ = 0.5 < 0.8: clipped, gradient 0):
    #   min(0.5·A, 0.8·A) = 0.8·A for A < 0 → loss −0.8·A = +0.8|A|.
    # Batch loss = (−1.1·A + 0.8·A... with A₁ = −A₀): (−1.1·A₀ + 0.8·A₀)/2 = −0.15·A₀.
    # Gradients: rollout 0, token 1: −A₀·ρ/(2·2) = −A₀/4; all others 0.
    a0 = 0.5 / (1 / math.sqrt(2) + 1e-6)
    lp = torch.tensor([[math.log(1.5), 0.0], [math.log(0.5), 0.0]], dtype=torch.float64, requires_grad=True)
    out = LOSSES["grpo"](
        logprobs=lp,
        old_logprobs=torch.zeros(2, 2, dtype=torch.float64),
        response_mask=torch.tensor([[1, 1], [1, 0]]),
        rewards=torch.tensor([1.0, 0.0], dtype=torch.float64),
        group_ids=torch.tensor([0, 0]),
    )
    assert out.loss.item() == pytest.approx(-0.15 * a0, rel=1e-13)
    (grad,) = torch.autograd.grad(out.loss, lp)
    assert grad.flatten().tolist() == pytest.approx([0.0, -a0 / 4, 0.0, 0.0], rel=1e-13, abs=1e-300)
    # clipped tokens: 2 of the 3 response tokens (one high, one low)
    assert out.metrics["clip_fraction"].item() == pytest.approx(2 / 3, rel=1e-15)
    assert out.metrics["clip_fraction_high"].item() == pytest.approx(1 / 3, rel=1e-15)


def test_dapo_token_mean_weights_long_responses_more() -> None:
    # On-policy (ρ = 1), rewards (1, 0): A = ±a0. Rollout 0 has 3 tokens, rollout 1 has 1.
    # DAPO: loss = Σ_tokens(−A_i)/4 → ∂loss/∂lp = −A_i/4 per token; effective weight B·Σ_t = 2·(−3a0/4), 2·(a0/4).
    # GRPO: per-sequence mean → effective weights −a0 and +a0 whatever the lengths.
    a0 = 0.5 / (1 / math.sqrt(2) + 1e-6)
    kw = {
        "old_logprobs": torch.zeros(2, 3, dtype=torch.float64),
        "response_mask": torch.tensor([[1, 1, 1], [1, 0, 0]]),
        "rewards": torch.tensor([1.0, 0.0], dtype=torch.float64),
        "group_ids": torch.tensor([0, 0]),
    }
    lp = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    dapo = LOSSES["dapo"](logprobs=lp, **kw).metrics["grad_weights"]
    grpo = LOSSES["grpo"](logprobs=lp, **kw).metrics["grad_weights"]
    assert dapo.tolist() == pytest.approx([-1.5 * a0, 0.5 * a0], rel=1e-14)
    assert grpo.tolist() == pytest.approx([-a0, a0], rel=1e-14)


def test_gspo_sequence_ratio_by_hand() -> None:
    # Rewards (1, 0, 0): mean 1/3, std sqrt((4/9 + 1/9 + 1/9)/2) = 1/√3, A₀ = (2/3)/(1/√3 + 1e-6).
    # Rollout 0: token log-ratios (6e-4, 0) → s = 3e-4, ρ = e^{3e-4} < 1 + 4e-4: unclipped,
    #   weight −A₀·e^{3e-4}; rollout 1: s = −1e-3 → ρ < 1 − 3e-4 with A < 0: clipped, weight 0;
    # rollout 2: s = 0 → ρ = 1, weight −A₂ = +(1/3)/(1/√3 + 1e-6).
    std = 1 / math.sqrt(3) + 1e-6
    lp = torch.tensor([[6e-4, 0.0], [-1e-3, -1e-3], [0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    out = LOSSES["gspo"](
        logprobs=lp,
        old_logprobs=torch.zeros(3, 2, dtype=torch.float64),
        response_mask=torch.ones(3, 2),
        rewards=torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64),
        group_ids=torch.tensor([1, 1, 1]),
    )
    expected = [-(2 / 3) / std * math.exp(3e-4), 0.0, (1 / 3) / std]
    assert out.metrics["grad_weights"].tolist() == pytest.approx(expected, rel=1e-13, abs=1e-300)
    assert out.metrics["clip_fraction"].item() == pytest.approx(1 / 3, rel=1e-15)
    # loss = −(1/3)(A₀e^{3e-4} + (1 − 3e-4)·A₁ + A₂), A₁ = A₂ = −(1/3)/std
    a0, a1 = (2 / 3) / std, -(1 / 3) / std
    assert out.loss.item() == pytest.approx(-(a0 * math.exp(3e-4) + (1 - 3e-4) * a1 + a1) / 3, rel=1e-12)
