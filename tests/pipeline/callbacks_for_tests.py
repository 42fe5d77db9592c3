"""Callbacks that subprocess runs load by class path: record every step exactly, die on purpose."""

from __future__ import annotations

import json
import os
import signal
import signal as signal_module
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from real_lightning.step.output import step_output


def _hex(values: torch.Tensor) -> list[str]:
    return [float(v).hex() for v in values.double().flatten().tolist()]


def _full(param: torch.Tensor) -> torch.Tensor:
    """The whole parameter (a collective for an FSDP shard)."""
    return param.full_tensor() if hasattr(param, "full_tensor") else param


def _local(param: torch.Tensor) -> torch.Tensor:
    """This rank's part of the parameter (its FSDP shard, or all of it)."""
    return param.to_local() if hasattr(param, "to_local") else param


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _mismatch_max(rollouts: Any) -> float | None:
    """max |log π_old − log π_behaviour| over this rank's response tokens (None: the engine reports none)."""
    if rollouts is None or rollouts.behaviour_logprobs is None or rollouts.old_logprobs is None:
        return None
    gap = (rollouts.old_logprobs.double() - rollouts.behaviour_logprobs.double()).abs()
    return float(gap[rollouts.response_mask].max())


class StepRecorder(Callback):
    """Appends one JSON line per optimizer step (rank 0 and others to ``<path>.rank<r>``): the loss, the
    rollouts' rewards and group ids, and the per-rollout weights, as exact hex floats; the sum of the
    weights after the step, this rank's share of them, the logged gradient norm, the sampler mismatch and
    the longest response."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = step_output(outputs)
        out, rollouts = step.loss_output, step.rollouts
        record = {
            "step": trainer.global_step,
            "request": list(batch[:3]),
            "loss": _hex(out.loss) if out is not None else None,
            "weights": _hex(out.metrics["grad_weights"]) if out is not None else [],
            "rewards": _hex(rollouts.rewards) if rollouts is not None else [],
            "prompts": rollouts.prompt_ids.tolist() if rollouts is not None else [],
            "param_sum": float(sum(_full(p).double().sum() for p in pl_module.policy.parameters())).hex(),
            "local_numel": sum(_local(p).numel() for p in pl_module.policy.parameters()),
            "grad_norm": _number(trainer.callback_metrics.get("train/grad_norm")),
            "mismatch_max": _mismatch_max(rollouts),
            "longest_response": int(rollouts.response_mask.sum(-1).max()) if rollouts is not None else None,
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


class SignalAtStep(Callback):
    """Sends ``signal`` (a name: SIGTERM, SIGINT, SIGSTOP) to its own process when optimizer step ``step`` starts
    (1-based: the step that will end with ``global_step == step``), on rank ``rank`` only (None: every rank)."""

    def __init__(self, step: int, signal: str = "SIGTERM", rank: int | None = None) -> None:
        self.step, self.signum, self.rank = step, getattr(signal_module, signal), rank

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step - 1 and self.rank in (None, trainer.global_rank):
            os.kill(os.getpid(), self.signum)


class SignalInValidation(Callback):
    """Sends ``signal`` to its own process at validation batch ``batch`` of the validation that follows optimizer
    step ``step`` in a fit, on rank ``rank`` only (None: every rank)."""

    def __init__(self, step: int, batch: int = 0, signal: str = "SIGTERM", rank: int | None = None) -> None:
        self.step, self.batch, self.signum, self.rank = step, batch, getattr(signal_module, signal), rank

    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        if trainer.global_step == self.step and batch_idx == self.batch and self.rank in (None, trainer.global_rank):
            os.kill(os.getpid(), self.signum)


class RaiseAtStep(Callback):
    """Raises ``RuntimeError("broken reward service")`` when optimizer step ``step`` starts (1-based)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step - 1:
            raise RuntimeError("broken reward service")


class RankZeroLogDir(Callback):
    """The bug this suite guards against, on purpose: rank 0 alone reads ``trainer.log_dir`` (a broadcast) at
    the end of step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step and trainer.is_global_zero:
            trainer.log_dir


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


class ShorterGenerationOnRank(Callback):
    """Caps the rollout engine's ``max_new_tokens`` on rank ``rank`` only, so that the ranks' generate calls
    end at different lengths (a sharded policy then needs every rank to keep decoding until all are done)."""

    def __init__(self, rank: int, max_new_tokens: int) -> None:
        self.rank, self.max_new_tokens = rank, max_new_tokens

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if trainer.global_rank == self.rank:
            collector = trainer.datamodule.collector
            for engine in (collector.engine, collector.val_engine):
                engine.max_new_tokens = self.max_new_tokens
