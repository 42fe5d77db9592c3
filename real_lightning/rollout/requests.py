"""The train and validation DataLoaders' items: small plain requests derived from (seed, index, rank).

Nothing here is a live generator or reads a global RNG: request ``k`` of a run is a pure function of
the seed, ``k`` and the rank, so a resumed run continues with exactly the request it stopped before
(its position is the collector's checkpointed ``next_step``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch.utils.data import IterableDataset

from real_lightning.rollout.schedule import RolloutSchedule


def derive_seed(seed: int, *keys: object) -> int:
    """A 56-bit seed from ``seed`` and ``keys`` (stable across processes and Python versions)."""
    text = "/".join(str(k) for k in (seed, *keys))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:7], "little")


class RolloutRequest(NamedTuple):
    """What training step ``step`` asks for: mini-batch ``minibatch_index`` of rollout batch ``rollout_index``.

    Attributes:
        step: the optimizer step this request feeds (0-based, over the whole run).
        rollout_index: the rollout batch.
        minibatch_index: position of the mini-batch in its rollout batch (epochs included).
        prompt_indices: this rank's prompts of the rollout batch (rows of the tokenized training set).
        seed: this rank's sampling seed for the rollout batch.
    """

    step: int
    rollout_index: int
    minibatch_index: int
    prompt_indices: tuple[int, ...]
    seed: int


class ValidationRequest(NamedTuple):
    """Chunk ``chunk`` of validation set ``dataset``; empty ``prompt_indices`` pad a rank's share."""

    dataset: str
    chunk: int
    prompt_indices: tuple[int, ...]
    seed: int


class PromptOrder:
    """Reshuffled passes over ``num_prompts`` prompts: pass e is a permutation seeded by (seed, e)."""

    def __init__(self, num_prompts: int, seed: int) -> None:
        if num_prompts < 1:
            raise ValueError("the training set has no prompts")
        self.num_prompts, self.seed = num_prompts, seed
        self._cached: tuple[int, list[int]] = (-1, [])

    def _permutation(self, epoch: int) -> list[int]:
        if self._cached[0] != epoch:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, "epoch", epoch))
            self._cached = (epoch, torch.randperm(self.num_prompts, generator=generator).tolist())
        return self._cached[1]

    def slice(self, start: int, count: int) -> tuple[int, ...]:
        """Prompts at positions [start, start + count) of the endless sequence of passes."""
        return tuple(
            self._permutation(p // self.num_prompts)[p % self.num_prompts] for p in range(start, start + count)
        )

    def refill(self, rollout_index: int, round_index: int, rank: int, count: int) -> tuple[int, ...]:
        """Prompts for an extra dynamic-sampling round: uniformly drawn, disjoint across ranks when possible."""
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "refill", rollout_index, round_index))
        perm = torch.randperm(self.num_prompts, generator=generator).tolist()
        return tuple(perm[(rank * count + i) % self.num_prompts] for i in range(count))


class RolloutRequests(IterableDataset):
    """Endless requests from step ``start`` on, for one rank.

    Args:
        order: the prompt order.
        schedule: the sampling schedule (global counts).
        seed: the run's seed.
        rank, world_size: this rank takes a contiguous share of each rollout batch's prompts.
        start: the first step to request (the collector's ``next_step`` after a resume).
    """

    def __init__(
        self, order: PromptOrder, schedule: RolloutSchedule, seed: int, rank: int, world_size: int, start: int = 0
    ) -> None:
        super().__init__()
        self.order, self.schedule, self.seed = order, schedule, seed
        self.rank, self.world_size, self.start = rank, world_size, start

    def request(self, step: int) -> RolloutRequest:
        per_rollout = self.schedule.minibatches_per_rollout
        rollout_index, minibatch = divmod(step, per_rollout)
        local = self.schedule.local_prompts(self.world_size)
        first = rollout_index * self.schedule.prompts_per_rollout + self.rank * local
        return RolloutRequest(
            step=step,
            rollout_index=rollout_index,
            minibatch_index=minibatch,
            prompt_indices=self.order.slice(first, local),
            seed=derive_seed(self.seed, "sample", rollout_index, self.rank),
        )

    def __iter__(self) -> Iterator[RolloutRequest]:
        step = self.start
        while True:
            yield self.request(step)
            step += 1


class ValidationRequests(IterableDataset):
    """One rank's chunks of a validation set: chunks ``rank, rank + W, …``, padded to equal counts.

    Chunk c always holds the same prompts and seed, whatever the number of ranks, so Pass@k does not
    depend on it. Every rank gets ``ceil(chunks / W)`` requests (the last may be empty padding), so all
    ranks generate the same number of times.
    """

    def __init__(
        self, dataset: str, num_prompts: int, prompts_per_chunk: int, seed: int, rank: int, world_size: int
    ) -> None:
        super().__init__()
        self.dataset, self.num_prompts, self.prompts_per_chunk = dataset, num_prompts, prompts_per_chunk
        self.seed, self.rank, self.world_size = seed, rank, world_size

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.num_prompts / self.prompts_per_chunk)

    def __len__(self) -> int:
        return math.ceil(self.num_chunks / self.world_size)

    def __iter__(self) -> Iterator[ValidationRequest]:
        for i in range(len(self)):
            chunk = self.rank + i * self.world_size
            start = chunk * self.prompts_per_chunk
            indices = tuple(range(start, min(start + self.prompts_per_chunk, self.num_prompts)))
            yield ValidationRequest(self.dataset, chunk, indices, self.seed + chunk)
