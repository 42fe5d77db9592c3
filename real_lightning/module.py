"""RealPolicyModule: the policy, its loss and its optimizer, as a LightningModule.

One ``training_step`` is one optimizer step over one mini-batch. At the step boundary, when the step
starts a rollout batch, the module pushes the policy's weights to the data side's engine and has the
:class:`~real_lightning.rollout.collector.RolloutCollector` sample it (deciding dynamic sampling's rounds
across ranks here: the sampling issues no collective). It computes π_old (and π_ref) when the batch needs
them and hands them to the collector, which owns the batch. Then it runs the mini-batch as micro-batches of
whole groups, each forward followed by its backward, with the loss divided by counts taken over the whole
step (all micro-batches, all ranks; :mod:`real_lightning.step.accumulate`), and returns a typed
:class:`~real_lightning.step.output.StepOutput` for the callbacks.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
import time
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from typing_extensions import override

from real_lightning.logprobs import sequence_logprobs
from real_lightning.logprobs.fused_head import check_fusable
from real_lightning.losses import LossSpec, loss_config, resolve_loss
from real_lightning.losses.kl import KLPenalty
from real_lightning.policy.loading import BUILTIN, load_policy, load_tokenizer
from real_lightning.policy.lora import LoRAConfig, apply_lora, export_state, save_adapted, trainable_state_dict
from real_lightning.policy.reference import AdaptersOffReference, ReferencePolicy
from real_lightning.policy.sharding import (
    FSDPConfig,
    empty_policy,
    full_state_dict,
    is_sharded,
    materialize,
    total_grad_norm,
)
from real_lightning.policy.weights import named_full_weights
from real_lightning.rollout.batch import RolloutBatch, ValidationRollouts
from real_lightning.rollout.collector import RolloutCollector
from real_lightning.rollout.engine import RolloutEngine
from real_lightning.rollout.requests import RolloutRequest, ValidationRequest
from real_lightning.step import ImportanceSampling, StepResult, accumulate_step, old_logprobs_pass
from real_lightning.step.accumulate import Budget
from real_lightning.step.output import STEP_KEY, StepOutput
from real_lightning.utils.distributed import all_reduce_max
from real_lightning.utils.dtypes import torch_dtype


class RealPolicyModule(LightningModule):
    """A causal-LM policy trained with one of :data:`~real_lightning.losses.LOSSES`.

    Trains from a :class:`~real_lightning.data.RolloutDataModule` (its ``collector`` serves the
    requests the train DataLoader yields).

    Args:
        pretrained: local directory or hub name of a causal LM (``AutoModelForCausalLM``), or
            ``builtin:tiny`` for the shipped ~1M-parameter arithmetic policy.
        loss: the objective: a name in ``LOSSES`` (real, real_bce, real_product, grpo, dapo, gspo), its
            hyper-parameters in ``loss_kwargs``; or a typed loss, ``class_path: real_lightning.losses.REAL`` (or
            ``REALBCE``, ``REALProduct``, ``GRPO``, ``DAPO``, ``GSPO``, a ``LossSpec`` subclass of yours) with its
            hyper-parameters as ``init_args`` (``--model.loss.help REAL`` documents them); or
            ``"package.module:function"``, a loss function of yours with the ``LossFn`` signature, called with
            ``loss_kwargs`` (:func:`~real_lightning.losses.resolve_loss`).
        loss_kwargs: the hyper-parameters of a named loss (e.g. ``{tau: 0.5}``; omitted ones take the paper's
            defaults) or of a loss function of yours; empty with a typed loss.
        lr: AdamW learning rate (peak, after warm-up).
        betas: AdamW betas.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up from 0 over this many optimizer steps.
        schedule: ``constant`` after warm-up, or ``cosine`` decay to ``min_lr_ratio``·lr at ``max_steps``.
        min_lr_ratio: floor of the cosine schedule, as a fraction of lr.
        gradient_checkpointing: recompute activations in the backward pass (less memory, more time).
        logprob_chunk_size: positions per chunk of the log-softmax (memory: one [B, chunk, V] at a time).
        fused_head: compute the response log-probs inside the LM head, chunk by chunk, so that the
            [B, T, V] logits and their gradient are never held (:mod:`real_lightning.logprobs.fused_head`; same values
            and gradients, one more head matmul in the backward). For long responses and large vocabularies
            (the paper recipes: it removes 40 GB of the 1.5B plan's peak); off by default, as on small CPU jobs
            the extra matmul costs 5–12 % of the update and the logits fit anyway.
        dtype: parameter dtype of the loaded policy (``None``: as saved; ``float64`` for exactness tests).
        export_dir: write the policy and tokenizer in Hugging Face format here at the end of ``fit``.
        importance_sampling: truncated importance sampling against the engine's behaviour log-probs (vLLM):
            ``token`` weights each token's gradient by min(π_old/π_behaviour, cap), ``sequence`` each rollout's
            by min(Π_t π_old/π_behaviour, cap); ``off``. Engines that sample with the training weights
            (HFEngine) report no behaviour log-probs: no correction applies (the ratio is 1).
        importance_cap: C, the truncation of the importance weights.
        kl_coef: β of a KL(π_θ ‖ π_ref) penalty added to the loss (token mean over the step; 0: off), π_ref the
            frozen starting policy (a second copy of the weights: sharded under FSDP2), its log-probs computed
            once per rollout batch; ``train/kl_ref`` is logged. The official GRPO baseline uses 0.001 with k3.
        kl_estimator: ``k1`` (x), ``k2`` (x²/2) or ``k3`` (e^{−x} − 1 + x), x = log π_θ − log π_ref.
        kl_clamp: k3's per-token bound (verl: 10).
        fsdp: shard the policy with FSDP2 (needs ``trainer.strategy`` :class:`~real_lightning.fsdp.FSDP2Strategy`,
            see ``configs/fsdp.yaml``): its parameters are created on the meta device and loaded once,
            sharded, when the trainer configures the model. None: a full copy per process (DDP, one device).
        lora: train low-rank adapters (PEFT) instead of the weights (:class:`~real_lightning.policy.lora.LoRAConfig`,
            overlay ``configs/lora.yaml``): the base is frozen, the optimizer holds the adapters only, π_ref is the
            policy with its adapters off, checkpoints hold the adapters (the base is loaded again from
            ``pretrained`` on resume), engines receive the merged weights. None: full fine-tuning.
    """

    def __init__(
        self,
        pretrained: str = BUILTIN,
        loss: LossSpec | str = "real",
        loss_kwargs: dict[str, float | bool] | None = None,
        lr: float = 1e-6,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        schedule: Literal["constant", "cosine"] = "constant",
        min_lr_ratio: float = 0.0,
        gradient_checkpointing: bool = False,
        logprob_chunk_size: int = 256,
        fused_head: bool = False,
        dtype: Literal["float32", "bfloat16", "float16", "float64"] | None = None,
        export_dir: str | None = None,
        importance_sampling: Literal["off", "token", "sequence"] = "off",
        importance_cap: float = 2.0,
        fsdp: FSDPConfig | None = None,
        kl_coef: float = 0.0,
        kl_estimator: Literal["k1", "k2", "k3"] = "k3",
        kl_clamp: float = 10.0,
        lora: LoRAConfig | None = None,
    ) -> None:
        super().__init__()
        lora_config = LoRAConfig(**lora) if isinstance(lora, dict) else lora
        lora = dataclasses.asdict(lora_config) if lora_config is not None else None  # plain data in checkpoints
        # names, ranges (tau > 0, clip >= 0, ...) checked at startup; a typed loss is called as is
        self.loss_fn, self.loss_kwargs = resolve_loss(loss, loss_kwargs)
        loss = loss_config(loss)  # saved as plain data (checkpoints load with weights_only=True)
        self.save_hyperparameters()
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.tokenizer = load_tokenizer(pretrained)
        # from_pretrained returns eval mode
        self.fsdp = FSDPConfig(**fsdp) if isinstance(fsdp, dict) else fsdp
        policy_dtype = torch_dtype(dtype)
        self.policy = (
            empty_policy(pretrained, policy_dtype) if fsdp else load_policy(pretrained, policy_dtype)
        ).train()
        if fused_head:
            check_fusable(self.policy)
        self.lora = lora_config
        if lora_config is not None:  # the state the adapters are drawn from, replayed where FSDP2 loads them
            self._lora_rng = torch.get_rng_state()
            self.policy = apply_lora(self.policy, lora_config)
        if gradient_checkpointing:
            self.policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.importance_sampling = ImportanceSampling(importance_sampling, importance_cap)
        self.kl = KLPenalty(kl_coef, kl_estimator, kl_clamp)
        self.reference: ReferencePolicy | AdaptersOffReference | None = None
        if self.kl.active:  # with adapters π_ref is the policy with them off: no second copy
            self.reference = (
                AdaptersOffReference(self.policy)
                if lora_config is not None
                else ReferencePolicy(pretrained, policy_dtype, sharded=bool(fsdp))
            )
        self.skipped_steps = 0
        self._skip_update = False
        self._engines_set_up: dict[int, RolloutEngine] = {}  # by id: engines need not be hashable
        self._update_start: float | None = None
        self._grad_norm: Tensor | None = None  # this step's total gradient norm, before clipping
        self._step_output: StepOutput | None = None  # what this step returns to the callbacks

    # --- sharding ---------------------------------------------------------------------------------------

    @override
    def configure_model(self) -> None:
        """Shard the policy over the data-parallel mesh (FSDP2) and load weights still on the meta device.

        Lightning calls it on every fit/validate/test, after the process group exists and before the
        optimizer is built and a checkpoint restored; it does its work once.
        """
        mesh = self.device_mesh
        if mesh is not None and mesh["tensor_parallel"].size() != 1:
            raise ValueError("tensor parallelism is not supported: use real_lightning.fsdp.FSDP2Strategy")
        data_parallel = mesh["data_parallel"] if mesh is not None else None
        device = self.trainer.strategy.root_device
        pretrained, dtype = self.hparams.pretrained, torch_dtype(self.hparams.dtype)
        adapted = None  # rank 0's full copy of a sharded adapted policy: the base, adapters drawn as unsharded
        if self.lora is not None:
            lora, rng = self.lora, self._lora_rng
            adapted = lambda: apply_lora(load_policy(pretrained, dtype), lora, rng)  # noqa: E731
        materialize(self.policy, data_parallel, self.fsdp, pretrained, dtype, device, adapted)
        if self.reference is not None:
            self.reference.configure(data_parallel, self.fsdp, device)

    # --- the data side -----------------------------------------------------------------------------

    @property
    def collector(self) -> RolloutCollector:
        """The datamodule's rollout collector (the module calls the data side, never the reverse)."""
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        collector = getattr(datamodule, "collector", None)
        if collector is None:
            raise RuntimeError("RealPolicyModule trains and validates from a RolloutDataModule (its collector)")
        return collector

    def push_weights(self, collector: RolloutCollector, validation: bool = False) -> None:
        """Make the engine about to sample (training's or validation's) hold the current weights.

        Each engine is set up on first use and receives the weights once per policy version: the full (with LoRA,
        merged) weights, or only the adapters where the engine loads them as such (``VLLMEngine(lora_sync=adapter)``).
        """
        engine = collector.val_engine if validation else collector.engine
        if id(engine) not in self._engines_set_up:
            engine.setup(self.policy, self.tokenizer)
            self._engines_set_up[id(engine)] = engine
        if engine.policy_version == self.global_step:
            return
        if self.lora is not None and getattr(engine, "lora_sync", "merged") == "adapter":  # the adapters only
            adapters = export_state(self.policy, "adapter")  # gathered on every rank: each has its engine
            engine.update_adapter(
                functools.partial(save_adapted, self.policy, "adapter", state=adapters), self.global_step
            )
        else:
            engine.update_weights(named_full_weights(self.policy), self.global_step)

    # --- log-probs -------------------------------------------------------------------------------------

    def response_logprobs(self, batch: RolloutBatch, with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
        """[B, T] log-probs (and entropy) of the response tokens at the batch's sampling temperature."""
        return sequence_logprobs(
            self.policy,
            batch.input_ids,
            batch.attention_mask,
            batch.prompt_length,
            temperature=batch.temperature if batch.temperature > 0 else 1.0,
            chunk_size=self.hparams.logprob_chunk_size,
            with_entropy=with_entropy,
            fused_head=self.hparams.fused_head,
        )

    def _reference_logprobs(self, batch: RolloutBatch, with_entropy: bool = False) -> tuple[Tensor, None]:
        assert self.reference is not None
        return self.reference.logprobs(batch, self.hparams.logprob_chunk_size, self.hparams.fused_head), None

    def needs_old_logprobs(self, rollouts: RolloutBatch, collector: RolloutCollector) -> bool:
        """π_old needs its own pass unless this one update samples and trains on the same weights."""
        schedule = collector.schedule
        on_policy = schedule.single_update and rollouts.policy_version == self.global_step
        return rollouts.old_logprobs is None and (schedule.recompute_old_logprobs or not on_policy)

    @staticmethod
    def engine_old_logprobs(rollouts: RolloutBatch) -> Tensor:
        """π_old from the engine (``schedule.old_logprobs: engine``): its behaviour log-probs, [B, T]."""
        if rollouts.behaviour_logprobs is None:
            raise ValueError(
                "data.schedule.old_logprobs is 'engine' but the rollout engine reports no behaviour log-probs "
                "(HFEngine samples with the training weights): use 'trainer', or an engine that reports them "
                "(VLLMEngine)"
            )
        return rollouts.behaviour_logprobs

    # --- training ----------------------------------------------------------------------------------------

    @override
    def on_fit_start(self) -> None:
        if self.trainer.accumulate_grad_batches != 1:
            raise ValueError(
                "trainer.accumulate_grad_batches must be 1: one training step is one optimizer step; use "
                "data.schedule.prompts_per_minibatch and max_tokens_per_micro_batch to size steps and micro-batches"
            )

    def _sample_rollout_batch(self, collector: RolloutCollector, request: RolloutRequest) -> None:
        """Sample the rollout batch ``request`` starts, at the step boundary: the engine gets the current weights,
        and dynamic sampling's rounds continue while any rank is short (one all-reduce per round, issued here
        on every rank: the sampling itself issues none)."""
        if collector.producer is not None:  # sampled ahead, within the staleness bound
            collector.publish_weights(request.rollout_index, self.global_step, self.policy)
            collector.receive_rollout_batch(request)
            return
        self.push_weights(collector)
        collector.start_rollout_batch(request)
        # every rank runs the same number of rounds: continue while any rank is short
        while collector.more_rounds_allowed() and all_reduce_max(int(collector.short_of_groups())):
            collector.sample_round()
        collector.finish_rollout_batch()

    def _attach_logprobs(self, collector: RolloutCollector, rollouts: RolloutBatch, budget: Budget) -> float:
        """π_old (when this update needs it) and π_ref (KL) of the rollout batch, computed here and handed to the
        collector that owns the batch; returns the seconds spent."""
        schedule, old, ref, seconds = collector.schedule, None, None, 0.0
        if schedule.old_logprobs == "engine" and rollouts.old_logprobs is None:
            old = self.engine_old_logprobs(rollouts)
        elif self.needs_old_logprobs(rollouts, collector):
            start = time.perf_counter()
            old = old_logprobs_pass(self.response_logprobs, rollouts, budget, self.device)
            seconds = time.perf_counter() - start
        if self.reference is not None and rollouts.ref_logprobs is None:  # once per rollout batch
            start = time.perf_counter()
            ref = old_logprobs_pass(self._reference_logprobs, rollouts, budget, self.device)
            seconds += time.perf_counter() - start
        if old is not None or ref is not None:
            collector.attach_logprobs(old=old, ref=ref)
        return seconds

    @override
    def training_step(self, request: RolloutRequest, batch_idx: int) -> dict[str, Any]:
        """One optimizer step over the mini-batch ``request`` names; returns ``{"loss": …, "step":
        StepOutput}`` (:mod:`real_lightning.step.output`: what callbacks read)."""
        collector = self.collector
        if collector.needs_generation(request):
            self._sample_rollout_batch(collector, request)
        schedule = collector.schedule
        budget = (schedule.max_tokens_per_micro_batch, schedule.max_sequences_per_micro_batch)
        rollouts = collector.rollouts(request)
        old_seconds = self._attach_logprobs(collector, rollouts, budget)
        if collector.producer is not None:
            self._log_staleness(rollouts, request)
        minibatch = collector.minibatch(request)
        self._update_start = time.perf_counter()
        self.policy.zero_grad(set_to_none=True)  # optimizer_zero_grad is a no-op: the step accumulates here
        result = accumulate_step(
            minibatch,
            budget,
            logprobs_fn=self.response_logprobs,
            loss_fn=self.loss_fn,
            loss_kwargs=self.loss_kwargs,
            backward=lambda loss: self.trainer.strategy.backward(loss, None),
            device=self.device,
            world_size=self.trainer.world_size,
            rollout_stats={**minibatch.stats, "time/old_logprobs_s": old_seconds} if minibatch.stats else {},
            importance_sampling=self.importance_sampling,
            kl=self.kl,
        )
        self._skip_update = result.skipped
        self._log_step(result, len(minibatch))
        self._step_output = StepOutput(
            skipped=result.skipped, metrics=result.metrics, loss_output=result.loss_output, rollouts=result.rollouts
        )
        return {"loss": self._sync_loss(), STEP_KEY: self._step_output}

    def _log_staleness(self, rollouts: RolloutBatch, request: RolloutRequest) -> None:
        """How old the weights that sampled this step's rollouts are, in optimizer steps and in rollout batches
        (every group of a rollout batch shares its version: mean and max are over this step's groups)."""
        steps = float(self.global_step - rollouts.policy_version)
        batches = float(rollouts.rollout_staleness)
        values = {
            "rollout/staleness_mean": steps,
            "rollout/staleness_max": steps,
            "rollout/staleness_batches_mean": batches,
            "rollout/staleness_batches_max": batches,
        }
        for key, value in values.items():
            self.log(key, value, batch_size=1)

    def _sync_loss(self) -> Tensor:
        """What Lightning back-propagates after the step's own backward passes: zero, touching every parameter.

        Under DDP this one backward all-reduces the gradients accumulated over the micro-batches (the
        micro-batches' backward passes inside the step do not communicate), like ``no_sync``.
        """
        params = [p for p in self.policy.parameters() if p.requires_grad]
        if self.trainer.world_size == 1 or is_sharded(self.policy):  # FSDP reduce-scatters in every backward
            return torch.zeros((), device=self.device, requires_grad=True)
        return torch.stack([p.sum() for p in params]).sum() * 0.0

    def _log_step(self, result: StepResult, size: int) -> None:
        if result.skipped:
            self.skipped_steps += 1
            rank_zero_info(f"step {self.global_step}: non-finite loss on some rank, update skipped")
            self.log("train/skipped_steps", float(self.skipped_steps), batch_size=max(size, 1))
        for key, value in result.metrics.items():
            self.log(key, value, prog_bar=key == "rollout/reward_mean", batch_size=max(size, 1))

    @override
    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        """Nothing: ``training_step`` zeroes the gradients before its micro-batches (Lightning would zero after)."""

    @override
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._skip_update:  # every rank agreed: AdamW skips parameters without a gradient
            for param in self.policy.parameters():
                param.grad = None
            return
        # over all shards (one collective under FSDP), before clipping; configure_gradient_clipping reuses it
        self._grad_norm = total_grad_norm(list(self.policy.parameters()))
        if self._grad_norm is not None:
            self.log("train/grad_norm", self._grad_norm)
            if self._step_output is not None:
                self._step_output.grad_norm = self._grad_norm.detach()
        self.log("train/lr", optimizer.param_groups[0]["lr"])

    @override
    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """``trainer.gradient_clip_val`` by norm scales the gradients by min(1, clip / ‖g‖) with the total norm
        measured in :meth:`on_before_optimizer_step` (over all shards: no second reduction); by value as Lightning."""
        if self._skip_update or not gradient_clip_val:
            return
        if gradient_clip_algorithm in (None, "norm") and self._grad_norm is not None:
            params = [p for p in self.policy.parameters() if p.grad is not None]
            torch.nn.utils.clip_grads_with_norm_(params, gradient_clip_val, self._grad_norm)
        else:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    @override
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._update_start is not None:
            self.log("time/update_s", time.perf_counter() - self._update_start)
            self._update_start = None
        self._step_output = None

    @override
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        trainable = [p for p in self.policy.parameters() if p.requires_grad]  # with LoRA, the adapters
        optimizer = torch.optim.AdamW(trainable, lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay)
        total = self.trainer.max_steps if self.trainer and self.trainer.max_steps > 0 else None
        if hp.schedule == "cosine" and total is None:
            raise ValueError("schedule='cosine' needs trainer.max_steps")
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, hp.warmup_steps, hp.schedule, total, hp.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --- evaluation -------------------------------------------------------------------------------------

    @override
    def validation_step(
        self, request: ValidationRequest, batch_idx: int, dataloader_idx: int = 0
    ) -> ValidationRollouts:
        collector = self.collector
        self.push_weights(collector, validation=True)
        return collector.validate(request)

    @override
    def test_step(self, request: ValidationRequest, batch_idx: int, dataloader_idx: int = 0) -> ValidationRollouts:
        return self.validation_step(request, batch_idx, dataloader_idx)

    # --- checkpoints and export -----------------------------------------------------------------------------

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save the RNG states (as plain values) so that anything not seeded explicitly also resumes exactly; with
        LoRA keep only the adapters of the policy (the frozen base is ``pretrained``, loaded again on resume)."""
        if self.lora is not None:
            checkpoint["state_dict"] = trainable_state_dict(self.policy, checkpoint["state_dict"], "policy.")
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "python": _plain(random.getstate()),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "skipped_steps": self.skipped_steps,
        }

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.lora is not None and "state_dict" in checkpoint:  # adapters from the checkpoint, the base as loaded
            frozen = {k: v for k, v in self.state_dict().items() if k not in checkpoint["state_dict"]}
            checkpoint["state_dict"] = {**frozen, **checkpoint["state_dict"]}
        states = checkpoint.get("rng_states")
        if not states:
            return
        torch.set_rng_state(states["torch"])
        random.setstate(_tuples(states["python"]))
        if states["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])
        self.skipped_steps = int(states.get("skipped_steps", 0))

    def export_hf(self, directory: str | Path) -> Path:
        """Save the full policy and tokenizer with ``save_pretrained`` (loadable by transformers and vLLM); with LoRA
        the merged policy, or the adapter alone (``model.lora.export``).

        Call it on every rank: a sharded policy is gathered (a collective); rank 0 writes.
        """
        directory = Path(directory)
        writer = self._trainer is None or self.trainer.is_global_zero
        if self.lora is None:
            weights = full_state_dict(self.policy)
        else:
            weights = export_state(self.policy, self.lora.export, keep=writer)
        if writer:
            directory.mkdir(parents=True, exist_ok=True)
            if self.lora is None:
                self.policy.save_pretrained(directory, state_dict=weights)
            else:
                save_adapted(self.policy, self.lora.export, directory, weights)
            self.tokenizer.save_pretrained(directory)
        if self._trainer is not None:
            self.trainer.strategy.barrier("export_hf")
        return directory

    @override
    def teardown(self, stage: str) -> None:
        """When fit ends, tear down the engines this module set up (vLLM frees its memory); a later fit,
        validate or test sets them up again. (A validation before fit keeps them for the fit.)"""
        if stage != "fit":
            return
        for engine in self._engines_set_up.values():
            teardown = getattr(engine, "teardown", None)
            if callable(teardown):
                teardown()
        self._engines_set_up.clear()

    @override
    def on_fit_end(self) -> None:
        if self.hparams.export_dir:
            path = self.export_hf(self.hparams.export_dir)
            rank_zero_info(f"exported the policy in Hugging Face format to {path}")


def lr_factor(step: int, warmup: int, schedule: str, total: int | None, min_ratio: float) -> float:
    """Multiplier of the peak lr at optimizer step ``step``: linear warm-up, then constant or cosine."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total is None or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively (checkpoints load with ``weights_only=True``)."""
    return [_plain(v) for v in value] if isinstance(value, tuple | list) else value


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value
