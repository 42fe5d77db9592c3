"""Chunked per-token log-probs and entropy: exactness, gradients, edge cases, memory, HF causal LMs."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from real_lightning.logprobs import sequence_logprobs, token_logprobs

TIGHT = {"rtol": 1e-12, "atol": 1e-12}
NEG_INF = -math.inf


def naive_logprobs(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    return torch.log_softmax(logits / temperature, -1).gather(-1, tokens[..., None])[..., 0]


def naive_entropy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    logp = torch.log_softmax(logits / temperature, -1)
    p = logp.exp()
    return -(p * torch.where(p > 0, logp, 0.0)).sum(-1)  # 0 · log 0 = 0 at masked entries


def make_inputs(
    batch: int, length: int, vocab: int, dtype: torch.dtype = torch.float64, seed: int = 0, scale: float = 3.0
) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, length, vocab, generator=gen, dtype=torch.float64) * scale).to(dtype)
    tokens = torch.randint(0, vocab, (batch, length), generator=gen)
    return logits, tokens


def value_and_grad(fn, logits: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    leaf = logits.detach().clone().requires_grad_()
    out = fn(leaf)
    (grad,) = torch.autograd.grad((out * weights).sum(), leaf)
    return out.detach(), grad


# --- exactness against log_softmax + gather -------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.9])
@pytest.mark.parametrize("chunk_size", [1, 4, 5, 7, 1000])
@pytest.mark.parametrize("shape", [(3, 10, 17), (1, 10, 17), (3, 1, 17), (1, 1, 5)])
def test_value_and_gradient_equal_naive_float64(shape, chunk_size: int, temperature: float) -> None:
    logits, tokens = make_inputs(*shape)
    weights = torch.randn(shape[:2], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ours = value_and_grad(
        lambda x: token_logprobs(x, tokens, temperature=temperature, chunk_size=chunk_size)[0], logits, weights
    )
    ref = value_and_grad(lambda x: naive_logprobs(x, tokens, temperature), logits, weights)
    assert ours[0].dtype == torch.float64 and ours[0].shape == shape[:2]
    torch.testing.assert_close(ours[0], ref[0], **TIGHT)
    torch.testing.assert_close(ours[1], ref[1], **TIGHT)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("chunk_size", [2, 3, 64])
def test_gradcheck(temperature: float, chunk_size: int) -> None:
    logits, tokens = make_inputs(2, 6, 9, scale=1.0)
    logits.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: token_logprobs(x, tokens, temperature=temperature, chunk_size=chunk_size)[0], (logits,)
    )


def test_gradcheck_with_masked_vocabulary() -> None:
    logits, tokens = make_inputs(2, 4, 8, scale=1.0)
    logits[..., 3] = NEG_INF
    tokens[tokens == 3] = 4
    logits.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: token_logprobs(x, tokens, temperature=0.8, chunk_size=3)[0], (logits,), check_undefined_grad=False
    )


@pytest.mark.parametrize("chunk_size", [1, 3, 256])
def test_float32_matches_naive(chunk_size: int) -> None:
    logits, tokens = make_inputs(4, 33, 301, dtype=torch.float32)
    weights = torch.randn(4, 33)
    ours = value_and_grad(
        lambda x: token_logprobs(x, tokens, temperature=0.7, chunk_size=chunk_size)[0], logits, weights
    )
    ref = value_and_grad(lambda x: naive_logprobs(x, tokens, 0.7), logits, weights)
    assert ours[0].dtype == torch.float32 and ours[1].dtype == torch.float32
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[1], ref[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_low_precision_logits_give_float32_results(dtype: torch.dtype, temperature: float) -> None:
    logits, tokens = make_inputs(3, 12, 50, dtype=dtype)
    weights = torch.randn(3, 12)
    ours = value_and_grad(
        lambda x: token_logprobs(x, tokens, temperature=temperature, chunk_size=5)[0], logits, weights
    )
    # reference: the same (rounded) logits upcast to float32 first
    ref = value_and_grad(lambda x: naive_logprobs(x.float(), tokens, temperature), logits, weights)
    assert ours[0].dtype == torch.float32
    assert ours[1].dtype == dtype  # the gradient has the dtype of the logits
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-5, atol=1e-5)  # same float32 math on the same values
    torch.testing.assert_close(ours[1].float(), ref[1].float(), rtol=1.6e-2, atol=2e-3)  # one rounding to dtype
    _, entropy = token_logprobs(logits, tokens, temperature=temperature, with_entropy=True)
    assert entropy.dtype == torch.float32
    torch.testing.assert_close(entropy, naive_entropy(logits.float(), temperature), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_masked_vocabulary_gives_finite_results_and_zero_gradient_there(dtype: torch.dtype, temperature: float) -> None:
    logits, tokens = make_inputs(3, 9, 20)
    masked = torch.zeros(20, dtype=torch.bool)
    masked[[0, 5, 6, 19]] = True
    logits[..., masked] = NEG_INF
    logits = logits.to(dtype)
    tokens = torch.where(masked[tokens], 7, tokens)
    weights = torch.randn(3, 9, dtype=torch.float64)
    ours = value_and_grad(
        lambda x: token_logprobs(x, tokens, temperature=temperature, chunk_size=4)[0], logits, weights
    )
    ref = value_and_grad(lambda x: naive_logprobs(x.double(), tokens, temperature), logits, weights)
    assert torch.isfinite(ours[0]).all() and torch.isfinite(ours[1]).all()
    assert (ours[1][..., masked] == 0).all()
    tol = TIGHT if dtype == torch.float64 else {"rtol": 1.6e-2, "atol": 1e-5}
    torch.testing.assert_close(ours[0].double(), ref[0], **tol)
    torch.testing.assert_close(ours[1].double(), ref[1].to(dtype).double(), **tol)
    _, entropy = token_logprobs(logits, tokens, temperature=temperature, chunk_size=4, with_entropy=True)
    assert torch.isfinite(entropy).all()
    torch.testing.assert_close(entropy.double(), naive_entropy(logits.double(), temperature), **tol)


def test_chosen_masked_token_gives_minus_inf() -> None:
    logits, tokens = make_inputs(1, 3, 6)
    logits[0, 1, tokens[0, 1]] = NEG_INF
    lp, _ = token_logprobs(logits, tokens)
    assert lp[0, 1] == NEG_INF and torch.isfinite(lp[0, [0, 2]]).all()


def test_non_contiguous_logits_are_read_in_place() -> None:
    """A slice [:, :-1] of bigger logits and a [T, B, V] layout seen as [B, T, V] (neither flattens to rows)."""
    big, tokens_big = make_inputs(3, 9, 13)
    weights = torch.randn(3, 8, dtype=torch.float64)
    tokens = tokens_big[:, :-1]
    ours = value_and_grad(lambda x: token_logprobs(x[:, :-1], tokens, temperature=0.9, chunk_size=3)[0], big, weights)
    ref = value_and_grad(lambda x: naive_logprobs(x[:, :-1], tokens, 0.9), big, weights)
    torch.testing.assert_close(ours[0], ref[0], **TIGHT)
    torch.testing.assert_close(ours[1], ref[1], **TIGHT)

    tbv, _ = make_inputs(9, 3, 13)  # [T, B, V]
    weights = torch.randn(3, 9, dtype=torch.float64)
    ours = value_and_grad(
        lambda x: token_logprobs(x.transpose(0, 1), tokens_big, chunk_size=4, with_entropy=True)[0], tbv, weights
    )
    ref = value_and_grad(lambda x: naive_logprobs(x.transpose(0, 1), tokens_big), tbv, weights)
    torch.testing.assert_close(ours[0], ref[0], **TIGHT)
    torch.testing.assert_close(ours[1], ref[1], **TIGHT)


def test_empty_sequence() -> None:
    logits = torch.zeros(2, 0, 7, requires_grad=True)
    lp, entropy = token_logprobs(logits, torch.zeros(2, 0, dtype=torch.long), with_entropy=True)
    assert lp.shape == entropy.shape == (2, 0)
    lp.sum().backward()
    assert logits.grad.shape == (2, 0, 7)


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3),
    length=st.integers(1, 9),
    vocab=st.integers(1, 12),
    chunk_size=st.integers(1, 12),
    temperature=st.floats(0.05, 5.0),
    seed=st.integers(0, 2**16),
)
def test_property_matches_naive(batch, length, vocab, chunk_size, temperature, seed) -> None:
    logits, tokens = make_inputs(batch, length, vocab, seed=seed)
    weights = torch.randn(batch, length, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    ours = value_and_grad(
        lambda x: token_logprobs(x, tokens, temperature=temperature, chunk_size=chunk_size)[0], logits, weights
    )
    ref = value_and_grad(lambda x: naive_logprobs(x, tokens, temperature), logits, weights)
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-12, atol=1e-11)
    torch.testing.assert_close(ours[1], ref[1], rtol=1e-12, atol=1e-11)
    _, entropy = token_logprobs(logits, tokens, temperature=temperature, chunk_size=chunk_size, with_entropy=True)
    torch.testing.assert_close(entropy, naive_entropy(logits, temperature), rtol=1e-12, atol=1e-11)


# --- entropy ----------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.4, 2.5])
@pytest.mark.parametrize("chunk_size", [1, 6, 256])
def test_entropy_equals_naive(temperature: float, chunk_size: int) -> None:
    logits, tokens = make_inputs(3, 11, 40, scale=5.0)
    lp, entropy = token_logprobs(logits, tokens, temperature=temperature, chunk_size=chunk_size, with_entropy=True)
    torch.testing.assert_close(entropy, naive_entropy(logits, temperature), **TIGHT)
    torch.testing.assert_close(lp, naive_logprobs(logits, tokens, temperature), **TIGHT)


def test_entropy_is_accurate_for_peaked_float32_distributions() -> None:
    """Large logits, tiny entropy: no cancellation between log Z and Σ p·logit."""
    logits, tokens = make_inputs(2, 8, 1000, dtype=torch.float64, scale=1.0)
    logits[..., 0] += 12.0  # p(token 0) ≈ 0.99, entropy ≈ 0.02 … 1
    logits += 40.0  # log Z ≈ Σ p·logit ≈ 52: their difference would lose ~5 digits in float32
    _, entropy = token_logprobs(logits.float(), tokens, with_entropy=True)
    ref = naive_entropy(logits)
    assert ref.mean() < 0.5
    torch.testing.assert_close(entropy.double(), ref, rtol=1e-5, atol=0)


def test_entropy_is_detached_and_optional() -> None:
    logits, tokens = make_inputs(2, 5, 9)
    logits.requires_grad_()
    lp, entropy = token_logprobs(logits, tokens, with_entropy=True)
    assert lp.requires_grad and not entropy.requires_grad and entropy.grad_fn is None
    assert token_logprobs(logits, tokens)[1] is None
    (lp.sum() + entropy.sum()).backward()  # the entropy contributes no gradient
    ref = value_and_grad(lambda x: naive_logprobs(x, tokens), logits, torch.ones(2, 5, dtype=torch.float64))
    torch.testing.assert_close(logits.grad, ref[1], **TIGHT)


def test_works_without_grad() -> None:
    logits, tokens = make_inputs(2, 5, 9)
    with torch.inference_mode():
        lp, entropy = token_logprobs(logits, tokens, temperature=0.5, with_entropy=True)
    torch.testing.assert_close(lp, naive_logprobs(logits, tokens, 0.5), **TIGHT)
    torch.testing.assert_close(entropy, naive_entropy(logits, 0.5), **TIGHT)


# --- argument errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"logits": torch.zeros(4, 7)}, "logits must be"),
        ({"logits": torch.zeros(2, 4, 7, dtype=torch.long)}, "logits must be floating"),
        ({"logits": torch.zeros(2, 4, 0)}, "logits must have a non-empty"),
        ({"tokens": torch.zeros(2, 5, dtype=torch.long)}, "tokens must be"),
        ({"tokens": torch.zeros(4, 2, dtype=torch.long)}, "tokens must be"),
        ({"tokens": torch.zeros(2, 4)}, "tokens must be an integer"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"chunk_size": -2}, "chunk_size"),
        ({"chunk_size": 2.5}, "chunk_size"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs: dict, match: str) -> None:
    args = {"logits": torch.zeros(2, 4, 7), "tokens": torch.zeros(2, 4, dtype=torch.long)} | kwargs
    logits, tokens = args.pop("logits"), args.pop("tokens")
    with pytest.raises(ValueError, match=match):
        token_logprobs(logits, tokens, **args)


# --- memory -----------------------------------------------------------------------------------


def test_autograd_saves_only_the_logits_themselves() -> None:
    batch, length, vocab = 3, 10, 31
    logits = torch.randn(batch, length, vocab, requires_grad=True)
    tokens = torch.randint(0, vocab, (batch, length))
    saved: list[Tensor] = []

    def pack(t: Tensor) -> Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lp, _ = token_logprobs(logits, tokens, temperature=0.7, chunk_size=4, with_entropy=True)
        lp.sum().backward()
    assert saved, "the hook saw nothing: the test would pass vacuously"
    assert max(t.numel() for t in saved) <= logits.numel()
    full = [t for t in saved if t.numel() == logits.numel()]
    assert len(full) == 1
    assert full[0].data_ptr() == logits.data_ptr()  # the logits themselves, not a copy
    assert sum(t.numel() for t in saved) == logits.numel() + 2 * batch * length  # + tokens + logsumexp


class _RecordAllocations(TorchDispatchMode):
    """Numel of every tensor an aten op returns in new memory (views and in-place results are skipped)."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)}
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.sizes.append((str(func), t.numel()))
        return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_no_full_size_temporaries(dtype: torch.dtype, temperature: float) -> None:
    """Forward: every op result is at most a [chunk, V] block; backward: one [B, T, V] tensor, the gradient."""
    batch, length, vocab, chunk = 4, 32, 101, 8
    logits = torch.randn(batch, length, vocab, dtype=dtype, requires_grad=True)
    tokens = torch.randint(0, vocab, (batch, length))
    with _RecordAllocations() as forward:
        lp, _ = token_logprobs(logits, tokens, temperature=temperature, chunk_size=chunk, with_entropy=True)
        loss = lp.sum()
    assert max(n for _, n in forward.sizes) <= chunk * vocab
    with _RecordAllocations() as backward:
        loss.backward()
    big = [(op, n) for op, n in backward.sizes if n > chunk * vocab]
    assert len(big) == 1 and big[0][1] == logits.numel(), big
    assert logits.grad.dtype == dtype


