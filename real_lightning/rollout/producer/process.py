"""A rollout producer in a worker process of its own (spawned: it inherits no thread, CUDA state or process group),
fed weights through shared memory (:mod:`~real_lightning.rollout.producer.slots`) and messages
(:mod:`~real_lightning.rollout.producer.worker`)."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import time
from collections.abc import Iterable
from typing import Any

import torch.multiprocessing as mp
from torch import Tensor

from real_lightning.rollout.producer.base import RolloutProducer
from real_lightning.rollout.producer.production import ProducerJob
from real_lightning.rollout.producer.slots import WeightSlots, layout
from real_lightning.rollout.producer.versions import Published
from real_lightning.rollout.producer.worker import decode_batch, run_worker
from real_lightning.utils.main_module import refers_to_main, without_main_module


class ProcessProducer(RolloutProducer):
    """Samples in a spawned worker process with ``config.threads`` torch threads, ahead of the trainer."""

    process: Any = None
    slots: WeightSlots | None = None

    def _start(self, job: ProducerJob, start: int, parameters: list[tuple[str, Tensor]]) -> None:
        entries, size = layout(parameters)
        self.slots = WeightSlots.allocate(entries, size, self.schedule.max_staleness + 1, shared=True)
        context = mp.get_context("spawn")
        self.commands, self.results = context.Queue(), context.Queue()
        self.rank = job.rank
        self.process = context.Process(
            target=run_worker,
            args=(job, start, self.slots, self.commands, self.results, self.config.threads, os.getpid()),
            name=f"real-lightning-rollout-producer-rank{job.rank}",
            daemon=True,  # ended with the trainer's process even when close() is never reached
        )
        # the worker loads the job's modules, not the program's __main__ (the CLI: Lightning), unless the job needs it
        with contextlib.nullcontext() if refers_to_main(job) else without_main_module():
            self.process.start()

    def _publish(self, published: Published, weights: Iterable[tuple[str, Tensor]]) -> None:
        assert self.slots is not None
        self.slots.write(published.slot, weights)
        self.commands.put(("publish", published))

    def _receive(self, rollout_index: int, deadline: float) -> None:
        while True:
            try:
                message = self.results.get(timeout=1.0)
                break
            except queue.Empty:
                if not self.process.is_alive():
                    self._fail(rollout_index, self._death())
                if time.monotonic() > deadline:
                    self._fail(
                        rollout_index,
                        f"it sent nothing for data.producer.timeout_s = {self.config.timeout_s:g} s (it hangs, or "
                        "sampling one rollout batch takes longer: raise the timeout)",
                    )
        if message[0] == "error":
            self._fail(rollout_index, f"it failed while sampling rollout batch {message[1]}:\n{message[2]}")
        self.received[message[1]] = decode_batch(message[2])

    def _death(self) -> str:
        code = self.process.exitcode
        how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exited with code {code}"
        return f"its process {how}"

    def _fail(self, rollout_index: int, why: str) -> None:
        pid = self.process.pid if self.process is not None else None
        self.close()
        raise RuntimeError(
            f"the rollout producer of rank {self.rank} (process {pid}) stopped the run while the trainer waited "
            f"for rollout batch {rollout_index}: {why}. The checkpoints written so far hold the batches in flight: "
            "resume with --ckpt_path last"
        )

    def close(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.is_alive():
            with contextlib.suppress(OSError, ValueError):
                self.commands.put(("stop",))
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
        for channel in (self.commands, self.results):
            channel.cancel_join_thread()
            channel.close()
        self.slots = None
