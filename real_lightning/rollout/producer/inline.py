"""A rollout producer in the trainer's process: each rollout batch is sampled when the trainer takes it, from the
snapshot the staleness rule picks. No overlap; the same rollouts as a worker process (a reference for it)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from real_lightning.rollout.producer.base import RolloutProducer
from real_lightning.rollout.producer.production import ProducerJob, Production
from real_lightning.rollout.producer.slots import WeightSlots, layout
from real_lightning.rollout.producer.versions import Published


class InlineProducer(RolloutProducer):
    """Samples in this process, with ``config.threads`` torch threads while it samples (as a worker would)."""

    production: Production | None = None
    slots: WeightSlots | None = None

    def _start(self, job: ProducerJob, start: int, parameters: list[tuple[str, Tensor]]) -> None:
        entries, size = layout(parameters)
        self.slots = WeightSlots.allocate(entries, size, self.schedule.max_staleness + 1, shared=False)
        self.production = Production(job, start)

    def _publish(self, published: Published, weights: Iterable[tuple[str, Tensor]]) -> None:
        assert self.slots is not None and self.production is not None
        self.slots.write(published.slot, ((name, tensor.cpu()) for name, tensor in weights))
        self.production.add(published)

    def _receive(self, rollout_index: int, deadline: float) -> None:
        production, slots = self.production, self.slots
        assert production is not None and slots is not None
        weights = production.ready()
        if weights is None:
            raise RuntimeError(
                f"inline rollout producer (rank {production.job.rank}): no published weights may sample rollout "
                f"batch {production.next} (the trainer takes batch {rollout_index})"
            )
        threads = torch.get_num_threads()
        torch.set_num_threads(self.config.threads)
        try:
            r, batch = production.sample_next(weights, slots.named)
        finally:
            torch.set_num_threads(threads)
        batch.stats["producer/idle_s"] = 0.0
        self.received[r] = batch

    def close(self) -> None:
        if self.production is not None:
            self.production.close()
        self.production, self.slots = None, None
