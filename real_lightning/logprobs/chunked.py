"""Per-token log-probabilities and entropy of a language model's chosen tokens, in chunks.

With a large vocabulary (Qwen: V = 151,936) the logits are the largest tensor of an RL step:
[B, T, V] float32 for B = 8, T = 2048 is 9.3 GiB. ``torch.log_softmax(logits / τ, -1)`` plus a
gather, and the entropy ``-(p · log p).sum(-1)`` on top, allocate several more tensors of that
size (the scaled logits, the log-softmax, the probabilities, their product; in the backward the
gather's zero-filled gradient and the log-softmax's). :func:`token_logprobs` instead walks the
rows (positions) of the logits in chunks of ``chunk_size`` and keeps only [B, T]-sized results:

- forward: per chunk, the logsumexp of the scaled logits, the chosen token's scaled logit and,
  if asked, the entropy. Autograd saves ``logits`` itself (no copy), ``tokens`` and the [B, T]
  logsumexp.
- backward: allocates the one [B, T, V] gradient and fills it chunk by chunk with
  ``(grad / τ) · (onehot(token) − softmax(logits / τ))``, recomputing the softmax of the chunk.

Temporaries are a few [chunk_size, V] blocks (148 MiB each for 256 rows of Qwen's vocabulary), so
the forward's peak is the logits plus a few percent and the backward's is logits + gradient.

:func:`sequence_logprobs` runs a Hugging Face causal LM on prompt + response and scores the
response tokens, asking the model for only the logits it needs (``logits_to_keep``).

Examples:
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> logits = torch.randn(2, 5, 11, requires_grad=True)
    >>> tokens = torch.randint(0, 11, (2, 5))
    >>> lp, ent = token_logprobs(logits, tokens, temperature=0.7, chunk_size=3, with_entropy=True)
    >>> ref = torch.log_softmax(logits / 0.7, -1).gather(-1, tokens[..., None])[..., 0]
    >>> torch.allclose(lp, ref, atol=1e-5), lp.shape, ent.shape
    (True, torch.Size([2, 5]), torch.Size([2, 5]))
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from real_lightning.logprobs.blocks import forward_block, shifted_block
from real_lightning.logprobs.fused_head import fused_head_logprobs
from real_lightning.utils.dtypes import compute_dtype

__all__ = ["sequence_logprobs", "token_logprobs"]


def _row_keys(batch: int, length: int, chunk_size: int, flat: bool) -> Iterator[tuple[Any, ...]]:
    """Index tuples selecting ≤ ``chunk_size`` rows: of the [B·T] flattening, or of one batch entry."""
    if flat:
        for start in range(0, batch * length, chunk_size):
            yield (slice(start, start + chunk_size),)
    else:
        for b in range(batch):
            for start in range(0, length, chunk_size):
                yield (b, slice(start, start + chunk_size))


def _rows(tensor: Tensor, flat: bool) -> Tensor:
    """``tensor`` [B, T, ...] as [B·T, ...] (a view) when ``flat``, else unchanged."""
    return tensor.flatten(0, 1) if flat else tensor


def _can_flatten(logits: Tensor) -> bool:
    """Whether [B, T, V] logits can be viewed as [B·T, V] without a copy."""
    batch, length, vocab = logits.shape
    try:
        logits.view(batch * length, vocab)
    except RuntimeError:
        return False
    return True


class _TokenLogprobs(torch.autograd.Function):
    """log_softmax(logits / τ)[tokens] over [B, T, V] logits, chunked; entropy as a detached extra output."""

    @staticmethod
    def forward(
        ctx: Any, logits: Tensor, tokens: Tensor, temperature: float, chunk_size: int, with_entropy: bool
    ) -> tuple[Tensor, Tensor]:
        batch, length, vocab = logits.shape
        dtype = compute_dtype(logits.dtype)
        flat = _can_flatten(logits)
        out = torch.empty(batch, length, dtype=dtype, device=logits.device)
        lse = torch.empty_like(out)
        entropy = torch.empty_like(out) if with_entropy else out.new_empty(0)
        # scratch blocks allocated once (not per chunk: fresh large allocations cost page faults on CPU)
        rows = min(chunk_size, length if not flat else batch * length)
        work = logits.new_empty(rows, vocab, dtype=dtype)
        work2 = logits.new_empty(rows, vocab, dtype=dtype) if with_entropy else None
        logits_rows, tokens_rows = _rows(logits, flat), _rows(tokens, flat)
        out_rows, lse_rows = _rows(out, flat), _rows(lse, flat)
        ent_rows = _rows(entropy, flat) if with_entropy else None
        with torch.no_grad():
            for key in _row_keys(batch, length, chunk_size, flat):
                block = logits_rows[key]
                n = block.shape[0]
                block_lse, chosen, block_ent = forward_block(
                    block, tokens_rows[key], temperature, with_entropy, work[:n], None if work2 is None else work2[:n]
                )
                lse_rows[key] = block_lse
                out_rows[key] = chosen - block_lse
                if ent_rows is not None:
                    ent_rows[key] = block_ent
        del work, work2
        ctx.save_for_backward(logits, tokens, lse)
        ctx.temperature, ctx.chunk_size, ctx.flat = temperature, chunk_size, flat
        ctx.mark_non_differentiable(entropy)
        return out, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: Tensor | None, _grad_entropy: Tensor | None) -> tuple[Tensor | None, ...]:
        if grad_out is None or not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        logits, tokens, lse = ctx.saved_tensors
        temperature, chunk_size, flat = ctx.temperature, ctx.chunk_size, ctx.flat
        batch, length, vocab = logits.shape
        dtype = lse.dtype
        # the one [B, T, V] allocation of the backward; contiguous, so always viewable as rows
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        # bfloat16/float16 logits: compute in a reused float32 scratch block, then round into the gradient
        rows = min(chunk_size, length if not flat else batch * length)
        scratch = None if logits.dtype == dtype else logits.new_empty(rows, vocab, dtype=dtype)
        logits_rows, tokens_rows, lse_rows = _rows(logits, flat), _rows(tokens, flat), _rows(lse, flat)
        grad_rows = grad.flatten(0, 1) if flat else grad
        scale_rows = _rows(grad_out.to(dtype) / temperature, flat)  # grad / τ
        for key in _row_keys(batch, length, chunk_size, flat):
            block, g = logits_rows[key], grad_rows[key]
            work = g if scratch is None else scratch[: g.shape[0]]
            scale = scale_rows[key][:, None]
            # (grad/τ)·(onehot − softmax): softmax = exp(x/τ − lse), scaled by −grad/τ, then + grad/τ at the token
            shifted_block(block, lse_rows[key][:, None], temperature, out=work).exp_().mul_(scale.neg())
            work.scatter_add_(1, tokens_rows[key][:, None], scale)
            if work is not g:
                g.copy_(work)
        return grad, None, None, None, None


def _check_args(logits: Tensor, tokens: Tensor, temperature: float, chunk_size: int) -> None:
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, T, V], got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got {logits.dtype}")
    if logits.shape[-1] == 0:
        raise ValueError("logits must have a non-empty vocabulary dimension V, got V = 0")
    if tokens.shape != logits.shape[:2]:
        raise ValueError(
            f"tokens must be [B, T] = {tuple(logits.shape[:2])} to match logits {tuple(logits.shape)}, "
            f"got shape {tuple(tokens.shape)}"
        )
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise ValueError(f"tokens must be an integer (long) tensor, got {tokens.dtype}")
    if tokens.device != logits.device:
        raise ValueError(f"tokens must be on the device of logits ({logits.device}), got {tokens.device}")
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise ValueError(f"temperature must be a positive float, got {temperature!r}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


def token_logprobs(
    logits: Tensor,
    tokens: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 256,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Log-probability of each chosen token, and optionally the entropy, without [B, T, V] temporaries.

    Equal to ``torch.log_softmax(logits / temperature, -1).gather(-1, tokens[..., None])[..., 0]`` in
    value and gradient, but the only [B, T, V] tensors involved are ``logits`` (saved for the
    backward as is, not copied) and, in the backward, its gradient. See the module docstring.

    Args:
        logits: [B, T, V], any floating dtype and any strides; ``logits[:, t]`` scores ``tokens[:, t]``
            (already shifted). Entries may be ``-inf`` (masked vocabulary).
        tokens: [B, T] integer token ids in [0, V) (not range-checked: out-of-range ids raise in
            ``gather`` on CPU and are undefined on an accelerator).
        temperature: τ > 0; the distribution is softmax(logits / τ).
        chunk_size: positions (rows of the flattened [B·T, V]) processed at once; temporaries are a
            few [chunk_size, V] float32 blocks.
        with_entropy: also return the entropy of softmax(logits / τ) at each position.

    Returns:
        ``(logprobs, entropy)``: [B, T] in float32 (float64 for float64 logits); ``logprobs`` is
        differentiable w.r.t. ``logits``; ``entropy`` is a detached metric (no gradient), ``None``
        unless ``with_entropy``.

    Raises:
        ValueError: naming the argument, for a wrong shape or dtype, temperature ≤ 0 or chunk_size ≤ 0.
    """
    _check_args(logits, tokens, temperature, chunk_size)
    logprobs, entropy = _TokenLogprobs.apply(logits, tokens, float(temperature), int(chunk_size), bool(with_entropy))
    return logprobs, (entropy if with_entropy else None)


