"""RolloutDataModule: datasets, prompt formatting, the rollout engine and the verifier, for Lightning."""

from __future__ import annotations

import logging
from collections.abc import Callable

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase
from typing_extensions import override

from real_lightning.data.prompts import TokenizedPrompt, tokenize_prompts
from real_lightning.data.sources import DatasetSpec, load_dataset_spec
from real_lightning.rollout.engine import RolloutEngine
from real_lightning.rollout.hf import HFEngine
from real_lightning.rollout.scoring import Scorer
from real_lightning.rollout.stream import RolloutStream, ValidationStream

log = logging.getLogger(__name__)


class RolloutDataModule(LightningDataModule):
    """Streams rollouts for training and samples validation sets for Pass@k.

    Args:
        train: the training prompts.
        val: named validation sets (e.g. ``{math500: {source: ../shared/data/math500.parquet}}``);
            each is logged as ``val/<name>/pass@k``.
        engine: the rollout engine (default: ``HFEngine()``); its temperature is the one log-probs use.
        val_engine: engine for validation (default: the training engine).
        prompts_per_rollout: P, prompts per rollout batch (per rank).
        rollouts_per_prompt: n, responses sampled per prompt (the group size).
        prompts_per_minibatch: prompts (whole groups) per optimizer step; None: P, one update per rollout.
        ppo_epochs: passes over each rollout batch.
        dynamic_sampling: DAPO's dynamic sampling: drop groups whose rewards are all equal and sample
            more prompts until P groups are kept or ``max_sampling_rounds`` extra rounds are spent.
        max_sampling_rounds: cap on the extra rounds of dynamic sampling.
        recompute_old_logprobs: always compute π_old with a no-grad pass, even when the update is exactly
            on-policy (by default that pass is skipped then, and π_old = π_θ.detach()).
        max_prompt_length: prompts with more tokens are dropped and counted.
        prompt_suffix: appended to plain-text prompts (not to chat-message rows, which carry their own).
        val_samples: k responses per validation prompt (Pass@1 is their mean correctness).
        val_prompts_per_batch: validation prompts per generation call.
        reward: reward function: a registered name (``math``) or ``package.module:function``.
        answer_after_think: grade only the text after ``</think>`` (reasoning models).
        verifier_timeout_s: per-sample time budget of the verifier; a timeout scores 0 and is counted.
        verifier_workers: verifier processes (default: all cores).
        truncated_is_wrong: a response cut at the length limit without EOS scores 0. None: on for
            built-in tasks, off otherwise.
        seed: prompt order and validation sampling.
    """

    def __init__(
        self,
        train: DatasetSpec,
        val: dict[str, DatasetSpec] | None = None,
        engine: RolloutEngine | None = None,
        val_engine: RolloutEngine | None = None,
        prompts_per_rollout: int = 32,
        rollouts_per_prompt: int = 8,
        prompts_per_minibatch: int | None = None,
        ppo_epochs: int = 1,
        dynamic_sampling: bool = False,
        max_sampling_rounds: int = 3,
        recompute_old_logprobs: bool = False,
        max_prompt_length: int = 1024,
        prompt_suffix: str = "",
        val_samples: int = 8,
        val_prompts_per_batch: int = 64,
        reward: str = "math",
        answer_after_think: bool = False,
        verifier_timeout_s: float = 5.0,
        verifier_workers: int | None = None,
        truncated_is_wrong: bool | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("prompts_per_rollout", prompts_per_rollout),
            ("rollouts_per_prompt", rollouts_per_prompt),
            ("ppo_epochs", ppo_epochs),
            ("val_samples", val_samples),
            ("val_prompts_per_batch", val_prompts_per_batch),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if prompts_per_minibatch is not None and not 1 <= prompts_per_minibatch <= prompts_per_rollout:
            raise ValueError(
                f"prompts_per_minibatch must be in [1, prompts_per_rollout={prompts_per_rollout}], "
                f"got {prompts_per_minibatch}"
            )
        self.train_spec = train
        self.val_specs = dict(val or {})
        self.engine = engine or HFEngine()
        self.val_engine = val_engine or self.engine
        self.prompts_per_rollout = prompts_per_rollout
        self.rollouts_per_prompt = rollouts_per_prompt
        self.prompts_per_minibatch = prompts_per_minibatch
        self.ppo_epochs = ppo_epochs
        self.dynamic_sampling = dynamic_sampling
        self.max_sampling_rounds = max_sampling_rounds
        self.recompute_old_logprobs = recompute_old_logprobs
        self.max_prompt_length = max_prompt_length
        self.prompt_suffix = prompt_suffix
        self.val_samples = val_samples
        self.val_prompts_per_batch = val_prompts_per_batch
        if truncated_is_wrong is None:
            truncated_is_wrong = train.source.startswith("builtin:")
        self.scorer = Scorer(reward, verifier_timeout_s, verifier_workers, answer_after_think, truncated_is_wrong)
        self.seed = seed
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.train_stream: RolloutStream | None = None
        self.val_streams: list[ValidationStream] = []
        self.dropped_prompts: dict[str, int] = {}

    @property
    def val_names(self) -> list[str]:
        """Validation set names in dataloader order."""
        return list(self.val_specs)

    def attach_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Use this tokenizer (normally taken from the trainer's module in :meth:`setup`)."""
        self.tokenizer = tokenizer

    def _tokenize(self, spec: DatasetSpec, name: str) -> list[TokenizedPrompt]:
        loaded = load_dataset_spec(spec, name)
        prompts, dropped = tokenize_prompts(
            loaded.records, self.tokenizer, self.max_prompt_length, self.prompt_suffix, name
        )
        self.dropped_prompts[name] = dropped
        return prompts

    @override
    def setup(self, stage: str) -> None:
        if self.tokenizer is None:
            if self.trainer is None or not hasattr(self.trainer.lightning_module, "tokenizer"):
                raise RuntimeError(
                    "RolloutDataModule needs a tokenizer: use it with RealPolicyModule or call attach_tokenizer()"
                )
            self.tokenizer = self.trainer.lightning_module.tokenizer
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        if stage == "fit" and self.train_stream is None:
            self.train_stream = RolloutStream(
                self._tokenize(self.train_spec, "train"),
                self.engine,
                self.scorer,
                self.prompts_per_rollout,
                self.rollouts_per_prompt,
                self.prompts_per_minibatch,
                self.ppo_epochs,
                self.dynamic_sampling,
                self.max_sampling_rounds,
                self.recompute_old_logprobs,
                self.seed,
                rank,
                world,
            )
        if not self.val_streams and self.val_specs:
            self.val_streams = [
                ValidationStream(
                    name,
                    self._tokenize(spec, name),
                    self.val_engine,
                    self.scorer,
                    self.val_samples,
                    self.val_prompts_per_batch,
                    self.seed,
                )
                for name, spec in self.val_specs.items()
            ]

    @override
    def train_dataloader(self) -> DataLoader:
        return _loader(self.train_stream)

    @override
    def val_dataloader(self) -> list[DataLoader]:
        return [_loader(stream) for stream in self.val_streams]

    @override
    def test_dataloader(self) -> list[DataLoader]:
        return self.val_dataloader()


def _identity(item: object) -> object:
    return item


def _loader(dataset: object, collate: Callable[[object], object] = _identity) -> DataLoader:
    """Tickets pass through unbatched, in the main process (they resolve against the live policy)."""
    return DataLoader(dataset, batch_size=None, num_workers=0, collate_fn=collate)
