"""Where the rollout producer runs and how long the trainer waits for it (``data.producer``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class ProducerConfig:
    """The rollout producer of ``data.schedule.max_staleness`` > 0 (unused at 0).

    Args:
        placement: ``process`` (default): a worker process of its own on this machine, one per rank, with its own
            engine, its own copy of the weights (they arrive through shared memory) and its own threads; it samples
            while the trainer trains. ``inline``: in the trainer's process, at the start of each rollout batch,
            from the same weight snapshots: the same rollouts as ``process`` without the overlap (a reference, and
            for an engine that cannot leave the trainer's process).
        threads: torch threads of the worker process (intra-op); the trainer keeps its own. On a CPU machine
            the two share the cores: give each its part (e.g. 1 and 1 on 2 cores).
        timeout_s: seconds the trainer waits for a rollout batch before the run stops with an error naming the
            producer (its process start, model build and sampling included).
    """

    placement: Literal["process", "inline"] = "process"
    threads: int = 1
    timeout_s: float = 1800.0

    def __post_init__(self) -> None:
        if self.placement not in ("process", "inline"):
            raise ValueError(f"data.producer.placement must be 'process' or 'inline', got {self.placement!r}")
        if self.threads < 1:
            raise ValueError(f"data.producer.threads must be >= 1, got {self.threads}")
        if not self.timeout_s > 0:
            raise ValueError(f"data.producer.timeout_s must be > 0, got {self.timeout_s}")
