"""Log-probs of chosen tokens straight from the last hidden states: the LM head fused with the log-softmax.

The plain path (:func:`real_lightning.logprobs.token_logprobs`) needs the [B, T, V] logits, which the
model's ``lm_head`` writes, and in the backward their [B, T, V] gradient: for Qwen's V = 151,936 these two
are most of an RL step's memory (8 × 8,193 positions in bf16: 2 × 19.9 GB). :func:`linear_token_logprobs`
walks the positions in chunks instead and keeps only [chunk, V] blocks:

- forward: per chunk, ``logits = h W^T (+ b)``, then its logsumexp, the chosen token's logit and (if
  asked) the entropy, exactly as :func:`~real_lightning.logprobs.token_logprobs` computes them per block.
  Saved for the backward: ``h``, ``W``, the tokens and the [N] logsumexp.
- backward: per chunk, the logits again (one more head matmul), ``g = (grad/τ)·(onehot − softmax)``, then
  ``dh = g W`` and ``dW += gᵀ h`` (float32 accumulation for bf16/fp16 weights).

The price is one extra head matmul in the backward (the head's FLOPs go from 3 to 4 matmuls; measured on
2 CPU cores with a 26 M-parameter, V = 32,000 model: 5–12 % more update time); the saving is the two
[N, V] tensors. :func:`fused_head_logprobs` applies it
inside a Hugging Face causal LM's own forward (the head's ``forward`` is swapped for the call), so the
head's parameters are used where the model uses them: under FSDP2 they are the unsharded ones, and
their gradient flows into the usual reduce-scatter.

Examples:
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> h, w = torch.randn(6, 4), torch.randn(9, 4)
    >>> tokens = torch.randint(0, 9, (6,))
    >>> lp, _ = linear_token_logprobs(h, w, None, tokens, temperature=0.7, chunk_size=4)
    >>> ref = torch.log_softmax(h @ w.T / 0.7, -1).gather(-1, tokens[:, None])[:, 0]
    >>> torch.allclose(lp, ref, atol=1e-5)
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from real_lightning.logprobs.blocks import forward_block, shifted_block
from real_lightning.utils.dtypes import compute_dtype

__all__ = ["check_fusable", "fused_head_logprobs", "linear_token_logprobs"]

#: config attributes of models whose logits are not ``lm_head(hidden)`` (scaled or soft-capped after it)
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def _logits_block(hidden: Tensor, weight: Tensor, bias: Tensor | None, out: Tensor) -> Tensor:
    """[n, V] logits of [n, H] hidden states (what ``nn.Linear`` computes), written into ``out`` [n, V].

    ``out`` is a block reused across chunks: a fresh [n, V] allocation per chunk costs page faults on CPU.
    """
    if hidden.dtype != weight.dtype or out.dtype != weight.dtype:
        return out.copy_(torch.nn.functional.linear(hidden, weight, bias))
    if bias is None:
        return torch.mm(hidden, weight.t(), out=out)
    return torch.addmm(bias, hidden, weight.t(), out=out)


class _LinearTokenLogprobs(torch.autograd.Function):
    """log_softmax((h Wᵀ + b) / τ)[tokens] over [N, H] hidden states, chunked; entropy detached."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        tokens: Tensor,
        temperature: float,
        chunk_size: int,
        with_entropy: bool,
    ) -> tuple[Tensor, Tensor]:
        rows, vocab = hidden.shape[0], weight.shape[0]
        dtype = compute_dtype(torch.promote_types(hidden.dtype, weight.dtype))
        out = hidden.new_empty(rows, dtype=dtype)
        lse = torch.empty_like(out)
        entropy = torch.empty_like(out) if with_entropy else out.new_empty(0)
        block_rows = max(1, min(chunk_size, rows))
        logits = weight.new_empty(block_rows, vocab)
        work = hidden.new_empty(block_rows, vocab, dtype=dtype)
        work2 = hidden.new_empty(block_rows, vocab, dtype=dtype) if with_entropy else None
        with torch.no_grad():
            for start in range(0, rows, chunk_size):
                stop = min(start + chunk_size, rows)
                n = stop - start
                block = _logits_block(hidden[start:stop], weight, bias, logits[:n])
                block_lse, chosen, block_ent = forward_block(
                    block, tokens[start:stop], temperature, with_entropy, work[:n], None if work2 is None else work2[:n]
                )
                lse[start:stop] = block_lse
                out[start:stop] = chosen - block_lse
                if with_entropy:
                    entropy[start:stop] = block_ent
        ctx.save_for_backward(hidden, weight, bias, tokens, lse)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        ctx.mark_non_differentiable(entropy)
        return out, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: Tensor | None, _grad_entropy: Tensor | None) -> tuple[Tensor | None, ...]:
        hidden, weight, bias, tokens, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        if grad_out is None or not (need_h or need_w or need_b):
            return None, None, None, None, None, None, None
        temperature, chunk_size = ctx.temperature, ctx.chunk_size
        dtype = lse.dtype
        rows = hidden.shape[0]
        grad_h = torch.empty_like(hidden) if need_h else None
        # accumulate the head's gradients over chunks in float32 (or float64), round once at the end
        grad_w = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=dtype, device=bias.device) if need_b else None
        scale_all = grad_out.to(dtype) / temperature  # grad / τ
        block_rows = max(1, min(chunk_size, rows))
        logits = weight.new_empty(block_rows, weight.shape[0])
        scratch = None if weight.dtype == dtype else logits.new_empty(logits.shape, dtype=dtype)
        for start in range(0, rows, chunk_size):
            stop = min(start + chunk_size, rows)
            h = hidden[start:stop]
            block = _logits_block(h, weight, bias, logits[: stop - start])
            scale = scale_all[start:stop, None]
            work = block if scratch is None else scratch[: stop - start]
            # (grad/τ)·(onehot − softmax), softmax = exp(x/τ − lse)
            shifted_block(block, lse[start:stop, None], temperature, out=work).exp_().mul_(scale.neg())
            work.scatter_add_(1, tokens[start:stop, None], scale)
            g = work if scratch is None else block.copy_(work)  # rounded as nn.Linear's backward would see it
            if grad_h is not None:
                grad_h[start:stop] = g @ weight.to(g.dtype)
            if grad_w is not None:
                grad_w.addmm_(g.t().to(dtype), h.to(dtype))
            if grad_b is not None:
                grad_b.add_(work.sum(0))
        grad_w = grad_w.to(weight.dtype) if grad_w is not None else None
        grad_b = grad_b.to(bias.dtype) if grad_b is not None else None
        return grad_h, grad_w, grad_b, None, None, None, None


