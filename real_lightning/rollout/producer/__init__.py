"""Asynchronous rollouts: a producer samples the next rollout batches while the trainer trains on this one, within
a staleness bound (``data.schedule.max_staleness``, ``staleness_mode``; placement in ``data.producer``).

- :mod:`.versions` — which published weights may sample which rollout batch (the rule, pure);
- :mod:`.slots` — weight snapshots in (shared) memory;
- :mod:`.production` — what the producer runs wherever it runs (the job, the sampling loop's step);
- :mod:`.base` — the trainer's side (publish, take, in flight for checkpoints, close);
- :mod:`.inline`, :mod:`.process` (+ :mod:`.worker`) — in the trainer's process, or in a worker process.
"""

from __future__ import annotations

from real_lightning.rollout.producer.base import RolloutProducer
from real_lightning.rollout.producer.config import ProducerConfig
from real_lightning.rollout.producer.inline import InlineProducer
from real_lightning.rollout.producer.process import ProcessProducer


def make_producer(config: ProducerConfig, **job_parts: object) -> RolloutProducer:
    """The producer ``config.placement`` names, for a job made of ``job_parts`` (all of :class:`ProducerJob
    <real_lightning.rollout.producer.production.ProducerJob>` but the policy, which the first publish gives)."""
    cls = ProcessProducer if config.placement == "process" else InlineProducer
    return cls(dict(job_parts), config)


__all__ = ["InlineProducer", "ProcessProducer", "ProducerConfig", "RolloutProducer", "make_producer"]
