"""A rollout engine whose samples depend only on (prompt, sample index): the same rollouts on any number of ranks.

It satisfies the :class:`~real_lightning.rollout.engine.RolloutEngine` protocol without sampling from
the policy, so that runs on 1 and 2 processes train on exactly the same rollouts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from real_lightning.rollout.engine import Generation


class ScriptedEngine:
    """Response j to a prompt: 1..max_new_tokens printable characters drawn from a generator seeded by (prompt, j)."""

    def __init__(self, max_new_tokens: int = 6, temperature: float = 1.0) -> None:
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._version = -1

    @property
    def policy_version(self) -> int:
        return self._version

    def setup(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer

    def update_weights(self, named_tensors: Iterable[tuple[str, Tensor]], version: int) -> None:
        self._version = version

    def generate(self, prompts: list[list[int]], n: int, seed: int) -> Generation:
        tokenizer = self._tokenizer
        assert tokenizer is not None, "setup first"
        responses = []
        for prompt in prompts:
            for j in range(n):
                key = hashlib.sha256(f"{prompt}/{j}".encode()).digest()
                gen = torch.Generator().manual_seed(int.from_bytes(key[:7], "little"))
                length = int(torch.randint(1, self.max_new_tokens + 1, (1,), generator=gen))
                responses.append(torch.randint(2, len(tokenizer), (length,), generator=gen).tolist())
        return Generation.from_token_lists(
            prompts,
            n,
            responses,
            truncated=[len(t) == self.max_new_tokens for t in responses],
            texts=[tokenizer.decode(t) for t in responses],
            pad_id=tokenizer.pad_token_id,
        )