def linear_token_logprobs(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    tokens: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 256,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """``log_softmax(linear(hidden, weight, bias) / τ)[tokens]`` without ever holding the [N, V] logits.

    Args:
        hidden: [N, H] last hidden states (after the final norm), any floating dtype.
        weight: [V, H] the LM head's weight; ``bias`` [V] or None.
        tokens: [N] token ids in [0, V) scored at each row.
        temperature: τ > 0.
        chunk_size: rows per block; temporaries are a few [chunk_size, V] blocks.
        with_entropy: also return the entropy of softmax(logits / τ) per row (detached).

    Returns:
        ``(logprobs, entropy)``: [N] in float32 (float64 for float64 inputs), differentiable w.r.t.
        ``hidden``, ``weight`` and ``bias``; ``entropy`` is None unless ``with_entropy``.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden [N, H] and weight [V, H] expected, got {tuple(hidden.shape)}, {tuple(weight.shape)}")
    if tokens.shape != hidden.shape[:1]:
        raise ValueError(f"tokens must be [N] = [{hidden.shape[0]}], got shape {tuple(tokens.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    logprobs, entropy = _LinearTokenLogprobs.apply(
        hidden, weight, bias, tokens, float(temperature), int(chunk_size), bool(with_entropy)
    )
    return logprobs, (entropy if with_entropy else None)


def check_fusable(model: nn.Module) -> nn.Linear:
    """The model's LM head if its logits are exactly ``lm_head(hidden)``; ``ValueError`` naming why not."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear):
        raise ValueError(
            f"model.fused_head needs a causal LM whose output embedding is an nn.Linear; "
            f"{type(model).__name__} has {type(head).__name__}: set model.fused_head false"
        )
    config = getattr(model, "config", None)
    for name in _LOGIT_TRANSFORMS:
        value = getattr(config, name, None)
        if value not in (None, 1, 1.0, 0, 0.0, False):
            raise ValueError(
                f"model.fused_head: {type(model).__name__} transforms its logits after the head "
                f"(config.{name} = {value}); set model.fused_head false"
            )
    return head


@contextlib.contextmanager
def fused_head_logprobs(
    model: nn.Module, targets: Tensor, *, temperature: float, chunk_size: int, with_entropy: bool
) -> Iterator[dict[str, Tensor | None]]:
    """Within this context, ``model(...)`` scores ``targets`` in its LM head instead of returning logits.

    The head's ``forward`` is swapped for one that takes the hidden states it is given ([B, k, H], the
    last k positions: ``targets`` is [B, k]), stores ``{"logprobs": [B, k], "entropy": [B, k] or None}``
    in the yielded dict and returns the log-probs as the model's "logits", [B, k, 1]. Read the log-probs
    from the model's output (``logits[..., 0]``), not from the dict: the gradient must flow back through the
    model's output, where wrappers hook their backward. FSDP2 re-gathers the root's parameters (the head's
    weight among them) in a pre-backward hook on the root module's outputs; log-probs taken from a side channel
    reach the head's backward with the weight's storage already freed.
    """
    head = check_fusable(model)
    result: dict[str, Tensor | None] = {}

    def forward(hidden: Tensor) -> Tensor:
        batch, keep = targets.shape
        if hidden.shape[0] != batch or hidden.shape[1] < keep:
            raise ValueError(f"LM head got hidden states {tuple(hidden.shape)} for targets [B, k] = {(batch, keep)}")
        h = hidden[:, hidden.shape[1] - keep :].reshape(batch * keep, hidden.shape[-1])
        logprobs, entropy = linear_token_logprobs(
            h,
            head.weight,
            head.bias,
            targets.reshape(-1),
            temperature=temperature,
            chunk_size=chunk_size,
            with_entropy=with_entropy,
        )
        result["logprobs"] = logprobs.view(batch, keep)
        result["entropy"] = entropy.view(batch, keep) if entropy is not None else None
        return result["logprobs"].unsqueeze(-1)

    head.forward = forward  # an instance attribute shadows nn.Linear.forward for this call only
    try:
        yield result
    finally:
        del head.forward
