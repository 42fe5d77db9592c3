"""Resuming into the run's own log folder: the version is found, events and rows after the checkpoint go."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from real_lightning.checkpoints.resume import attach_loggers_to_run, find_run


def _run_folder(root: Path, version: int, step: int) -> Path:
    checkpoints = root / f"version_{version}" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save({"global_step": step}, checkpoints / "last.ckpt")
    return checkpoints / "last.ckpt"


def test_find_run_takes_the_newest_last_checkpoint_or_the_given_path(tmp_path) -> None:
    root = tmp_path / "runs" / "job"
    old = _run_folder(root, 0, 3)
    new = _run_folder(root, 1, 5)
    import os

    os.utime(old, (1, 1))
    assert find_run(root, "last") == (new.parent.parent, new)
    assert find_run(root, str(old)) == (old.parent.parent, old.resolve())
    assert find_run(tmp_path / "elsewhere", "last") is None
    assert find_run(root, str(tmp_path / "x.ckpt")) is None


def test_csv_rows_before_the_checkpoint_are_kept_and_appended_to(tmp_path) -> None:
    root = tmp_path / "runs" / "job"
    _run_folder(root, 0, 3)
    metrics = root / "version_0" / "metrics.csv"
    with metrics.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "train/loss"])
        writer.writeheader()
        writer.writerows([{"step": s, "train/loss": s / 10} for s in range(6)])  # the killed run got to step 5
    logger = CSVLogger(tmp_path / "runs", name="job")
    trainer = pl.Trainer(logger=logger, enable_progress_bar=False, enable_model_summary=False)
    assert attach_loggers_to_run(trainer, "last") == 3
    assert logger.version == 0
    logger.log_metrics({"train/loss": 0.35}, step=3)
    logger.save()
    with metrics.open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3] and rows[-1]["train/loss"] == "0.35"


def test_tensorboard_purges_events_after_the_checkpoint(tmp_path) -> None:
    root = tmp_path / "runs" / "job"
    _run_folder(root, 2, 7)
    logger = TensorBoardLogger(tmp_path / "runs", name="job")
    explicit = TensorBoardLogger(tmp_path / "runs", name="job", version=9)
    trainer = pl.Trainer(logger=[logger, explicit], enable_progress_bar=False, enable_model_summary=False)
    assert attach_loggers_to_run(trainer, "last") == 7
    assert logger.version == 2 and logger._kwargs["purge_step"] == 7
    assert explicit.version == 9 and "purge_step" not in explicit._kwargs  # an explicit version is left alone
    assert attach_loggers_to_run(trainer, None) is None
