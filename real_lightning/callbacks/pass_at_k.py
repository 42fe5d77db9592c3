"""Pass@k per validation set, logged at the end of each validation (and test) epoch."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from torchmetrics import MeanMetric
from typing_extensions import override

from real_lightning.metrics import PassAtK
from real_lightning.rollout.batch import ValidationRollouts


class PassAtKLogger(Callback):
    """Logs ``{stage}/{dataset}/pass@{k}`` for each k, plus response length and truncation rate.

    Keeps the history of every validation (``history[dataset] = [(step, pass@1), ...]``) in its
    state, so that a resumed run still knows the Pass@1 it started from.

    Args:
        ks: the k values; each must be ≤ the number of samples per prompt.

    Example:
        >>> PassAtKLogger(ks=(1, 8))
        PassAtKLogger(ks=(1, 8))
    """

    def __init__(self, ks: tuple[int, ...] | list[int] = (1,)) -> None:
        if not ks or any(k < 1 for k in ks):
            raise ValueError(f"ks must be positive integers, got {ks}")
        self.ks = tuple(ks)
        self.history: dict[str, list[tuple[int, float]]] = {}
        self._metrics: dict[str, dict[int, PassAtK]] = {}
        self._lengths: dict[str, MeanMetric] = {}
        self._truncated: dict[str, MeanMetric] = {}

    def __repr__(self) -> str:
        return f"PassAtKLogger(ks={self.ks})"

    @property
    def state_key(self) -> str:
        return self._generate_state_key(ks=self.ks)

    def first_and_last(self, dataset: str) -> tuple[float, float] | None:
        """Pass@1 at the first and the latest validation of ``dataset`` (None before any)."""
        runs = self.history.get(dataset)
        return (runs[0][1], runs[-1][1]) if runs else None

    def _reset(self) -> None:
        self._metrics, self._lengths, self._truncated = {}, {}, {}

    def _update(self, outputs: Any) -> None:
        if not isinstance(outputs, ValidationRollouts):
            return
        name = outputs.dataset
        if name not in self._metrics:
            self._metrics[name] = {k: PassAtK(k) for k in self.ks}
            self._lengths[name], self._truncated[name] = MeanMetric(), MeanMetric()
        for metric in self._metrics[name].values():
            metric.update(outputs.correct.cpu())
        if outputs.correct.numel():  # a rank's padding request has no rows
            self._lengths[name].update(outputs.response_lengths.float().flatten())
            self._truncated[name].update(outputs.truncated.float().flatten())

    def _log(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for name, metrics in self._metrics.items():
            for k, metric in metrics.items():
                value = metric.compute()
                pl_module.log(f"{stage}/{name}/pass@{k}", value.float(), prog_bar=k == 1, add_dataloader_idx=False)
                if k == 1 and not trainer.sanity_checking:
                    self.history.setdefault(name, []).append((trainer.global_step, float(value)))
            # every metric here reduces its sums over all ranks in compute(): the logged values are global
            for key, metric in (
                ("response_length_mean", self._lengths[name]),
                ("truncation_rate", self._truncated[name]),
            ):
                pl_module.log(f"{stage}/{name}/{key}", metric.compute().float(), add_dataloader_idx=False)
        self._reset()

    @override
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._reset()

    @override
    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._update(outputs)

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log(trainer, pl_module, "val")

    @override
    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._reset()

    @override
    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._update(outputs)

    @override
    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log(trainer, pl_module, "test")

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": {k: list(v) for k, v in self.history.items()}}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {k: [tuple(x) for x in v] for k, v in state_dict.get("history", {}).items()}
