"""What a rollout producer runs, wherever it runs: its job (picklable) and the loop step that samples the next
rollout batch from the weights the staleness rule picks (:mod:`~real_lightning.rollout.producer.versions`).

The producer samples this rank's share of rollout batches r = start, start + 1, … in order, each with
:meth:`RolloutCollector.collect <real_lightning.rollout.collector.RolloutCollector.collect>` (the same sampling,
scoring and seeds as without a producer; dynamic sampling's rounds decided by this rank alone, which
:meth:`RolloutSchedule.check_world_size <real_lightning.rollout.schedule.RolloutSchedule.check_world_size>`
allows only for one process). It issues no collective.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from real_lightning.rollout.batch import RolloutBatch
from real_lightning.rollout.collector import RolloutCollector
from real_lightning.rollout.engine import RolloutEngine
from real_lightning.rollout.producer.versions import Published, choose_weights
from real_lightning.rollout.requests import PromptOrder, RolloutRequests
from real_lightning.rollout.schedule import RolloutSchedule
from real_lightning.rollout.scoring import Scorer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from real_lightning.data.prompts import TokenizedPrompt


@dataclass
class PolicySpec:
    """The policy's architecture without its weights: class, config and dtype (a producer builds a model of its
    own from it; the weights arrive as snapshots)."""

    cls: type
    config: Any
    dtype: torch.dtype

    @classmethod
    def of(cls, policy: nn.Module) -> PolicySpec:
        """The spec of a (possibly FSDP2-wrapped or adapted) Hugging Face model: an adapted one's base architecture
        (the producer receives merged weights)."""
        from torch.distributed.fsdp import FSDPModule

        from real_lightning.policy.lora import base_model

        policy = base_model(policy)
        plain = next(c for c in type(policy).__mro__ if not issubclass(c, FSDPModule))
        return cls(plain, policy.config, next(policy.parameters()).dtype)

    def skeleton(self) -> nn.Module:
        """A model of this architecture on the meta device (no memory): what the producer's engine is set up
        with (an engine builds its own weights from it, or reads only its config)."""
        with torch.device("meta"):
            return self.cls._from_config(self.config, dtype=self.dtype)


@dataclass
class ProducerJob:
    """Everything a producer needs to sample one rank's rollout batches (sent to a worker process as is).

    Attributes:
        engine: a fresh engine (``engine.producer_engine()``), set up by the producer.
        scorer, prompts, schedule, seed, rank, world_size: as the rank's collector has them.
        policy: the architecture the engine is set up with.
        tokenizer: the policy's tokenizer.
    """

    engine: RolloutEngine
    scorer: Scorer
    prompts: list[TokenizedPrompt]
    schedule: RolloutSchedule
    seed: int
    rank: int
    world_size: int
    policy: PolicySpec
    tokenizer: PreTrainedTokenizerBase


class Production:
    """The producer's state: the engine and collector it samples with, the published weights it knows of, and
    the next rollout batch to sample (``start`` first)."""

    def __init__(self, job: ProducerJob, start: int) -> None:
        self.job, self.schedule = job, job.schedule
        job.engine.setup(job.policy.skeleton(), job.tokenizer)
        order = PromptOrder(len(job.prompts), job.seed)
        self.collector = RolloutCollector(
            job.prompts, job.engine, job.scorer, job.schedule, order, job.seed, job.rank, job.world_size
        )
        self.requests = RolloutRequests(order, job.schedule, job.seed, job.rank, job.world_size)
        self.book: dict[int, Published] = {}
        self.next = start
        self.loaded: Published | None = None

    def add(self, published: Published) -> None:
        """Learn of new weights; those they overwrite in the same slot are forgotten."""
        self.book = {i: p for i, p in self.book.items() if p.slot != published.slot}
        self.book[published.index] = published

    def ready(self) -> Published | None:
        """The weights that sample the next batch, or None while they are not published."""
        return choose_weights(self.next, self.book, self.schedule.max_staleness, self.schedule.staleness_mode)

    def sample_next(
        self, weights: Published, read: Callable[[int], list[tuple[str, Tensor]]]
    ) -> tuple[int, RolloutBatch]:
        """Sample the next rollout batch with ``weights`` (loaded from their slot through ``read`` unless the engine
        holds them already); returns its index and the batch."""
        if self.loaded != weights:
            self.job.engine.update_weights(read(weights.slot), weights.version)
            self.loaded = weights
        r = self.next
        request = self.requests.request(r * self.schedule.minibatches_per_rollout)
        batch = self.collector.collect(request)
        self.next += 1
        return r, replace(batch, rollout_staleness=r - weights.index)

    def close(self) -> None:
        teardown = getattr(self.job.engine, "teardown", None)
        if callable(teardown):
            teardown()