def _logits_to_keep_support(model: torch.nn.Module) -> str:
    """How ``model.forward`` takes ``logits_to_keep``: ``"named"``, via ``**kwargs`` (``"kwargs"``) or not (``""``)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return ""
    if "logits_to_keep" in params:
        return "named"
    return "kwargs" if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()) else ""


def sequence_logprobs(
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    response_start: int,
    *,
    temperature: float = 1.0,
    chunk_size: int = 256,
    with_entropy: bool = False,
    fused_head: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Log-probabilities (and entropy) of the response tokens under a Hugging Face causal LM.

    ``input_ids`` [B, L] is a left-padded prompt of length ``response_start`` followed by a
    right-padded response; ``attention_mask`` [B, L] is 1 on real tokens. Position j of the result
    scores ``input_ids[:, response_start + j]`` with the logits at position ``response_start + j − 1``.
    Positions of the response padding get values too; mask them with the response's attention mask.

    The model is called with ``position_ids = clamp(cumsum(attention_mask) − 1, 0)`` (as Hugging Face
    ``generate`` does for left padding, so a row's result does not depend on its amount of padding),
    ``use_cache=False`` and, when its ``forward`` accepts it, ``logits_to_keep = L − response_start + 1``:
    an int k keeps the last k positions (transformers ≥ 4.50; ``0`` would mean all of them), i.e.
    positions ``response_start − 1 … L − 1``. The last one predicts past the end of the sequence; it
    is scored against a dummy token and dropped (its gradient is exactly 0), which avoids slicing the
    [B, L − response_start + 1, V] logits (slicing would make autograd allocate a second gradient of
    that size). A model that returns all L positions instead is handled by slicing.

    Args:
        model: a causal LM whose output has ``.logits`` [B, ·, V] (e.g. ``AutoModelForCausalLM``).
        input_ids: [B, L] token ids.
        attention_mask: [B, L], 1 for real tokens, 0 for padding.
        response_start: prompt length P, 1 ≤ P ≤ L.
        temperature, chunk_size, with_entropy: as in :func:`token_logprobs`.
        fused_head: score the tokens inside the model's LM head
            (:func:`real_lightning.logprobs.fused_head.fused_head_logprobs`): the [B, L − P + 1, V] logits and their
            gradient are never held, only [chunk_size, V] blocks; same values and gradients.

    Returns:
        ``(logprobs, entropy)`` [B, L − P] float32 (entropy ``None`` unless ``with_entropy``).
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, L], got shape {tuple(input_ids.shape)}")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
            f"got {tuple(attention_mask.shape)}"
        )
    length = input_ids.shape[1]
    if isinstance(response_start, bool) or not isinstance(response_start, int) or not 1 <= response_start <= length:
        raise ValueError(f"response_start must be an int in [1, L = {length}], got {response_start!r}")
    response_len = length - response_start
    keep = response_len + 1  # ≥ 1: an int 0 would mean "all positions"
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)
    kwargs: dict[str, Any] = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "use_cache": False,
    }
    # targets for positions response_start − 1 … L − 1: the response tokens, then a dummy (token 0)
    targets = torch.cat([input_ids[:, response_start:], input_ids.new_zeros(input_ids.shape[0], 1)], dim=1)
    support = _logits_to_keep_support(model)
    if fused_head:
        if support:
            kwargs["logits_to_keep"] = keep
        with fused_head_logprobs(
            model, targets, temperature=temperature, chunk_size=chunk_size, with_entropy=with_entropy
        ) as fused:
            output = model(**kwargs)
        if "logprobs" not in fused:
            raise RuntimeError(f"{type(model).__name__}.forward did not call its LM head: set fused_head false")
        # through the model's output (FSDP2 prepares the head's weight for the backward there), not fused[...]
        logprobs, entropy = (output.logits if hasattr(output, "logits") else output[0])[..., 0], fused["entropy"]
        return logprobs[:, :-1], (entropy[:, :-1] if entropy is not None else None)
    if support:
        kwargs["logits_to_keep"] = keep
    try:
        output = model(**kwargs)
    except TypeError as err:  # a **kwargs wrapper around a model that rejects the argument
        if support != "kwargs" or "logits_to_keep" not in str(err):
            raise
        del kwargs["logits_to_keep"]
        output = model(**kwargs)
    logits = output.logits if hasattr(output, "logits") else output[0]
    if logits.dim() != 3 or logits.shape[0] != input_ids.shape[0]:
        raise ValueError(f"model returned logits of shape {tuple(logits.shape)}, expected [B, ·, V]")
    if logits.shape[1] != keep:
        if logits.shape[1] != length:
            raise ValueError(
                f"model returned logits for {logits.shape[1]} positions; "
                f"expected {keep} (logits_to_keep) or L = {length}"
            )
        logits = logits[:, response_start - 1 :]  # all positions were computed: keep the last `keep`
    logprobs, entropy = token_logprobs(
        logits, targets, temperature=temperature, chunk_size=chunk_size, with_entropy=with_entropy
    )
    return logprobs[:, :-1], (entropy[:, :-1] if entropy is not None else None)
