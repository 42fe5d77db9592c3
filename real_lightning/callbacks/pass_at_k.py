"""Pass@k per validation set, logged at the end of each validation (and test) epoch."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from torchmetrics import MeanMetric, SumMetric
from typing_extensions import override

from real_lightning.analysis.evaluation import BenchmarkResult, with_average, write_tables
from real_lightning.analysis.metrics import PassAtK
from real_lightning.callbacks.log_folder import local_log_folder
from real_lightning.rollout.batch import ValidationRollouts


class PassAtKLogger(Callback):
    """Logs ``{stage}/{dataset}/pass@{k}`` for each k, plus response length and truncation rate.

    Keeps the history of every validation (``history[dataset] = [(step, pass@1), ...]``) in its
    state, so that a resumed run still knows the Pass@1 it started from.

    With several validation sets it also logs ``{stage}/average/...``, their unweighted mean (the paper's
    "Avg."), and with ``tables`` global rank 0 writes the results as Markdown and CSV tables laid out like the
    paper's Table 1 (:mod:`real_lightning.analysis.evaluation`) to ``<log dir>/evaluation/step_<step>.md|.csv`` and
    ``latest.md|.csv`` (log dir: the logger's run folder, else ``trainer.default_root_dir``).

    Args:
        ks: the k values; each must be ≤ the number of samples per prompt.
        tables: write the evaluation tables after every validation (and test).
        model_name: how the tables name the policy (``real-lightning`` sets it to ``model.pretrained``).

    Examples:
        >>> PassAtKLogger(ks=(1, 8))
        PassAtKLogger(ks=(1, 8))
    """

    def __init__(self, ks: tuple[int, ...] | list[int] = (1,), tables: bool = True, model_name: str = "policy") -> None:
        if not ks or any(k < 1 for k in ks):
            raise ValueError(f"ks must be positive integers, got {ks}")
        self.ks = tuple(ks)
        self.tables = tables
        self.model_name = model_name
        self.history: dict[str, list[tuple[int, float]]] = {}
        self._metrics: dict[str, dict[int, PassAtK]] = {}
        self._lengths: dict[str, MeanMetric] = {}
        self._truncated: dict[str, MeanMetric] = {}
        self._prompts: dict[str, SumMetric] = {}
        self._samples: dict[str, int] = {}

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
        self._metrics, self._lengths, self._truncated, self._prompts, self._samples = {}, {}, {}, {}, {}

    def _update(self, outputs: Any) -> None:
        if not isinstance(outputs, ValidationRollouts):
            return
        name = outputs.dataset
        if name not in self._metrics:
            self._metrics[name] = {k: PassAtK(k) for k in self.ks}
            self._lengths[name], self._truncated[name], self._prompts[name] = MeanMetric(), MeanMetric(), SumMetric()
        for metric in self._metrics[name].values():
            metric.update(outputs.correct.cpu())
        self._prompts[name].update(float(outputs.correct.shape[0]))
        if outputs.correct.numel():  # a rank's padding request has no rows
            self._samples[name] = int(outputs.correct.shape[-1])
            self._lengths[name].update(outputs.response_lengths.float().flatten())
            self._truncated[name].update(outputs.truncated.float().flatten())

    def _log(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # every metric here reduces its sums over all ranks in compute(): the logged values are global
        results = []
        for name, metrics in self._metrics.items():
            pass_at = {k: float(metric.compute()) for k, metric in metrics.items()}
            results.append(
                BenchmarkResult(
                    name=name,
                    prompts=int(self._prompts[name].compute()),
                    samples=self._samples.get(name, 0),
                    pass_at=pass_at,
                    length=float(self._lengths[name].compute()),
                    truncated=float(self._truncated[name].compute()),
                )
            )
            if 1 in pass_at and not trainer.sanity_checking:
                self.history.setdefault(name, []).append((trainer.global_step, pass_at[1]))
        for r in with_average(results):
            for k, value in r.pass_at.items():
                pl_module.log(f"{stage}/{r.name}/pass@{k}", value, prog_bar=k == 1, add_dataloader_idx=False)
            pl_module.log(f"{stage}/{r.name}/response_length_mean", r.length, add_dataloader_idx=False)
            pl_module.log(f"{stage}/{r.name}/truncation_rate", r.truncated, add_dataloader_idx=False)
        if self.tables and results and not trainer.sanity_checking and trainer.is_global_zero:
            folder = local_log_folder(trainer) / "evaluation"  # rank 0 only: no collective (not trainer.log_dir)
            label = f"{self.model_name} (step {trainer.global_step})"
            write_tables(results, folder, trainer.global_step, label=label)
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
