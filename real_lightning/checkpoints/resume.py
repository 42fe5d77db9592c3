"""Resuming a run that tells the truth: the same checkpoint for ``last`` and a path, the options that
changed since the checkpoint listed and applied (or refused), and the run's own logs kept.

``real-lightning fit ... --ckpt_path last`` (or a checkpoint path) continues the run that wrote the
checkpoint (:meth:`~real_lightning.cli.RealLightningCLI.before_fit`):

* :func:`resolve_checkpoint` finds the checkpoint (``last``: the newest ``last*.ckpt`` of the logger's run
  folders and of the ``ModelCheckpoint`` folders), or raises :class:`NothingToResume` naming the folders searched;
* :func:`option_changes` compares the options the checkpoint was written with (:class:`RunOptions`, saved in
  every checkpoint of a ``real-lightning fit``; older checkpoints: the module's and datamodule's
  hyper-parameters) with today's; :data:`REFUSED` names those that change what the run is, which
  :func:`check_changes` refuses (:class:`ResumeRefused`) unless ``--resume_allow_changes`` names them.
  The others apply: the module and datamodule are built from today's options, and :class:`RunOptions` sets
  the restored optimizer's lr, betas and weight decay (the optimizer state would keep the checkpoint's);
* :func:`keep_logs_before` keeps each logger's history: Lightning's loggers would otherwise start a new
  version folder (TensorBoard, CSV), and the CSV logger deletes an existing ``metrics.csv``. Each
  TensorBoard/CSV logger without an explicit version is pointed at the run's folder; in it, and in the
  folder of a logger with a pinned version, what the interrupted run logged after the checkpoint goes
  (TensorBoard's ``purge_step``; the CSV rows from that step on) and everything before stays.

Every rank reads the same files and decides the same; nothing here communicates.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from typing_extensions import override

from real_lightning.checkpoints.safety import META_FILENAME, check_checkpoint_dir

_VERSION = re.compile(r"version_(\d+)$")

ALLOW_FLAG = "--resume_allow_changes"

REFUSED: dict[str, str] = {
    "model.pretrained": "the policy the weights belong to",
    "model.dtype": "the parameters' dtype",
    "model.fsdp": "the parameters' sharding and precision",
    "model.loss": "the objective",
    "model.loss_kwargs": "the objective",
    "model.kl_coef": "the objective",
    "model.kl_estimator": "the objective",
    "model.kl_clamp": "the objective",
    "data.train": "the training prompts (the saved data position indexes them)",
    "data.seed": "the prompt order and sampling seeds (the saved data position follows them)",
    "data.prompts": "the prompts the policy sees",
    "data.schedule.prompts_per_rollout": "the data position and the rollout batch in flight",
    "data.schedule.rollouts_per_prompt": "the data position and the rollout batch in flight",
    "data.schedule.prompts_per_minibatch": "the data position and the rollout batch in flight",
    "data.schedule.ppo_epochs": "the data position and the rollout batch in flight",
    "data.schedule.dynamic_sampling": "the data position and the rollout batch in flight",
    "data.schedule.max_sampling_rounds": "the data position and the rollout batch in flight",
    "data.verifier.reward": "the reward",
    "data.verifier.grader": "the reward",
    "data.verifier.answer_after_think": "the reward",
    "data.verifier.truncated_is_wrong": "the reward",
}
"""Options (and groups of options: ``data.train`` covers ``data.train.source``, ...) whose change makes a
resumed run another run: the model it trains, the objective, the data and its position, the reward.
A resume that changes one is refused unless ``--resume_allow_changes`` names it (or ``all``). Every
other option may change (lr, max_steps, logging, validation, the engine, callbacks ...) and applies."""

_NOT_OPTIONS = {"ckpt_path", "config", "resume_allow_changes", "print_config"}
_UNSET = "(unset)"


class NothingToResume(FileNotFoundError):
    """``--ckpt_path`` names no checkpoint (``last``: none in the folders searched)."""


class ResumeRefused(ValueError):
    """The resume would change options that define the run (:data:`REFUSED`)."""


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


def read_checkpoint_info(path: Path) -> dict[str, Any]:
    """The checkpoint without its tensors' data: memory-mapped, ``weights_only``; for a distributed checkpoint
    (a directory of shards, FSDP) its ``meta.pt``, after the directory passed
    :func:`~real_lightning.checkpoints.safety.check_checkpoint_dir`."""
    if path.is_dir():
        check_checkpoint_dir(path)
        path = path / META_FILENAME
    return torch.load(path, map_location="cpu", mmap=True, weights_only=True)


def checkpoint_step(path: Path) -> int:
    """The ``global_step`` stored in a Lightning checkpoint (memory-mapped, not loaded); for a distributed
    checkpoint (a directory of shards, FSDP) the one in its ``meta.pt``."""
    meta = path / META_FILENAME if path.is_dir() else path
    return int(torch.load(meta, map_location="cpu", mmap=True, weights_only=True)["global_step"])


def _file_loggers(trainer: Trainer) -> list[TensorBoardLogger | CSVLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger | CSVLogger)]


def _attach_versions(trainer: Trainer, ckpt_path: str) -> Path | None:
    """Point each TensorBoard/CSV logger without an explicit version at the run ``ckpt_path`` belongs to (the
    newest run with a ``last*.ckpt`` for ``last``); returns that run's checkpoint, None if none was found."""
    checkpoint = None
    for logger in _file_loggers(trainer):
        if logger._version is not None:
            continue
        found = find_run(Path(logger.root_dir), ckpt_path)
        if found is None:
            continue
        folder, path = found
        checkpoint = path if checkpoint is None else checkpoint
        logger._version = _version_value(folder.name)
    return checkpoint


