"""Callbacks that subprocess runs load by class path: record every step exactly, die on purpose."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


def _hex(values: torch.Tensor) -> list[str]:
    return [float(v).hex() for v in values.double().flatten().tolist()]


def _full(param: torch.Tensor) -> torch.Tensor:
    """The whole parameter (a collective for an FSDP shard)."""
    return param.full_tensor() if hasattr(param, "full_tensor") else param


def _local(param: torch.Tensor) -> torch.Tensor:
    """This rank's part of the parameter (its FSDP shard, or all of it)."""
    return param.to_local() if hasattr(param, "to_local") else param


class StepRecorder(Callback):
    """Appends one JSON line per optimizer step (rank 0 and others to ``<path>.rank<r>``): the loss, the
    rollouts' rewards and group ids, and the per-rollout weights, as exact hex floats."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        out, rollouts = outputs.get("loss_output"), outputs.get("rollouts")
        record = {
            "step": trainer.global_step,
            "request": list(batch[:3]),
            "loss": _hex(out.loss) if out is not None else None,
            "weights": _hex(out.metrics["grad_weights"]) if out is not None else [],
            "rewards": _hex(rollouts.rewards) if rollouts is not None else [],
            "prompts": rollouts.prompt_ids.tolist() if rollouts is not None else [],
            "param_sum": float(sum(_full(p).double().sum() for p in pl_module.policy.parameters())).hex(),
            "local_numel": sum(_local(p).numel() for p in pl_module.policy.parameters()),
        }
        path = Path(self.path if trainer.global_rank == 0 else f"{self.path}.rank{trainer.global_rank}")
        with path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())


class KillAtStep(Callback):
    """SIGKILLs its own process once ``step`` optimizer steps are done (before that step's checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class NanLossOnRank(Callback):
    """Makes every loss of optimizer step ``step`` (0-based) non-finite on rank ``rank`` only."""

    def __init__(self, rank: int, step: int) -> None:
        self.rank, self.step = rank, step
        self._original: Any = None

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.global_rank != self.rank or trainer.global_step != self.step:
            return
        self._original = original = pl_module.loss_fn

        def nan_loss(**kwargs: Any) -> Any:
            out = original(**kwargs)
            out.loss = out.loss * float("nan")
            return out

        pl_module.loss_fn = nan_loss

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._original is not None:
            pl_module.loss_fn, self._original = self._original, None
