"""Log-probabilities of a language model's chosen tokens without [B, T, V] temporaries.

- :mod:`.chunked`: :func:`token_logprobs` over logits in row chunks, and :func:`sequence_logprobs` (a Hugging Face
  causal LM on prompt + response, scoring the response tokens);
- :mod:`.fused_head`: the LM head fused with the log-softmax (no logits at all; ``model.fused_head``);
- :mod:`.blocks`: the per-block arithmetic both share.
"""

from real_lightning.logprobs.chunked import sequence_logprobs, token_logprobs
from real_lightning.logprobs.fused_head import check_fusable, fused_head_logprobs, linear_token_logprobs

__all__ = ["check_fusable", "fused_head_logprobs", "linear_token_logprobs", "sequence_logprobs", "token_logprobs"]