def _checkpoint_dirs(trainer: Trainer) -> list[Path]:
    """Where Lightning's ``ModelCheckpoint`` callbacks save (and ``ckpt_path="last"`` looks)."""
    dirs = []
    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint):
            continue
        if callback.dirpath is not None:
            dirs.append(Path(callback.dirpath))
        elif trainer.loggers:
            logger = trainer.loggers[0]
            version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
            dirs.append(Path(logger.save_dir or trainer.default_root_dir) / str(logger.name) / version / "checkpoints")
        else:
            dirs.append(Path(trainer.default_root_dir) / "checkpoints")
    return dirs


def resolve_checkpoint(trainer: Trainer, ckpt_path: str) -> Path:
    """The checkpoint ``--ckpt_path`` resumes, with the loggers pointed at its run (:func:`_attach_versions`).

    ``last``: the newest ``last*.ckpt`` (file or distributed directory) among the loggers' run folders
    (``save_dir/name/*/checkpoints``) and the ``ModelCheckpoint`` folders. Raises :class:`NothingToResume`
    (naming the folders searched) when there is none, or when a path names nothing.
    """
    attached = _attach_versions(trainer, ckpt_path)
    if ckpt_path != "last":
        path = Path(ckpt_path)
        if not path.exists():
            raise NothingToResume(
                f"--ckpt_path {ckpt_path}: no such checkpoint. To start a new run, drop --ckpt_path; to resume "
                "the newest run of this configuration, pass --ckpt_path last."
            )
        return path
    candidates = {attached} if attached is not None else set()
    searched = [Path(logger.root_dir) / "*" / "checkpoints" for logger in _file_loggers(trainer)]
    for folder in _checkpoint_dirs(trainer):
        searched.append(folder)
        if folder.is_dir():
            candidates |= {p for p in folder.iterdir() if p.suffix == ".ckpt" and re.match(r"last(-\d+)?$", p.stem)}
    if not candidates:
        where = "\n  ".join(dict.fromkeys(str(p) for p in searched)) or "(no logger and no ModelCheckpoint)"
        raise NothingToResume(
            f"--ckpt_path last: nothing to resume, no last*.ckpt in\n  {where}\n"
            "Check trainer.logger's save_dir and name (or the ModelCheckpoint dirpath) if a run should be there; "
            "to start a new run, drop --ckpt_path."
        )
    return max(candidates, key=lambda p: p.stat().st_mtime)


def keep_logs_before(trainer: Trainer, step: int) -> None:
    """In each TensorBoard/CSV logger's existing folder (attached to the run or pinned by ``version``), drop what
    was logged at ``step`` or later (after the checkpoint) and keep everything before. The CSV file is rewritten
    by global rank 0 only (the other ranks' CSV loggers write nothing)."""
    for logger in _file_loggers(trainer):
        if logger._version is None or not Path(logger.log_dir).is_dir():
            continue  # a new folder: nothing logged yet
        if isinstance(logger, TensorBoardLogger):
            logger._kwargs["purge_step"] = step  # events at steps >= step (logged after the checkpoint) go
        elif trainer.is_global_zero:
            _keep_csv_rows_before(logger, step)


