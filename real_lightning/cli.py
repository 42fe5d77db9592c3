"""The ``real-lightning`` command: LightningCLI with ``fit``, ``validate`` and ``test``.

real-lightning fit -c configs/quickstart.yaml
real-lightning validate -c configs/quickstart.yaml --ckpt_path runs/.../last.ckpt
real-lightning validate -c configs/quickstart.yaml --model.pretrained runs/quickstart/hf
"""

from __future__ import annotations

import copy
import os
import signal
import sys
from pathlib import Path

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from real_lightning.callbacks.pass_at_k import PassAtKLogger
from real_lightning.callbacks.run_health import RunHealthMonitor
from real_lightning.callbacks.stopping import GracefulStop, StopRequested
from real_lightning.checkpoints.resume import (
    ALLOW_FLAG,
    REFUSED,
    RunOptions,
    check_changes,
    flatten_options,
    hparams_options,
    keep_logs_before,
    option_changes,
    read_checkpoint_info,
    resolve_checkpoint,
    saved_options,
)
from real_lightning.data.datamodule import RolloutDataModule
from real_lightning.losses.specs import describe_specs
from real_lightning.module import RealPolicyModule


def _class_path(callback: object) -> str:
    """A configured callback's class path (a parsed ``class_path``/``init_args`` entry or an instance)."""
    if hasattr(callback, "get") and callback.get("class_path"):
        return str(callback.get("class_path"))
    return f"{type(callback).__module__}.{type(callback).__qualname__}"


class RealLightningCLI(LightningCLI):
    """LightningCLI for :class:`RealPolicyModule` and :class:`RolloutDataModule`.

    Adds ``--pass_at_k.ks`` (the always-on :class:`PassAtKLogger`), ``--health.*`` (the always-on
    :class:`~real_lightning.callbacks.run_health.RunHealthMonitor`: ``--health.stop_on [no_learning_signal]``,
    ``--health.patience 10``) and, for ``fit``,
    ``--validate_before_fit`` (measure the starting policy first, so that the run reports
    "Pass@1 before: …, after: …"). ``fit --ckpt_path last`` (or a checkpoint path) resumes the run
    into its own log folder (:mod:`real_lightning.checkpoints.resume`) and skips the validation before fit: it lists the
    options changed since the checkpoint, applies them (lr included) and refuses those that change what the
    run is unless ``--resume_allow_changes`` names them.
    """

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(PassAtKLogger, "pass_at_k")
        parser.add_lightning_class_args(RunHealthMonitor, "health")
        # the data side and the evaluation tables name the policy by the option that loads it, not by the module
        parser.link_arguments("model.pretrained", "data.tokenizer_from")
        parser.link_arguments("model.pretrained", "pass_at_k.model_name")
        parser.add_argument(
            "--validate_before_fit",
            type=bool,
            default=False,
            help="run a full validation before training starts (fit only)",
        )
        parser.add_argument(
            ALLOW_FLAG,
            type=list[str],
            default=[],
            help=(
                "fit --ckpt_path: options that may differ from the checkpoint's although they change what the run is "
                f"(names or groups, or [all]): {', '.join(REFUSED)}. Other changes (lr, max_steps, logging, "
                "validation, ...) always apply and are listed"
            ),
        )
        for action in parser._actions:  # --help lists the typed losses' hyper-parameters, defaults and docs
            if action.dest == "model.loss":
                action.help = f"{action.help} {describe_specs()}"

    @override
    def before_instantiate_classes(self) -> None:
        """``--trainer.enable_checkpointing false`` on a config that lists a ``ModelCheckpoint`` (every shipped
        one does): those callbacks are dropped, with a notice, instead of Lightning's refusal to build the trainer."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.get("trainer")
        if trainer is None or trainer.get("enable_checkpointing") is not False:
            return
        callbacks = trainer.get("callbacks") or []
        kept = [c for c in callbacks if not str(_class_path(c)).endswith("ModelCheckpoint")]
        if len(kept) != len(callbacks):
            trainer["callbacks"] = kept
            rank_zero_info("--trainer.enable_checkpointing false: the config's ModelCheckpoint callbacks are left out")

    def _parse_ckpt_path(self) -> None:
        """``fit``: keep the options given (Lightning would replace the model's with the checkpoint's);
        :meth:`before_fit` compares them. ``validate``/``test``: Lightning's behaviour."""
        if self.config.get("subcommand") != "fit":
            super()._parse_ckpt_path()

    def _pass_at_k(self) -> PassAtKLogger | None:
        return next((cb for cb in self.trainer.callbacks if isinstance(cb, PassAtKLogger)), None)

    def _run_options(self) -> dict:
        """This run's options (the configuration as ``--print_config`` shows it), saved in its checkpoints."""
        self._dump_config()
        return copy.deepcopy(self.config_dump)

    def before_fit(self) -> None:
        config = self.config[self.subcommand]
        options = self._run_options()
        model, optimizer = config["model"], None
        if config.get("optimizer") is None and config.get("lr_scheduler") is None:  # the module's own AdamW
            optimizer = {"lr": model["lr"], "betas": tuple(model["betas"]), "weight_decay": model["weight_decay"]}
        self.trainer.callbacks.append(RunOptions(options, optimizer))  # saved in checkpoints; lr etc. on resume
        self.trainer.callbacks.append(GracefulStop())  # last: SIGTERM/SIGINT stop after a step, with a checkpoint
        ckpt_path = config.get("ckpt_path")
        if ckpt_path is not None:
            checkpoint = resolve_checkpoint(self.trainer, str(ckpt_path))
            step = self._check_resume(checkpoint, options, config.get("resume_allow_changes") or [])
            keep_logs_before(self.trainer, step)
            self.config_init[self.subcommand]["ckpt_path"] = str(checkpoint)  # `last` resolved: the one compared
        elif config.get("validate_before_fit"):
            self.trainer.validate(self.model, datamodule=self.datamodule)

    def _check_resume(self, checkpoint: Path, options: dict, allowed: list[str]) -> int:
        """Compare the checkpoint's options with this run's: report the changes, refuse those in ``REFUSED``
        (:class:`~real_lightning.checkpoints.resume.ResumeRefused`) unless allowed; returns the checkpoint's step."""
        info = read_checkpoint_info(checkpoint)  # weights_only, memory-mapped; a directory checked first
        step = int(info["global_step"])
        old = saved_options(info)
        if old is not None:
            new = flatten_options(options)
        else:  # a checkpoint written without RunOptions: the hyper-parameters only
            old = hparams_options(info.get("hyper_parameters", {}), info.get("datamodule_hyper_parameters", {}))
            new = hparams_options(self.model.hparams, self.datamodule.hparams)
            rank_zero_info(f"{checkpoint} holds only hyper-parameters: data.train and trainer options not compared")
        rank_zero_info(check_changes(checkpoint, step, option_changes(old, new, allowed)))
        return step

    def after_fit(self) -> None:
        callback = self._pass_at_k()
        if callback is None or self.trainer.global_rank != 0:
            return
        for name in self.datamodule.val_names:
            runs = callback.first_and_last(name)
            if runs:
                rank_zero_info(f"[{name}] Pass@1 before: {runs[0]:.4f}, after: {runs[1]:.4f}")