# --- sequence_logprobs on a tiny Hugging Face model --------------------------------------------

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def tiny_qwen(request):
    config = transformers.Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM._from_config(config, attn_implementation=request.param)
    return model.eval()


def _left_padded_batch(prompts: list[Tensor], responses: list[Tensor], pad: int = 0) -> tuple[Tensor, Tensor, int]:
    """[left-padded prompt | right-padded response] rows, and the prompt length P."""
    p_len = max(len(p) for p in prompts)
    r_len = max(len(r) for r in responses)
    ids, mask = [], []
    for p, r in zip(prompts, responses, strict=True):
        left, right = p_len - len(p), r_len - len(r)
        ids.append(torch.cat([torch.full((left,), pad), p, r, torch.full((right,), pad)]))
        mask.append(torch.cat([torch.zeros(left), torch.ones(len(p) + len(r)), torch.zeros(right)]))
    return torch.stack(ids), torch.stack(mask).long(), p_len


def _batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(1, 64, (n,), generator=gen) for n in (3, 7, 5)]
    responses = [torch.randint(1, 64, (n,), generator=gen) for n in (6, 4, 6)]
    return prompts, responses


def _naive_sequence(model, input_ids, attention_mask, response_start, temperature=1.0):
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    logp = torch.log_softmax(logits[:, response_start - 1 : -1] / temperature, -1)
    return logp.gather(-1, input_ids[:, response_start:, None])[..., 0], naive_entropy(
        logits[:, response_start - 1 : -1], temperature
    )


