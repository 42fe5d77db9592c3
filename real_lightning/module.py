"""RealPolicyModule: the policy, its loss and its optimizer, as a LightningModule.

Rollouts come from :class:`~real_lightning.data.RolloutDataModule` as tickets that resolve inside
``training_step`` against this module's policy (see :mod:`real_lightning.rollout.stream`).
"""

from __future__ import annotations

import inspect
import math
import time
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import grad_norm, rank_zero_info, rank_zero_only
from torch import Tensor
from typing_extensions import override

from real_lightning.logprobs import sequence_logprobs
from real_lightning.losses import LOSSES, LossOutput
from real_lightning.policy.loading import BUILTIN, load_policy, load_tokenizer
from real_lightning.rollout.batch import RolloutBatch, ValidationRollouts

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_LOGGED_LOSS_METRICS = (
    "contrast_fraction",
    "ppo_kl",
    "low_var_kl",
    "weight_abs_mean_pos",
    "weight_abs_mean_neg",
    "clip_fraction",
)


class RealPolicyModule(LightningModule):
    """A causal-LM policy trained with one of :data:`~real_lightning.losses.LOSSES`.

    Args:
        pretrained: local directory or hub name of a causal LM (``AutoModelForCausalLM``), or
            ``builtin:tiny`` for the shipped ~1M-parameter arithmetic policy.
        loss: name in ``LOSSES``: real, real_bce, real_product, grpo, dapo, gspo.
        loss_kwargs: the loss's hyper-parameters (e.g. ``{tau: 0.5}``); omitted ones take the paper's defaults.
        lr: AdamW learning rate (peak, after warm-up).
        betas: AdamW betas.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up from 0 over this many optimizer steps.
        schedule: ``constant`` after warm-up, or ``cosine`` decay to ``min_lr_ratio``·lr at ``max_steps``.
        min_lr_ratio: floor of the cosine schedule, as a fraction of lr.
        gradient_checkpointing: recompute activations in the backward pass (less memory, more time).
        logprob_chunk_size: positions per chunk of the log-softmax (memory: one [B, chunk, V] at a time).
        dtype: parameter dtype of the loaded policy (``None``: as saved).
        export_dir: write the policy and tokenizer in Hugging Face format here at the end of ``fit``.
    """

    def __init__(
        self,
        pretrained: str = BUILTIN,
        loss: str = "real",
        loss_kwargs: dict[str, float | bool] | None = None,
        lr: float = 1e-6,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        schedule: Literal["constant", "cosine"] = "constant",
        min_lr_ratio: float = 0.0,
        gradient_checkpointing: bool = False,
        logprob_chunk_size: int = 256,
        dtype: Literal["float32", "bfloat16", "float16"] | None = None,
        export_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.loss_fn = LOSSES[loss]
        self.loss_kwargs = dict(loss_kwargs or {})
        _check_loss_kwargs(loss, self.loss_kwargs)
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.tokenizer = load_tokenizer(pretrained)
        self.policy = load_policy(pretrained, _DTYPES[dtype] if dtype else None).train()  # from_pretrained: eval
        if gradient_checkpointing:
            self.policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.last_loss_output: LossOutput | None = None
        self.last_batch: RolloutBatch | None = None
        self.skipped_steps = 0
        self._update_start: float | None = None

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
        )

    @torch.no_grad()
    def compute_old_logprobs(self, batch: RolloutBatch) -> Tensor:
        """[B, T] log π_old: a no-grad forward of the policy that generated ``batch``."""
        return self.response_logprobs(batch)[0].float()

    # --- training ----------------------------------------------------------------------------------------

    @override
    def training_step(self, ticket: Any, batch_idx: int) -> Tensor | None:
        batch: RolloutBatch = ticket.resolve(self) if hasattr(ticket, "resolve") else ticket
        self._update_start = time.perf_counter()
        self.last_batch = batch
        for key, value in batch.stats.items():
            self.log(key, value, prog_bar=key == "rollout/reward_mean", batch_size=max(len(batch), 1))
        if len(batch) == 0:  # dynamic sampling found no group with a label contrast
            return None
        logprobs, entropy = self.response_logprobs(batch, with_entropy=True)
        old = batch.old_logprobs if batch.old_logprobs is not None else logprobs.detach()
        out = self.loss_fn(
            logprobs=logprobs,
            old_logprobs=old,
            response_mask=batch.response_mask,
            rewards=batch.rewards,
            group_ids=batch.group_ids,
            **self.loss_kwargs,
        )
        self.last_loss_output = out
        size = len(batch)
        if not torch.isfinite(out.loss):
            self.skipped_steps += 1
            rank_zero_info(f"step {self.global_step}: non-finite loss ({out.loss.item()}), update skipped")
            self.log("train/skipped_steps", float(self.skipped_steps), batch_size=size)
            return None
        mask = batch.response_mask
        self.log("train/loss", out.loss.detach(), batch_size=size)
        self.log("train/entropy", (entropy * mask).sum() / mask.sum().clamp_min(1), batch_size=size)
        for name in _LOGGED_LOSS_METRICS:
            if name in out.metrics:
                self.log(f"train/{name}", out.metrics[name], batch_size=size)
        return out.loss

    @override
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._update_start is not None:
            self.log("time/update_s", time.perf_counter() - self._update_start)
            self._update_start = None

    @override
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        norms = grad_norm(self.policy, norm_type=2)
        if norms:
            self.log("train/grad_norm", norms["grad_2.0_norm_total"])
        self.log("train/lr", optimizer.param_groups[0]["lr"])

    @override
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = torch.optim.AdamW(
            self.policy.parameters(), lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay
        )
        total = self.trainer.max_steps if self.trainer and self.trainer.max_steps > 0 else None
        if hp.schedule == "cosine" and total is None:
            raise ValueError("schedule='cosine' needs trainer.max_steps")
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, hp.warmup_steps, hp.schedule, total, hp.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --- evaluation -------------------------------------------------------------------------------------

    @override
    def validation_step(self, ticket: Any, batch_idx: int, dataloader_idx: int = 0) -> ValidationRollouts:
        return ticket.resolve(self)

    @override
    def test_step(self, ticket: Any, batch_idx: int, dataloader_idx: int = 0) -> ValidationRollouts:
        return ticket.resolve(self)

    # --- export -----------------------------------------------------------------------------------------

    @rank_zero_only
    def export_hf(self, directory: str | Path) -> Path:
        """Save the policy and tokenizer with ``save_pretrained`` (loadable by transformers and vLLM)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.policy.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        return directory

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


def _check_loss_kwargs(loss: str, kwargs: dict[str, Any]) -> None:
    params = inspect.signature(LOSSES[loss]).parameters
    allowed = [name for name, p in params.items() if p.default is not inspect.Parameter.empty]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(
            f"loss {loss!r} has no hyper-parameter {', '.join(map(repr, unknown))}; valid: {', '.join(allowed)}"
        )
