"""Resuming a run into its own logs: the same version folder, events after the checkpoint replaced.

``real-lightning fit ... --ckpt_path last`` (or a checkpoint path) continues the run that wrote the
checkpoint. Lightning's loggers would otherwise start a new version folder (TensorBoard, CSV), where
``last`` is then not found, and the CSV logger deletes an existing ``metrics.csv``. Before ``fit``
starts, :func:`attach_loggers_to_run` points each logger without an explicit version at the run's
folder and drops what the interrupted run logged after the checkpoint (TensorBoard's ``purge_step``;
the CSV rows from that step on), so the resumed run appends to one clean history.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

_VERSION = re.compile(r"version_(\d+)$")


def _version_value(name: str) -> int | str:
    match = _VERSION.match(name)
    return int(match.group(1)) if match else name


def find_run(root: Path, ckpt_path: str) -> tuple[Path, Path] | None:
    """(version folder, checkpoint) of the run to resume under a logger's ``root`` (``save_dir/name``).

    ``ckpt_path`` is ``last`` (the newest ``checkpoints/last*.ckpt`` of any version folder) or a path
    inside a version folder's ``checkpoints``; None when nothing matches.
    """
    if ckpt_path == "last":
        candidates = [p for p in root.glob("*/checkpoints/last*.ckpt") if p.exists()]  # a directory: distributed
        if not candidates:
            return None
        newest = max(candidates, key=lambda p: p.stat().st_mtime)
        return newest.parent.parent, newest
    path = Path(ckpt_path).resolve()
    if path.parent.name == "checkpoints" and path.parent.parent.parent == root.resolve():
        return path.parent.parent, path
    return None


def checkpoint_step(path: Path) -> int:
    """The ``global_step`` stored in a Lightning checkpoint (memory-mapped, not loaded); for a distributed
    checkpoint (a directory of shards, FSDP) the one in its ``meta.pt``."""
    from lightning.fabric.utilities.load import _METADATA_FILENAME

    meta = path / _METADATA_FILENAME if path.is_dir() else path
    return int(torch.load(meta, map_location="cpu", mmap=True, weights_only=True)["global_step"])


def attach_loggers_to_run(trainer: Trainer, ckpt_path: str | None) -> int | None:
    """Point the trainer's TensorBoard/CSV loggers at the run ``ckpt_path`` resumes; returns its step.

    Loggers with an explicit ``version`` are left alone. Returns None when there is nothing to resume.
    """
    if not ckpt_path:
        return None
    step = None
    for logger in trainer.loggers:
        if not isinstance(logger, TensorBoardLogger | CSVLogger) or logger._version is not None:
            continue
        found = find_run(Path(logger.root_dir), ckpt_path)
        if found is None:
            continue
        folder, checkpoint = found
        step = checkpoint_step(checkpoint) if step is None else step
        logger._version = _version_value(folder.name)
        if isinstance(logger, TensorBoardLogger):
            logger._kwargs["purge_step"] = step  # events at steps >= step (logged after the checkpoint) go
        else:
            _keep_csv_rows_before(logger, step)
    return step


def _keep_csv_rows_before(logger: CSVLogger, step: int) -> None:
    """Keep ``metrics.csv`` (the CSV writer deletes it when created) without its rows at ``step`` or later."""
    path = Path(logger.log_dir) / "metrics.csv"
    if not path.is_file():
        return
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header, rows = list(reader.fieldnames or []), list(reader)
    path.unlink()
    writer = logger.experiment  # created now: nothing left for it to delete
    kept = [row for row in rows if row.get("step", "") == "" or int(float(row["step"])) < step]
    with path.open("w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=header)
        out.writeheader()
        out.writerows(kept)
    writer.metrics_keys = header
