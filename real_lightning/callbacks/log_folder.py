"""The run's log folder for callbacks that write files, found without a collective on rank 0.

``trainer.log_dir`` broadcasts rank 0's folder under multi-process strategies: called on rank 0 only (where files
are written) it waits for a broadcast the other ranks never join, and the run hangs. Code that every rank runs at
the same point (``setup``, a decision all ranks took) may call :func:`resolve_log_folder`; code that runs on rank
0 alone asks the logger instead (:func:`local_log_folder`).
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Trainer


def resolve_log_folder(trainer: Trainer) -> Path:
    """The trainer's log folder, the same on every rank. A collective: call it on every rank (in ``setup``)."""
    return Path(trainer.log_dir or trainer.default_root_dir)


def local_log_folder(trainer: Trainer) -> Path:
    """The first logger's folder as this process sees it, with no collective: safe on rank 0 alone.

    On rank 0 this is the folder ``trainer.log_dir`` broadcasts; other ranks may see another version number,
    so use it only where rank 0 writes.
    """
    logger = trainer.logger
    folder = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None) if logger is not None else None
    return Path(folder or trainer.default_root_dir)
