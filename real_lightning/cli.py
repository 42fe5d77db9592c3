"""The ``real-lightning`` command: LightningCLI with ``fit``, ``validate`` and ``test``.

real-lightning fit -c configs/quickstart.yaml
real-lightning validate -c configs/quickstart.yaml --ckpt_path runs/.../last.ckpt
real-lightning validate -c configs/quickstart.yaml --model.pretrained runs/quickstart/hf
"""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from real_lightning.callbacks.pass_at_k import PassAtKLogger
from real_lightning.callbacks.run_health import RunHealthMonitor
from real_lightning.data.datamodule import RolloutDataModule
from real_lightning.module import RealPolicyModule
from real_lightning.resume import attach_loggers_to_run


class RealLightningCLI(LightningCLI):
    """LightningCLI for :class:`RealPolicyModule` and :class:`RolloutDataModule`.

    Adds ``--pass_at_k.ks`` (the always-on :class:`PassAtKLogger`), ``--health.*`` (the always-on
    :class:`~real_lightning.callbacks.run_health.RunHealthMonitor`: ``--health.stop_on [no_learning_signal]``,
    ``--health.patience 10``) and, for ``fit``,
    ``--validate_before_fit`` (measure the starting policy first, so that the run reports
    "Pass@1 before: …, after: …"). ``fit --ckpt_path last`` (or a checkpoint path) resumes the run
    into its own log folder (:mod:`real_lightning.resume`) and skips the validation before fit.
    """

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(PassAtKLogger, "pass_at_k")
        parser.add_lightning_class_args(RunHealthMonitor, "health")
        parser.add_argument(
            "--validate_before_fit",
            type=bool,
            default=False,
            help="run a full validation before training starts (fit only)",
        )

    def _pass_at_k(self) -> PassAtKLogger | None:
        return next((cb for cb in self.trainer.callbacks if isinstance(cb, PassAtKLogger)), None)

    def before_fit(self) -> None:
        ckpt_path = self.config[self.subcommand].get("ckpt_path")
        resuming = attach_loggers_to_run(self.trainer, ckpt_path) is not None or (
            ckpt_path is not None and Path(ckpt_path).exists()
        )
        if self.config[self.subcommand].get("validate_before_fit") and not resuming:
            self.trainer.validate(self.model, datamodule=self.datamodule)

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

    ``plot`` goes to :mod:`real_lightning.viz`; every other subcommand to :class:`RealLightningCLI`.
    """
    argv = list(sys.argv[1:] if args is None else args)
    if argv[:1] == ["plot"]:
        from real_lightning.viz import main as plot_main

        plot_main(argv[1:])
        return
    RealLightningCLI(
        RealPolicyModule,
        RolloutDataModule,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
