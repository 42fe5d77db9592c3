from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from real_lightning.losses import LOSSES

LOSS_NAMES = sorted(LOSSES)
TIGHT = {"rtol": 1e-10, "atol": 1e-12}


@dataclass
class RolloutTensors:
    logprobs: Tensor  # [B, T] float64 leaf
    old_logprobs: Tensor  # [B, T]
    response_mask: Tensor  # [B, T] float 0/1
    rewards: Tensor  # [B]
    group_ids: Tensor  # [B]

    def kwargs(self) -> dict[str, Tensor]:
        return {
            "logprobs": self.logprobs,
            "old_logprobs": self.old_logprobs,
            "response_mask": self.response_mask,
            "rewards": self.rewards,
            "group_ids": self.group_ids,
        }

    def permuted(self, perm: Tensor) -> RolloutTensors:
        return RolloutTensors(
            self.logprobs.detach()[perm].clone().requires_grad_(),
            self.old_logprobs[perm],
            self.response_mask[perm],
            self.rewards[perm],
            self.group_ids[perm],
        )


def make_batch(seed: int = 0, scale: float = 0.3, dtype: torch.dtype = torch.float64) -> RolloutTensors:
    """Six groups of unequal sizes (1..8), shuffled, with non-contiguous (and negative) ids.

    Group 42 is all-correct and group -5 all-wrong (no contrast: filtered); group 7 holds a single
    rollout; row lengths vary and one response is empty. ``scale`` sets the spread of the
    token log-ratios, so that some tokens fall outside each clip range.
    """
    gen = torch.Generator().manual_seed(seed)
    spec = {100: [1, 0, 0], 7: [1], 42: [1, 1, 1, 1], -5: [0, 0], 3: [0, 1, 1, 0, 0], 11: [1, 0, 0, 0, 0, 0, 0, 1]}
    ids = [g for g, rs in spec.items() for _ in rs]
    rewards = [r for rs in spec.values() for r in rs]
    perm = torch.randperm(len(ids), generator=gen)
    batch, length = len(ids), 9
    old = -torch.rand(batch, length, generator=gen, dtype=torch.float64) * 3
    logprobs = old + torch.randn(batch, length, generator=gen, dtype=torch.float64) * scale
    lengths = torch.randint(1, length + 1, (batch,), generator=gen)
    lengths[3] = 0  # an empty completion
    mask = (torch.arange(length)[None, :] < lengths[:, None]).to(torch.float64)
    return RolloutTensors(
        logprobs.to(dtype).requires_grad_(),
        old.to(dtype),
        mask,
        torch.tensor(rewards, dtype=torch.float64)[perm],
        torch.tensor(ids)[perm],
    )


def scale_for(name: str) -> float:
    """Log-ratio spread that straddles each loss's clip range (GSPO's is 1e3 times narrower)."""
    return 1e-3 if name == "gspo" else 0.3


@pytest.fixture
def batch() -> RolloutTensors:
    return make_batch()
