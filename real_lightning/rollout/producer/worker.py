"""The rollout producer's worker process: it samples rollout batches in order as soon as the staleness rule allows
(:class:`~real_lightning.rollout.producer.production.Production`) and sends them back, finished, one message each.

Messages. Trainer → worker (``commands``): ``("publish", Published)``, ``("stop",)``. Worker → trainer
(``results``): ``("batch", r, bytes)`` (the batch's plain fields, ``torch.save``\\ d), ``("error", r, traceback)``.
The worker never touches the trainer's process group: it starts with the torchelastic variables removed, and
exits when the trainer's process is gone.
"""

from __future__ import annotations

import io
import os
import queue
import threading
import time
import traceback
from typing import Any

import torch

from real_lightning.rollout.batch import RolloutBatch
from real_lightning.rollout.producer.production import ProducerJob, Production
from real_lightning.rollout.producer.slots import WeightSlots

_LAUNCH_VARIABLES = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "NODE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
)


def encode_batch(batch: RolloutBatch) -> bytes:
    """A rollout batch as bytes (plain fields: it loads with ``weights_only=True``)."""
    from real_lightning.rollout.collector import batch_state

    buffer = io.BytesIO()
    torch.save(batch_state(batch), buffer)
    return buffer.getvalue()


def decode_batch(data: bytes) -> RolloutBatch:
    return RolloutBatch(**torch.load(io.BytesIO(data), weights_only=True))


def _exit_with_parent(parent: int) -> None:
    """End this process once its parent is gone (the trainer was killed): a daemon thread."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(3)

    threading.Thread(target=watch, daemon=True, name="real-lightning-producer-parent-watch").start()


def run_worker(
    job: ProducerJob,
    start: int,
    slots: WeightSlots,
    commands: Any,
    results: Any,
    threads: int,
    parent: int,
) -> None:
    """The worker's main loop (the target of the spawned process)."""
    _exit_with_parent(parent)
    if torch.cuda.is_available():  # the rank's own GPU (the variable goes below)
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    for name in _LAUNCH_VARIABLES:
        os.environ.pop(name, None)
    torch.set_num_threads(threads)
    production: Production | None = None
    try:
        production = Production(job, start)
        idle = 0.0
        while True:
            while True:  # everything the trainer sent so far
                try:
                    message = commands.get_nowait()
                except queue.Empty:
                    break
                if message[0] == "stop":
                    return
                production.add(message[1])
            weights = production.ready()
            if weights is None:
                waited = time.perf_counter()
                try:
                    message = commands.get(timeout=1.0)
                except queue.Empty:
                    message = None
                idle += time.perf_counter() - waited
                if message is not None:
                    if message[0] == "stop":
                        return
                    production.add(message[1])
                continue
            r, batch = production.sample_next(weights, slots.named)
            batch.stats["producer/idle_s"] = idle
            idle = 0.0
            results.put(("batch", r, encode_batch(batch)))
    except BaseException:
        results.put(("error", production.next if production is not None else start, traceback.format_exc()))
        raise SystemExit(1) from None
    finally:
        if production is not None:
            production.close()
