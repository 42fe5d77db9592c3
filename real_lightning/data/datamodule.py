"""RolloutDataModule: datasets, prompt formatting, the rollout engine, the verifier and the schedule."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase
from typing_extensions import override

from real_lightning.data.config import PromptFormat, ValidationConfig, VerifierConfig
from real_lightning.data.prompts import (
    TokenizedPrompt,
    model_positions,
    prompt_limit,
    tokenize_prompts,
    warn_past_positions,
)
from real_lightning.data.sources import BUILTIN_REWARDS, DatasetSpec, is_builtin_task, load_dataset_spec
from real_lightning.policy.loading import load_tokenizer
from real_lightning.rewards.registry import REWARD_FUNCTIONS, check_reward_fields
from real_lightning.rollout.collector import RolloutCollector
from real_lightning.rollout.engine import RolloutEngine, check_training_temperature
from real_lightning.rollout.hf import HFEngine
from real_lightning.rollout.producer import ProducerConfig, RolloutProducer, make_producer
from real_lightning.rollout.requests import PromptOrder, RolloutRequests, ValidationRequests
from real_lightning.rollout.schedule import RolloutSchedule
from real_lightning.rollout.scoring import Scorer

log = logging.getLogger(__name__)


class RolloutDataModule(LightningDataModule):
    """Streams prompt groups and verified rollouts for training, and samples validation sets for Pass@k.

    The train DataLoader yields small :class:`~real_lightning.rollout.requests.RolloutRequest` items;
    :attr:`collector` turns them into rollouts when the module's ``training_step`` asks. The data
    position and the rollout batch in flight are saved in checkpoints (:meth:`state_dict`).

    Args:
        train: the training prompts.
        val: named validation sets (e.g. ``{math500: {source: builtin:math500}}``);
            each is logged as ``val/<name>/pass@k``.
        engine: the rollout engine (default: ``HFEngine()``); its temperature is the one log-probs use, and
            ``fit`` refuses temperature 0 (greedy: the rollouts of a group would be identical).
        val_engine: engine for validation (default: the training engine); it may sample greedily.
        schedule: rollout batch, mini-batch and micro-batch sizes (prompt counts over all ranks), and how stale
            rollouts may be (``max_staleness``: sampled ahead by a producer).
        producer: where the producer of ``schedule.max_staleness`` > 0 runs (a worker process by default).
        prompts: prompt length limit and suffix. Training prompts that leave the model's positions
            (``max_position_embeddings`` of the tokenizer's model) no room for ``max_new_tokens`` are dropped too
            (validation prompts are only counted: a benchmark keeps all its problems).
        verifier: the reward function and its budget. A reward function that takes row fields gets those the
            source's ``reward_fields`` names (``data.train.reward_fields``, ``data.val.<name>.reward_fields``); one
            that takes none (the math reward) refuses them at startup.
        validation: samples per validation prompt and chunk size.
        seed: prompt order, sampling seeds and validation sampling.
        tokenizer_from: the model (directory, hub name or ``builtin:tiny``) whose tokenizer encodes the prompts;
            ``real-lightning`` sets it to ``model.pretrained``. None: call :meth:`attach_tokenizer` before
            ``setup``.
    """

    def __init__(
        self,
        train: DatasetSpec,
        val: dict[str, DatasetSpec] | None = None,
        engine: RolloutEngine | None = None,
        val_engine: RolloutEngine | None = None,
        schedule: RolloutSchedule = RolloutSchedule(),  # noqa: B008 (a typed default shown by --help)
        prompts: PromptFormat = PromptFormat(),  # noqa: B008
        verifier: VerifierConfig = VerifierConfig(),  # noqa: B008
        validation: ValidationConfig = ValidationConfig(),  # noqa: B008
        seed: int = 0,
        tokenizer_from: str | None = None,
        producer: ProducerConfig = ProducerConfig(),  # noqa: B008
    ) -> None:
        super().__init__()
        self.train_spec = train
        self.val_specs = dict(val or {})
        self.engine = engine or HFEngine()
        self.val_engine = val_engine or self.engine
        self.schedule = schedule
        self.producer_config = producer
        self.prompt_format = prompts
        self.validation = validation
        truncated_is_wrong = verifier.truncated_is_wrong
        if truncated_is_wrong is None:
            truncated_is_wrong = is_builtin_task(train.source)
        self.scorer = Scorer(
            verifier.reward,
            verifier.timeout_s,
            verifier.workers,
            verifier.answer_after_think,
            truncated_is_wrong,
            grader=verifier.grader,
            batch_timeout_s=verifier.batch_timeout_s,
        )
        for option, spec in [("data.train", train), *((f"data.val.{name}", s) for name, s in self.val_specs.items())]:
            if spec.reward_fields and is_builtin_task(spec.source):
                raise ValueError(
                    f"{option}.reward_fields: the built-in task {spec.source} has no row fields for the reward "
                    f"function, got {spec.reward_fields}"
                )
            check_reward_fields(self.scorer.reward_fn, spec.reward_fields, f"{option}.reward_fields")
            _check_builtin_reward(option, spec, verifier.reward, self.scorer.reward_fn)
        self.seed = seed
        # logged next to the module's hyper-parameters (and saved in checkpoints): how rollouts are scored,
        # sampled and batched, e.g. which grader a run used
        verifier_hparams = {**asdict(verifier), "truncated_is_wrong": truncated_is_wrong}
        data_hparams = {
            "verifier": verifier_hparams,
            "schedule": asdict(schedule),
            "validation": asdict(validation),
            "prompts": asdict(prompts),
            "seed": seed,
            **({"producer": asdict(producer)} if schedule.asynchronous else {}),
        }
        self.save_hyperparameters({"data": data_hparams})  # one key: no clash with the module's names
        self.tokenizer_from = tokenizer_from
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.collector: RolloutCollector | None = None
        self._pending_state: dict[str, Any] | None = None
        self._rank, self._world = 0, 1

    @property
    def val_names(self) -> list[str]:
        """Validation set names in dataloader order."""
        return list(self.val_specs)

    def attach_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Use this tokenizer (instead of loading the one of ``tokenizer_from`` in :meth:`setup`)."""
        self.tokenizer = tokenizer

    def _tokenize(self, spec: DatasetSpec, name: str, positions: int | None = None) -> list[TokenizedPrompt]:
        """The dataset's prompts as tokens; those longer than ``prompts.max_length``, or (training prompts) than
        the model's ``positions`` leave room for before the engine's ``max_new_tokens``, dropped and counted."""
        loaded = load_dataset_spec(spec, name)
        fmt = self.prompt_format
        max_length, reason = prompt_limit(fmt.max_length, positions, self.engine.max_new_tokens)
        return tokenize_prompts(loaded.records, self.tokenizer, max_length, fmt.suffix, name, reason)

    def _tokenize_val(self, spec: DatasetSpec, name: str, positions: int | None) -> list[TokenizedPrompt]:
        """A validation set's prompts: only ``prompts.max_length`` drops any (a benchmark keeps its problems,
        so that Pass@k is over all of them); those past the model's positions are counted in a warning."""
        prompts = self._tokenize(spec, name)
        limit, reason = prompt_limit(self.prompt_format.max_length, positions, self.val_engine.max_new_tokens)
        warn_past_positions(prompts, limit, reason, name)
        return prompts

    @override
    def setup(self, stage: str) -> None:
        if self.tokenizer is None:
            if self.tokenizer_from is None:
                raise RuntimeError(
                    "RolloutDataModule needs a tokenizer: pass tokenizer_from=<the policy's directory or name> "
                    "(real-lightning sets it to model.pretrained) or call attach_tokenizer()"
                )
            self.tokenizer = load_tokenizer(self.tokenizer_from)
        if stage == "fit":
            check_training_temperature(self.engine.temperature)
        if self.trainer is not None:
            self._rank, self._world = self.trainer.global_rank, self.trainer.world_size
        positions = model_positions(self.tokenizer)  # the model's positions bound prompt + response
        if self.collector is None:
            self.collector = RolloutCollector(
                prompts=[],
                engine=self.engine,
                scorer=self.scorer,
                schedule=self.schedule,
                order=None,
                seed=self.seed,
                rank=self._rank,
                world_size=self._world,
                val_prompts={name: self._tokenize_val(spec, name, positions) for name, spec in self.val_specs.items()},
                val_engine=self.val_engine,
                val_samples=self.validation.samples,
            )
        if stage == "fit" and not self.collector.prompts:
            self.schedule.check_world_size(self._world)
            self.collector.prompts = self._tokenize(self.train_spec, "train", positions)
            self.collector.order = PromptOrder(len(self.collector.prompts), self.seed)
        if stage == "fit" and self.schedule.asynchronous and self.collector.producer is None:
            self.collector.attach_producer(self._make_producer())
        if self._pending_state is not None:
            self.collector.load_state_dict(self._pending_state)
            self._pending_state = None

    def _make_producer(self) -> RolloutProducer:
        """This rank's rollout producer (started by the module's first publish of weights)."""
        make = getattr(self.engine, "producer_engine", None)
        if not callable(make):
            raise ValueError(
                f"data.schedule.max_staleness = {self.schedule.max_staleness} needs a rollout producer, and the "
                f"engine {type(self.engine).__name__} cannot run in one (it has no producer_engine()): use HFEngine or "
                "VLLMEngine, or max_staleness 0"
            )
        assert self.collector is not None and self.tokenizer is not None
        return make_producer(
            self.producer_config,
            engine=make(),
            scorer=self.scorer,
            prompts=self.collector.prompts,
            schedule=self.schedule,
            seed=self.seed,
            rank=self._rank,
            world_size=self._world,
            tokenizer=self.tokenizer,
        )

    @override
    def teardown(self, stage: str) -> None:
        """Stop the rollout producer (its process and memory) when fit ends."""
        self._stop_producer()

    @override
    def on_exception(self, exception: BaseException) -> None:
        """Stop the rollout producer when the run fails or is interrupted (Ctrl-C)."""
        self._stop_producer()

    def _stop_producer(self) -> None:
        if self.collector is not None and self.collector.producer is not None:
            self.collector.producer.close()
            self.collector.attach_producer(None)

    @override
    def train_dataloader(self) -> DataLoader:
        assert self.collector is not None and self.collector.order is not None, "setup('fit') first"
        requests = RolloutRequests(
            self.collector.order, self.schedule, self.seed, self._rank, self._world, start=self.collector.next_step
        )
        return _loader(requests)

    @override
    def val_dataloader(self) -> list[DataLoader]:
        assert self.collector is not None, "setup() first"
        return [
            _loader(
                ValidationRequests(
                    name, len(prompts), self.validation.prompts_per_batch, self.seed, self._rank, self._world
                )
            )
            for name, prompts in self.collector.val_prompts.items()
        ]

    @override
    def test_dataloader(self) -> list[DataLoader]:
        return self.val_dataloader()

    @override
    def state_dict(self) -> dict[str, Any]:
        """The collector's data position and rollout batch in flight (every rank's; a collective)."""
        return {"collector": self.collector.state_dict()} if self.collector is not None else {}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "collector" not in state_dict:
            return
        if self.collector is None:  # restored before setup: apply once the collector exists
            self._pending_state = state_dict["collector"]
        else:
            self.collector.load_state_dict(state_dict["collector"])


def _loader(requests: object) -> DataLoader:
    """Requests pass through one at a time, in the main process (they are resolved inside the step)."""
    return DataLoader(requests, batch_size=None, num_workers=0, collate_fn=_identity)


def _identity(item: object) -> object:
    return item


def _check_builtin_reward(option: str, spec: DatasetSpec, reward: str, reward_fn: Any) -> None:
    """Refuse a registered reward that is not the one grading the built-in task of ``spec`` (``math`` would score
    every countdown response 0). A reward of your own (``module:function``) is yours to choose."""
    task = spec.source.removeprefix("builtin:")
    expected = BUILTIN_REWARDS.get(task) if is_builtin_task(spec.source) else None
    registered = [name for name in REWARD_FUNCTIONS if REWARD_FUNCTIONS[name] is reward_fn]
    if expected is not None and registered and expected not in registered:
        raise ValueError(
            f"{option}: the built-in task {spec.source} is graded by the {expected!r} reward, but "
            f"data.verifier.reward is {reward!r}; set data.verifier.reward: {expected}"
        )