def main(args: list[str] | None = None) -> None:
    """Console entry point ``real-lightning`` (returns nothing: a console script would print a return value).

    ``plot`` goes to :mod:`real_lightning.analysis.viz`; every other subcommand to :class:`RealLightningCLI`.
    """
    argv = list(sys.argv[1:] if args is None else args)
    if argv[:1] == ["plot"]:
        from real_lightning.analysis.viz import main as plot_main

        plot_main(argv[1:])
        return
    try:
        RealLightningCLI(
            RealPolicyModule,
            RolloutDataModule,
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except StopRequested as stop:  # SIGTERM/SIGINT during fit: a checkpoint was written
        rank_zero_info(str(stop))
        _close_process_group()
        sys.exit(stop.exit_code)
    except SIGTERMException:  # Lightning's own SIGTERM stop (validate, test): no checkpoint to keep
        rank_zero_info("Stopped by SIGTERM")
        _close_process_group()
        sys.exit(128 + signal.SIGTERM)
    _close_process_group()


_ran_distributed = False
"""Whether this process destroyed a process group of several ranks (:func:`entry` then ends it at once)."""


def _close_process_group() -> None:
    """Destroy the default process group after a run that ended normally or by a stop (every rank gets here),
    so its threads and sockets close before the interpreter exits rather than in its teardown. Not after a
    failure: the other ranks may still wait in a collective."""
    import torch.distributed as dist

    global _ran_distributed
    if dist.is_available() and dist.is_initialized():
        _ran_distributed = _ran_distributed or dist.get_world_size() > 1
        dist.destroy_process_group()


def entry(args: list[str] | None = None) -> None:
    """The ``real-lightning`` command: :func:`main`, then, in a rank of a distributed run, the end of the process
    right after Python's exit handlers (flushed output, closed loggers and worker processes), without the C++
    teardown of torch's static objects, which aborted a rank now and then after its work was done and saved
    ("terminate called without an active exception", seen in CI about once in 40 two-rank runs)."""
    code = 0
    try:
        main(args)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if not _ran_distributed:
            raise
    if _ran_distributed:
        import atexit

        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    entry()
