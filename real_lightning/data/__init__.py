"""Datasets, prompts and the rollout DataModule."""

from real_lightning.data.arithmetic import ArithmeticTask
from real_lightning.data.countdown import CountdownTask
from real_lightning.data.datamodule import RolloutDataModule
from real_lightning.data.records import PromptRecord
from real_lightning.data.sources import DatasetSpec, load_dataset_spec

__all__ = ["ArithmeticTask", "CountdownTask", "DatasetSpec", "PromptRecord", "RolloutDataModule", "load_dataset_spec"]