def test_sequence_logprobs_matches_full_log_softmax(tiny_qwen) -> None:
    ids, mask, start = _left_padded_batch(*_batch())
    lp, entropy = sequence_logprobs(tiny_qwen, ids, mask, start, temperature=0.8, chunk_size=5, with_entropy=True)
    ref_lp, ref_entropy = _naive_sequence(tiny_qwen, ids, mask, start, temperature=0.8)
    assert lp.shape == entropy.shape == (3, ids.shape[1] - start)
    torch.testing.assert_close(lp, ref_lp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy, ref_entropy, rtol=1e-5, atol=1e-5)
    assert sequence_logprobs(tiny_qwen, ids, mask, start)[1] is None


def test_sequence_logprobs_do_not_depend_on_left_padding(tiny_qwen) -> None:
    prompts, responses = _batch(1)
    ids, mask, start = _left_padded_batch(prompts, responses)
    lp, entropy = sequence_logprobs(tiny_qwen, ids, mask, start, with_entropy=True)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        alone = torch.cat([p, r])[None]
        lp1, entropy1 = sequence_logprobs(tiny_qwen, alone, torch.ones_like(alone), len(p), with_entropy=True)
        n = len(r)  # the response's real tokens (the rest is right padding)
        torch.testing.assert_close(lp[i, :n], lp1[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(entropy[i, :n], entropy1[0], rtol=0, atol=1e-5)
    # more left padding on the same rows
    extra = torch.zeros(ids.shape[0], 4, dtype=torch.long)
    lp_more = sequence_logprobs(tiny_qwen, torch.cat([extra, ids], 1), torch.cat([extra, mask], 1), start + 4)[0]
    torch.testing.assert_close(lp_more, lp, rtol=0, atol=1e-5)


def test_sequence_logprobs_computes_only_needed_logits(tiny_qwen) -> None:
    ids, mask, start = _left_padded_batch(*_batch())
    shapes: list[tuple[int, ...]] = []
    handle = tiny_qwen.lm_head.register_forward_hook(lambda mod, args, out: shapes.append(tuple(out.shape)))
    try:
        sequence_logprobs(tiny_qwen, ids, mask, start)
    finally:
        handle.remove()
    # logits_to_keep = R + 1: positions P − 1 … L − 1 (the last one is scored against a dummy and dropped)
    assert shapes == [(3, ids.shape[1] - start + 1, 64)]


class _NoLogitsToKeep(torch.nn.Module):
    """A causal LM whose forward does not accept logits_to_keep: full logits come back."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None):
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=use_cache
        )


class _KwargsWrapper(torch.nn.Module):
    """A ``forward(**kwargs)`` wrapper (as DDP/PEFT-style wrappers are): logits_to_keep support is unknown."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, **kwargs):
        return self.model(**kwargs)


def test_sequence_logprobs_gradient_and_full_logits_fallback(tiny_qwen) -> None:
    ids, mask, start = _left_padded_batch(*_batch(2))
    weights = torch.randn(ids.shape[0], ids.shape[1] - start, generator=torch.Generator().manual_seed(3))
    params = [p for p in tiny_qwen.parameters() if p.requires_grad]
    grads = []
    models = (
        tiny_qwen,
        _NoLogitsToKeep(tiny_qwen),
        _KwargsWrapper(tiny_qwen),
        _KwargsWrapper(_NoLogitsToKeep(tiny_qwen)),
    )
    for model in models:
        lp, _ = sequence_logprobs(model, ids, mask, start, temperature=1.2)
        grads.append((lp.detach(), torch.autograd.grad((lp * weights).sum(), params)))
    ref_lp, _ = _naive_sequence(tiny_qwen, ids, mask, start, temperature=1.2)
    ref_grads = torch.autograd.grad((ref_lp * weights).sum(), params)
    for lp, g in grads:
        torch.testing.assert_close(lp, ref_lp.detach(), rtol=1e-5, atol=1e-5)
        for a, b in zip(g, ref_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_sequence_logprobs_edge_cases_and_errors(tiny_qwen) -> None:
    ids = torch.randint(1, 64, (2, 6))
    mask = torch.ones_like(ids)
    lp, entropy = sequence_logprobs(tiny_qwen, ids, mask, 6, with_entropy=True)  # empty response
    assert lp.shape == entropy.shape == (2, 0)
    lp = sequence_logprobs(tiny_qwen, ids, mask, 1)[0]  # response_start = 1: every position but the first
    torch.testing.assert_close(lp, _naive_sequence(tiny_qwen, ids, mask, 1)[0], rtol=1e-5, atol=1e-5)
    for bad in (0, 7, -1):
        with pytest.raises(ValueError, match="response_start"):
            sequence_logprobs(tiny_qwen, ids, mask, bad)
    with pytest.raises(ValueError, match="attention_mask"):
        sequence_logprobs(tiny_qwen, ids, mask[:, :-1], 3)
    with pytest.raises(ValueError, match="input_ids"):
        sequence_logprobs(tiny_qwen, ids[0], mask[0], 3)