def attach_loggers_to_run(trainer: Trainer, ckpt_path: str | None) -> int | None:
    """Point the trainer's TensorBoard/CSV loggers at the run ``ckpt_path`` resumes and keep their logs before
    its step (:func:`keep_logs_before`); returns the step, None when there is nothing to resume."""
    if not ckpt_path:
        return None
    checkpoint = _attach_versions(trainer, ckpt_path)
    if checkpoint is None:
        return None
    step = checkpoint_step(checkpoint)
    keep_logs_before(trainer, step)
    return step


def _keep_csv_rows_before(logger: CSVLogger, step: int) -> None:
    """Keep ``metrics.csv`` (the CSV writer deletes it when created) without its rows at ``step`` or later."""
    path = Path(logger.log_dir) / "metrics.csv"
    if not path.is_file():
        return
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header, rows = list(reader.fieldnames or []), list(reader)
    kept = [row for row in rows if row.get("step", "") == "" or int(float(row["step"])) < step]
    staged = path.with_name(path.name + ".resume")
    os.replace(path, staged)  # out of the writer's way; back below (a crash in between leaves it there)
    with warnings.catch_warnings():  # "previous log files ... will be deleted": not here
        warnings.filterwarnings("ignore", message="Experiment logs directory")
        writer = logger.experiment  # created now: nothing left for it to delete
    with path.open("w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=header)
        out.writeheader()
        out.writerows(kept)
    staged.unlink()
    writer.metrics_keys = header


# --- options ------------------------------------------------------------------------------------------


def flatten_options(options: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested options as ``{"model.lr": 0.01, "data.schedule.rollouts_per_prompt": 8, ...}`` (lists and empty
    dicts are values; tuples become lists; dataclasses dicts)."""
    flat: dict[str, Any] = {}
    for key, value in options.items():
        if (not prefix and key in _NOT_OPTIONS) or str(key).startswith("_"):
            continue
        name = f"{prefix}{key}"
        if is_dataclass(value) and not isinstance(value, type):
            value = asdict(value)
        if isinstance(value, Mapping) and value:
            flat.update(flatten_options(value, f"{name}."))
        else:
            flat[name] = _plain(value)
    return flat


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def hparams_options(hparams: Mapping[str, Any], datamodule_hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Options from a module's and a datamodule's hyper-parameters (the datamodule's are under ``data``)."""
    return flatten_options({"model": dict(hparams), **dict(datamodule_hparams)})


def saved_options(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The options a ``real-lightning fit`` saved with the checkpoint (:class:`RunOptions`), None if none."""
    state = (checkpoint.get("callbacks") or {}).get(RunOptions.__qualname__) or {}
    options = state.get("options")
    return flatten_options(options) if options else None


@dataclass(frozen=True)
class OptionChange:
    """One option that differs between the checkpoint's run and this one; ``refused``: why it may not change."""

    name: str
    old: Any
    new: Any
    refused: str | None = None

    def describe(self) -> str:
        return f"{self.name}: {_show(self.old)} → {_show(self.new)}"


def _show(value: Any, limit: int = 160) -> str:
    text = value if value is _UNSET else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _rule(name: str, rules: Iterable[str]) -> str | None:
    """The longest of ``rules`` that is ``name`` or a group containing it (``data.train`` for ``data.train.source``)."""
    matches = [rule for rule in rules if name == rule or name.startswith(rule + ".")]
    return max(matches, key=len) if matches else None


def option_changes(old: Mapping[str, Any], new: Mapping[str, Any], allowed: Iterable[str] = ()) -> list[OptionChange]:
    """The options that differ (in ``old`` only, ``new`` only or with another value), sorted by name; those in
    :data:`REFUSED` carry the reason, unless ``allowed`` names them (or a group of them, or ``all``).

    An option the checkpoint does not have whose value is empty (None, false, an empty list, dict or string) is
    not a change: it is an option added to real-lightning since the checkpoint was written, at its off default."""
    allowed = list(allowed)
    changes = []
    for name in sorted(set(old) | set(new)):
        before, after = old.get(name, _UNSET), new.get(name, _UNSET)
        if before == after or (before == _UNSET and _off(after)):
            continue
        rule = _rule(name, REFUSED)
        refused = REFUSED[rule] if rule and "all" not in allowed and _rule(name, allowed) is None else None
        changes.append(OptionChange(name, before, after, refused))
    named = {c.name for c in changes}
    return [c for c in changes if not _emptied(c, named)]


def _off(value: Any) -> bool:
    return value is None or value is False or (isinstance(value, (list, tuple, dict, str)) and len(value) == 0)


def _emptied(change: OptionChange, named: set[str]) -> bool:
    """A dict that became (or stopped being) empty, its keys listed as changes of their own."""
    values = (change.old, change.new)
    return {} in values and _UNSET in values and any(n.startswith(change.name + ".") for n in named)


def check_changes(checkpoint: Path, step: int, changes: list[OptionChange]) -> str:
    """Raise :class:`ResumeRefused` if a change is refused; else the report of the changes that apply."""
    refused = [c for c in changes if c.refused]
    if refused:
        names = ", ".join(dict.fromkeys(_rule(c.name, REFUSED) or c.name for c in refused))
        lines = "\n  ".join(f"{c.describe()}  ({c.refused})" for c in refused)
        raise ResumeRefused(
            f"resuming {checkpoint} (step {step}) would change what the run is:\n  {lines}\n"
            "Resume with the checkpoint's values (drop the flags or config files that change them), start a new "
            f"run (drop --ckpt_path), or change them anyway with {ALLOW_FLAG} '[{names}]'."
        )
    if not changes:
        return f"resuming {checkpoint} (step {step}) with the options it was written with"
    lines = "\n  ".join(c.describe() for c in changes)
    return f"resuming {checkpoint} (step {step}); options changed since the checkpoint, applied:\n  {lines}"


class RunOptions(Callback):
    """Saves the run's options in every checkpoint and, on a resume, gives the restored optimizer today's.

    A restored optimizer keeps the checkpoint's ``lr``, ``betas`` and ``weight_decay`` (its ``param_groups``)
    and an LR scheduler its ``base_lrs``; ``optimizer`` (e.g. ``{lr: 1e-5}``) sets them again once the
    checkpoint is restored, the current lr scaled as the schedule scales it.

    Args:
        options: the run's options (the CLI's configuration, nested), saved under ``state_dict()["options"]``.
        optimizer: values for every optimizer param group after a resume (``lr`` also for the schedulers).

    Example::

        trainer = Trainer(callbacks=[RunOptions({"model": {"lr": 1e-5}}, {"lr": 1e-5})])
    """

    def __init__(self, options: Mapping[str, Any], optimizer: Mapping[str, Any] | None = None) -> None:
        self.options = _plain(dict(options))
        self.optimizer = dict(optimizer or {})

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"options": self.options}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing: the checkpoint's options were compared before fit; this run saves its own."""

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.ckpt_path is None or not self.optimizer:  # after the optimizer state is restored
            return
        apply_optimizer_options(trainer, self.optimizer)


def apply_optimizer_options(trainer: Trainer, values: Mapping[str, Any]) -> None:
    """Set ``values`` in every param group of the trainer's optimizers; a new ``lr`` also in the schedulers'
    ``base_lrs``, the groups' current lr scaled by new/old base (the schedule's factor kept). Unchanged values
    leave everything bit-identical."""
    lr = values.get("lr")
    scheduled = {id(config.scheduler.optimizer): config.scheduler for config in trainer.lr_scheduler_configs}
    for optimizer in trainer.optimizers:
        scheduler = scheduled.get(id(optimizer))
        for i, group in enumerate(optimizer.param_groups):
            group.update({k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k != "lr"})
            if lr is None:
                continue
            base = scheduler.base_lrs[i] if scheduler is not None else group.get("initial_lr", group["lr"])
            if base != lr:
                group["lr"] = group["lr"] * (lr / base) if base else lr
            if "initial_lr" in group:
                group["initial_lr"] = lr
        if scheduler is not None and lr is not None:
            scheduler.base_lrs = [lr] * len(optimizer.param_groups)
            scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
