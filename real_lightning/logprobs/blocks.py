"""The per-block arithmetic shared by the chunked log-probs (:mod:`.chunked`) and the fused LM head
(:mod:`.fused_head`): the row max, the shifted and scaled block, and one block's logsumexp, chosen logit and
entropy. Blocks are [n, V] rows of logits; results are [n] in the compute dtype."""

from __future__ import annotations

import torch
from torch import Tensor


def row_max(block: Tensor, temperature: float, dtype: torch.dtype) -> Tensor:
    """Row max of ``block / τ`` [n, 1] in ``dtype``, the shift before exp; ±inf/nan rows get 0."""
    m = block.amax(dim=-1, keepdim=True).to(dtype)
    if temperature != 1.0:
        m = m / temperature  # max(x / τ) = max(x) / τ for τ > 0
    return m.masked_fill_(~torch.isfinite(m), 0.0)


def shifted_block(block: Tensor, shift: Tensor, temperature: float, out: Tensor) -> Tensor:
    """``out = block / τ − shift`` in ``out``'s dtype, one pass (upcasts bfloat16/float16 blocks)."""
    if temperature == 1.0:
        return torch.sub(block, shift, out=out)
    return torch.add(shift.neg(), block, alpha=1.0 / temperature, out=out)


def forward_block(
    block: Tensor, tok: Tensor, temperature: float, with_entropy: bool, work: Tensor, work2: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Logsumexp [n], chosen scaled logit [n] and entropy [n] (or None) of one [n, V] block.

    ``work`` and ``work2`` are [n, V] scratch blocks in the compute dtype, reused across chunks.
    """
    dtype = work.dtype
    chosen = block.gather(1, tok[:, None])[:, 0].to(dtype)
    if temperature != 1.0:
        chosen = chosen / temperature
    m = row_max(block, temperature, dtype)
    shifted = shifted_block(block, m, temperature, out=work)  # ≤ 0; −inf at masked vocabulary entries
    if work2 is None:
        s = shifted.exp_().sum(-1)
        return s.log_().add_(m[:, 0]), chosen, None
    # −inf → lowest finite value: exp still gives 0 there, and 0·shifted below is 0 instead of nan
    shifted.clamp_(min=torch.finfo(dtype).min)
    e = torch.exp(shifted, out=work2)  # unnormalised probabilities
    s = e.sum(-1)
    # entropy = −Σ p·log p = log s − Σ e·shifted / s: two non-negative terms, no cancellation
    dot = e.mul_(shifted).sum(-1)
    log_s = s.log()
    entropy = log_s - dot / s
    return log_s.add_(m[:, 0]), chosen, entropy
