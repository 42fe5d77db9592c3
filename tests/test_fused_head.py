"""The fused LM head + log-softmax: same values and gradients as the plain logits path, without [N, V] logits."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from real_lightning.logprobs import sequence_logprobs
from real_lightning.logprobs.fused_head import check_fusable, linear_token_logprobs


def _reference(hidden, weight, bias, tokens, temperature):
    """Written out independently: log-softmax of the full logits, gathered; entropy of the full softmax."""
    logits = hidden.double() @ weight.double().T + (bias.double() if bias is not None else 0.0)
    logp = torch.log_softmax(logits / temperature, -1)
    entropy = -(logp.exp() * logp).sum(-1)
    return logp.gather(-1, tokens[:, None])[:, 0], entropy


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("chunk_size", [1, 5, 64])
def test_value_and_gradient_against_full_logits(with_bias, temperature, chunk_size) -> None:
    torch.manual_seed(0)
    rows, hidden_size, vocab = 23, 8, 37
    hidden = torch.randn(rows, hidden_size, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(vocab, hidden_size, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(vocab, dtype=torch.float64, requires_grad=True) if with_bias else None
    tokens = torch.randint(0, vocab, (rows,))
    upstream = torch.randn(rows, dtype=torch.float64)
    lp, ent = linear_token_logprobs(
        hidden, weight, bias, tokens, temperature=temperature, chunk_size=chunk_size, with_entropy=True
    )
    grads = torch.autograd.grad((lp * upstream).sum(), [hidden, weight, *([bias] if with_bias else [])])
    ref_lp, ref_ent = _reference(hidden, weight, bias, tokens, temperature)
    ref_grads = torch.autograd.grad((ref_lp * upstream).sum(), [hidden, weight, *([bias] if with_bias else [])])
    torch.testing.assert_close(lp, ref_lp, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ent, ref_ent.detach(), rtol=1e-12, atol=1e-12)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_extreme_logits_stay_finite() -> None:
    hidden = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    weight = torch.tensor([[500.0, 0.0], [-500.0, 0.0], [0.0, 300.0]], dtype=torch.float64, requires_grad=True)
    tokens = torch.tensor([1, 2])
    lp, _ = linear_token_logprobs(hidden, weight, None, tokens)
    lp.sum().backward()
    ref, _ = _reference(hidden, weight, None, tokens, 1.0)
    torch.testing.assert_close(lp, ref)
    assert torch.isfinite(hidden.grad).all() and torch.isfinite(weight.grad).all()


def test_bfloat16_matches_what_the_plain_path_computes_from_bf16_logits() -> None:
    """bf16 weights: logits are rounded to bf16 as nn.Linear would produce them, the math runs in float32."""
    torch.manual_seed(1)
    hidden = torch.randn(40, 16).bfloat16().requires_grad_()
    weight = torch.randn(50, 16).bfloat16().requires_grad_()
    tokens = torch.randint(0, 50, (40,))
    lp, _ = linear_token_logprobs(hidden, weight, None, tokens, chunk_size=16)
    lp.sum().backward()
    plain_h, plain_w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    logits = torch.nn.functional.linear(plain_h, plain_w).float()
    ref = torch.log_softmax(logits, -1).gather(-1, tokens[:, None])[:, 0]
    ref.sum().backward()
    assert lp.dtype == torch.float32 and weight.grad.dtype == torch.bfloat16
    torch.testing.assert_close(lp, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(hidden.grad.float(), plain_h.grad.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(weight.grad.float(), plain_w.grad.float(), rtol=2e-2, atol=2e-2)


def _policy(tie: bool) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=64, tie_word_embeddings=tie, pad_token_id=0,
    )  # fmt: skip
    return Qwen2ForCausalLM(config).double()


@pytest.mark.parametrize("tie", [True, False])
def test_sequence_logprobs_fused_equals_plain_in_value_and_every_parameter_gradient(tie) -> None:
    policy = _policy(tie)
    torch.manual_seed(2)
    ids = torch.randint(1, 61, (6, 15))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    mask[3, -4:] = 0  # response padding
    upstream = torch.randn(6, 9, dtype=torch.float64)
    out = {}
    for fused in (False, True):
        policy.zero_grad(set_to_none=True)
        lp, ent = sequence_logprobs(
            policy, ids, mask, 6, temperature=0.7, chunk_size=4, with_entropy=True, fused_head=fused
        )
        (lp * upstream).sum().backward()
        out[fused] = (lp.detach(), ent, {n: p.grad.clone() for n, p in policy.named_parameters()})
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[True][1], out[False][1], rtol=1e-12, atol=1e-12)
    for name, grad in out[False][2].items():
        torch.testing.assert_close(out[True][2][name], grad, rtol=1e-9, atol=1e-12, msg=name)
    assert "forward" not in vars(policy.lm_head)  # the head's own forward is back


def test_fused_head_refuses_models_that_transform_their_logits() -> None:
    policy = _policy(True)
    policy.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        check_fusable(policy)
    with pytest.raises(ValueError, match=r"nn\.Linear"):
        check_fusable(torch.nn.Linear(2, 2))
