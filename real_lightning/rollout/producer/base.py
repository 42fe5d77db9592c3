"""The trainer's side of a rollout producer: publish weights at each rollout batch's start, take finished batches
in order, hand what is in flight to a checkpoint and take it back, stop. :class:`InlineProducer
<real_lightning.rollout.producer.inline.InlineProducer>` and :class:`ProcessProducer
<real_lightning.rollout.producer.process.ProcessProducer>` differ only in where the sampling runs.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterable

from torch import Tensor, nn

from real_lightning.policy.weights import named_full_weights, named_weight_layout
from real_lightning.rollout.batch import RolloutBatch
from real_lightning.rollout.producer.config import ProducerConfig
from real_lightning.rollout.producer.production import PolicySpec, ProducerJob
from real_lightning.rollout.producer.versions import Published, slot_of


class RolloutProducer(ABC):
    """Samples one rank's rollout batches ahead of training, within ``job.schedule.max_staleness``.

    Call :meth:`publish` at the start of every rollout batch (every rank at once: under FSDP2 gathering the full
    weights is a collective), then :meth:`take` that batch. The producer starts at the first :meth:`publish`, from
    the first batch neither :meth:`restore`\\ d nor consumed.
    """

    def __init__(self, job_parts: dict, config: ProducerConfig) -> None:
        self.job_parts, self.config = job_parts, config
        self.schedule = job_parts["schedule"]
        self.received: dict[int, RolloutBatch] = {}
        self.last_published = -1
        self.started = False
        self.consumed = -1

    # --- the trainer's calls ------------------------------------------------------------------------------------

    def restore(self, ahead: dict[int, RolloutBatch]) -> None:
        """Batches a checkpoint held (sampled by the run that wrote it), served before anything sampled here."""
        if self.started:
            raise RuntimeError("restore the producer's batches before its first publish")
        self.received.update(ahead)

    def publish(self, rollout_index: int, version: int, policy: nn.Module) -> None:
        """The weights at the start of rollout batch ``rollout_index`` (optimizer step ``version``)."""
        if not self.started:
            start = max(self.received, default=rollout_index - 1) + 1
            start = max(start, rollout_index)
            job = ProducerJob(**self.job_parts, policy=PolicySpec.of(policy))
            self._first = start
            self._start(job, start, named_weight_layout(policy))  # names, global shapes, dtypes: nothing gathered
            self.started = True
        published = Published(rollout_index, version, slot_of(rollout_index, self.schedule.max_staleness))
        self._publish(published, named_full_weights(policy))
        self.last_published = rollout_index

    def take(self, rollout_index: int) -> tuple[RolloutBatch, float]:
        """Rollout batch ``rollout_index`` and the seconds the trainer waited for it; batches before it are
        dropped."""
        start = time.perf_counter()
        deadline = time.monotonic() + self.config.timeout_s
        while rollout_index not in self.received:
            self._receive(rollout_index, deadline)
        batch = self.received.pop(rollout_index)
        self.received = {r: b for r, b in self.received.items() if r > rollout_index}
        self.consumed = rollout_index
        return batch, time.perf_counter() - start

    def in_flight(self) -> dict[int, RolloutBatch]:
        """Every batch the published weights allow (up to the last published batch + S), finished: what a
        checkpoint saves so that a resumed run trains on exactly the same rollouts (waits for the producer)."""
        if self.started:
            deadline = time.monotonic() + self.config.timeout_s
            for r in range(self.consumed + 1, self.last_published + self.schedule.max_staleness + 1):
                while r not in self.received and r >= self._first:
                    self._receive(r, deadline)
        return {r: b for r, b in self.received.items() if r > self.consumed}

    # --- where the sampling runs -----------------------------------------------------------------------------------

    _first = 0
    """The first batch the producer samples (those before it come from a checkpoint)."""

    @abstractmethod
    def _start(self, job: ProducerJob, start: int, parameters: list[tuple[str, Tensor]]) -> None:
        """Start sampling from batch ``start``; ``parameters`` give the weights' names, shapes and dtypes."""

    @abstractmethod
    def _publish(self, published: Published, weights: Iterable[tuple[str, Tensor]]) -> None:
        """Store the weights in ``published.slot`` and make them known to the sampler."""

    @abstractmethod
    def _receive(self, rollout_index: int, deadline: float) -> None:
        """Wait for (or sample) at least one more batch into :attr:`received`, the trainer waiting for batch
        ``rollout_index``; raise ``RuntimeError`` naming the producer past ``deadline`` (``time.monotonic``)."""

    @abstractmethod
    def close(self) -> None:
        """Stop sampling and free the producer's memory (idempotent)."""
