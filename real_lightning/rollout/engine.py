"""The rollout-engine protocol: anything that samples n responses per prompt from the policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase


@dataclass
class Generation:
    """P prompts × n samples; row ``p·n + j`` is sample j of prompt p.

    Attributes:
        input_ids: [P·n, Lp + T] left-padded prompts followed by right-padded responses.
        attention_mask: [P·n, Lp + T] 1 on real prompt and response tokens.
        response_mask: [P·n, T] bool, the response tokens that count (through the first EOS, or the
            end of a stop string, or all of them when truncated).
        prompt_length: Lp.
        truncated: [P·n] bool, stopped by the length limit.
        texts: decoded responses, special tokens removed, cut after a stop string.
    """

    input_ids: Tensor
    attention_mask: Tensor
    response_mask: Tensor
    prompt_length: int
    truncated: Tensor
    texts: list[str]


@runtime_checkable
class RolloutEngine(Protocol):
    """Samples responses from the current policy.

    ``temperature`` is part of the contract: log-probs for the loss are computed at the same
    temperature, so that s_i = 0 for the policy that generated the rollouts.
    """

    temperature: float
    max_new_tokens: int

    def sync_weights(self, policy: nn.Module) -> None:
        """Make the engine sample from ``policy``'s current weights (a no-op for in-process HF generation)."""
        ...

    def generate(
        self,
        policy: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        prompts: list[list[int]],
        n: int,
        seed: int | None = None,
    ) -> Generation:
        """Sample ``n`` responses for each tokenized prompt; ``seed`` makes the sampling reproducible."""
        ...
