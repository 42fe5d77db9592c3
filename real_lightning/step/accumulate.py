"""One optimizer step as micro-batches of whole groups, and the micro-batched π_old pass.

Both run the same number of forward (and backward) passes on every rank: a rank with fewer
micro-batches runs zero-weight passes on a one-token dummy, so that a sharded policy's collectives
line up. The loss of every micro-batch is divided by counts taken over the whole step (all
micro-batches, all ranks) and multiplied by the number of ranks (DDP and FSDP average gradients
over ranks), so the step's gradient is the gradient of the whole mini-batch's loss, however it is split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from real_lightning.losses import LossOutput
from real_lightning.losses.common import BatchCounts
from real_lightning.losses.kl import KLPenalty, kl_penalty
from real_lightning.rollout.batch import RolloutBatch, concat_batches
from real_lightning.utils.distributed import all_reduce, all_reduce_max

LogprobsFn = Callable[..., tuple[Tensor, Tensor | None]]
"""``fn(batch, with_entropy=False) -> ([B, T] log-probs, [B, T] entropy or None)``."""
Budget = tuple[int | None, int | None]
"""(max padded tokens, max sequences) of one micro-batch."""

_PER_ROLLOUT = ("scores", "grad_weights", "labels", "advantages")
_TOKEN_WEIGHTED = ("ppo_kl", "low_var_kl", "clip_fraction", "clip_fraction_high", "clip_fraction_low")


@dataclass(frozen=True)
class ImportanceSampling:
    """Truncated importance sampling (TIS) of rollouts sampled by an engine whose distribution differs from π_old.

    Args:
        mode: ``token``: w_t = min(π_old(o_t)/π_behaviour(o_t), cap) per response token; ``sequence``:
            w_i = min(Π_t π_old/π_behaviour, cap) per rollout; ``off``: none.
        cap: C, the truncation (verl and TRL default to 2).
    """

    mode: Literal["off", "token", "sequence"] = "off"
    cap: float = 2.0

    def __post_init__(self) -> None:
        if self.mode not in ("off", "token", "sequence"):
            raise ValueError(f"importance_sampling.mode must be off, token or sequence, got {self.mode!r}")
        if not self.cap > 0:
            raise ValueError(f"importance_sampling.cap must be > 0, got {self.cap}")

    def weights(self, old: Tensor, behaviour: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Detached weights ([B, T] for ``token``, [B] for ``sequence``) and how many were truncated."""
        delta = torch.where(mask, old.float() - behaviour.float(), torch.zeros((), device=old.device))
        raw = torch.exp(delta) if self.mode == "token" else torch.exp(delta.sum(-1))
        clipped = ((raw > self.cap) & mask).sum() if self.mode == "token" else (raw > self.cap).sum()
        return raw.clamp(max=self.cap).to(old.dtype).detach(), clipped


@dataclass
class StepResult:
    """What one optimizer step produced.

    Attributes:
        skipped: some rank had a non-finite loss; every rank skips the update.
        metrics: scalars to log, already reduced over ranks (``train/…`` and the rollout's ``rollout/…``,
            ``time/…``, ``verifier/…`` on the first step of a rollout batch, averaged over ranks).
        loss_output: this rank's per-rollout metrics (``scores``, ``grad_weights``, ``labels``, …) of all its
            micro-batches, rows in the order of ``rollouts``; None when the rank had no rollout.
        rollouts: this rank's micro-batches, concatenated (CPU).
    """

    skipped: bool
    metrics: dict[str, Tensor] = field(default_factory=dict)
    loss_output: LossOutput | None = None
    rollouts: RolloutBatch | None = None


def dummy_batch(temperature: float, device: torch.device) -> RolloutBatch:
    """One prompt token and one response token (id 0): a zero-weight pass for a rank with nothing to do."""
    ones = torch.ones(1, 2, dtype=torch.long, device=device)
    return RolloutBatch(
        input_ids=torch.zeros(1, 2, dtype=torch.long, device=device),
        attention_mask=ones,
        response_mask=torch.ones(1, 1, dtype=torch.bool, device=device),
        prompt_length=1,
        rewards=torch.zeros(1, device=device),
        group_ids=torch.zeros(1, dtype=torch.long, device=device),
        prompt_ids=torch.zeros(1, dtype=torch.long, device=device),
        truncated=torch.zeros(1, dtype=torch.bool, device=device),
        temperature=temperature,
    )


@torch.no_grad()
def old_logprobs_pass(logprobs_fn: LogprobsFn, rollouts: RolloutBatch, budget: Budget, device: torch.device) -> Tensor:
    """[B, T] float32 log π_old of a whole rollout batch, in micro-batches (no grad), on ``rollouts``' device.

    Positions outside the response mask are 0, so the result does not depend on the split.
    """
    parts = rollouts.micro_batch_rows(*budget) if len(rollouts) else []
    out = torch.zeros(rollouts.response_mask.shape, dtype=torch.float32, device=rollouts.input_ids.device)
    for i in range(all_reduce_max(len(parts))):
        if i >= len(parts):
            logprobs_fn(dummy_batch(rollouts.temperature, device))
            continue
        rows = parts[i]
        batch = rollouts.select(rows).to(device)
        logprobs, _ = logprobs_fn(batch)
        logprobs = logprobs.float().masked_fill(~batch.response_mask, 0.0)  # 0 where no token counts
        out[rows.to(out.device), : logprobs.shape[1]] = logprobs.to(out.device)
    return out


def accumulate_step(
    minibatch: RolloutBatch,
    budget: Budget,
    *,
    logprobs_fn: LogprobsFn,
    loss_fn: Callable[..., LossOutput],
    loss_kwargs: dict[str, Any],
    backward: Callable[[Tensor], None],
    device: torch.device,
    world_size: int,
    rollout_stats: dict[str, float] | None = None,
    importance_sampling: ImportanceSampling | None = None,
    kl: KLPenalty | None = None,
) -> StepResult:
    """Forward and backward every micro-batch of ``minibatch``; the gradients add up in ``.grad``.

    Args:
        minibatch: this rank's groups of the step.
        budget: micro-batch budget (padded tokens, sequences).
        logprobs_fn: the policy's response log-probs (and entropy).
        loss_fn: a loss (an entry of ``LOSSES``, a typed ``LossSpec``, a function of one's own), called with
            ``counts=`` the step's counts (with the ``extra_counts`` it declares, if any).
        loss_kwargs: the loss's hyper-parameters.
        backward: back-propagates a scalar (the strategy's backward, for precision plugins).
        device: where the policy runs.
        world_size: ranks whose gradients DDP/FSDP will average (each loss is multiplied by it).
        rollout_stats: scalars of the rollout batch to average over ranks and log with this step.
        importance_sampling: truncated importance sampling of the rollouts against the engine's behaviour
            log-probs (applied when the rollouts carry them; None or mode ``off``: no correction).
        kl: β·KL(π_θ ‖ π_ref) added to every micro-batch's loss (token mean over the step), from the rollouts'
            ``ref_logprobs``; logged as ``train/kl_ref`` (``train/loss`` stays the policy loss). None or β = 0: off.

    A micro-batch with a non-finite loss back-propagates zero instead; the flag is summed over ranks
    and every rank then skips the update (``StepResult.skipped``). When the rollouts carry the engine's
    behaviour log-probs, the gap to π_old is logged per token: ``rollout/mismatch_abs_mean`` and
    ``_abs_max`` (|log π_old − log π_behaviour|) and ``rollout/mismatch_k3`` (k3 estimate of
    KL(π_behaviour ‖ π_old)).
    """
    micro = minibatch.micro_batches(*budget) if len(minibatch) else []
    extra_counts = getattr(loss_fn, "extra_counts", None)  # a loss's own normalisers (LossSpec), summed like the rest
    local_counts = BatchCounts.of(minibatch.response_mask, minibatch.rewards, minibatch.group_ids, extra_counts)
    counts = BatchCounts.from_tensor(all_reduce(local_counts.as_tensor()), local_counts.extra)
    sums: dict[str, Tensor] = {}

    def add(name: str, value: Tensor | float) -> None:
        sums[name] = sums.get(name, torch.zeros((), dtype=torch.float64)) + torch.as_tensor(value).double().cpu()

    outputs: list[dict[str, Tensor]] = []
    mismatch_max = 0.0
    for i in range(all_reduce_max(len(micro))):
        if i >= len(micro):
            logprobs, _ = logprobs_fn(dummy_batch(minibatch.temperature, device))
            backward(logprobs.sum() * 0.0)
            continue
        batch = micro[i].to(device)
        logprobs, entropy = logprobs_fn(batch, with_entropy=True)
        old = batch.old_logprobs if batch.old_logprobs is not None else logprobs.detach()
        weights = None
        if (
            importance_sampling is not None
            and importance_sampling.mode != "off"
            and batch.behaviour_logprobs is not None
        ):
            weights, clipped = importance_sampling.weights(old.detach(), batch.behaviour_logprobs, batch.response_mask)
            add("is_weight", weights.sum() if weights.dim() == 1 else (weights * batch.response_mask).sum())
            add("is_clipped", clipped)
            add("is_units", weights.numel() if weights.dim() == 1 else batch.response_mask.sum())
        extra = {} if weights is None else {"importance_weights": weights}
        out = loss_fn(
            logprobs=logprobs,
            old_logprobs=old,
            response_mask=batch.response_mask,
            rewards=batch.rewards,
            group_ids=batch.group_ids,
            counts=counts,
            **extra,
            **loss_kwargs,
        )
        loss = out.loss
        if kl is not None and kl.active:
            if batch.ref_logprobs is None:
                raise ValueError("kl_coef > 0 but the rollouts carry no reference log-probs (ref_logprobs)")
            penalty = kl_penalty(
                logprobs, batch.ref_logprobs, batch.response_mask, estimator=kl.estimator, clamp=kl.clamp, counts=counts
            )
            add("kl_ref", penalty.detach())
            loss = loss + kl.coef * penalty
        finite = bool(torch.isfinite(loss))
        backward(loss * world_size if finite else logprobs.sum() * 0.0)
        mask = batch.response_mask
        tokens = mask.sum()
        if batch.behaviour_logprobs is not None:  # train/inference mismatch: π_old against the sampler's log-probs
            gap = torch.where(mask, old.detach().float() - batch.behaviour_logprobs, torch.zeros((), device=device))
            add("mismatch_abs", gap.abs().sum())
            add("mismatch_k3", (torch.expm1(gap) - gap).sum())  # k3 of KL(π_behaviour ‖ π_old): r − 1 − log r
            add("mismatch_tokens", tokens)
            mismatch_max = max(mismatch_max, float(gap.abs().max()))
        add("nonfinite", 0.0 if finite else 1.0)
        add("loss", out.loss.detach())
        add("tokens", tokens)
        add("entropy", (entropy * mask).sum() if entropy is not None else 0.0)
        for name in _TOKEN_WEIGHTED:
            if name in out.metrics:
                add(name, out.metrics[name] * tokens)
                add(f"has_{name}", 1.0)  # summed over ranks: a rank without micro-batches logs the same keys
        metrics = out.metrics
        labels, weights = metrics["labels"], metrics["grad_weights"].abs()
        add("groups", metrics["num_groups"])
        add("contrast_groups", metrics["contrast_fraction"] * metrics["num_groups"])
        for side, label in (("pos", 1), ("neg", 0)):
            add(f"weight_abs_{side}", weights[labels == label].sum())
            add(f"count_{side}", (labels == label).sum())
        outputs.append({k: metrics[k].detach().cpu() for k in (*_PER_ROLLOUT, "weight_normalizer") if k in metrics})
        del logprobs, entropy, out
    names = ["nonfinite", "loss", "tokens", "entropy", *_TOKEN_WEIGHTED, "groups", "contrast_groups"]
    names += ["weight_abs_pos", "count_pos", "weight_abs_neg", "count_neg", "mismatch_abs", "mismatch_k3"]
    names += ["mismatch_tokens", "is_weight", "is_clipped", "is_units", "kl_ref"]
    names += [f"has_{n}" for n in _TOKEN_WEIGHTED]  # how many micro-batches reported it, over all ranks
    stats = dict(sorted((rollout_stats or {}).items()))
    packed = torch.stack(
        [sums.get(n, torch.zeros((), dtype=torch.float64)) for n in names]
        + [torch.tensor(float(v), dtype=torch.float64) for v in stats.values()]
    )
    total = dict(zip(names + list(stats), all_reduce(packed).unbind(), strict=True))
    tokens = total["tokens"].clamp_min(1)
    logged: dict[str, Tensor] = {
        "train/loss": total["loss"],
        "train/entropy": total["entropy"] / tokens,
        "train/contrast_fraction": total["contrast_groups"] / total["groups"].clamp_min(1),
        "train/weight_abs_mean_pos": total["weight_abs_pos"] / total["count_pos"].clamp_min(1),
        "train/weight_abs_mean_neg": total["weight_abs_neg"] / total["count_neg"].clamp_min(1),
    }
    logged.update({f"train/{n}": total[n] / tokens for n in _TOKEN_WEIGHTED if float(total[f"has_{n}"]) > 0})
    if kl is not None and kl.active:
        logged["train/kl_ref"] = total["kl_ref"]  # each micro-batch's share is already over the step's tokens
    logged.update({k: total[k] / world_size for k in stats})
    if float(total["is_units"]) > 0:
        logged["rollout/is_weight_mean"] = total["is_weight"] / total["is_units"]
        logged["rollout/is_clipped_fraction"] = total["is_clipped"] / total["is_units"]
    if float(total["mismatch_tokens"]) > 0:  # the engine reports behaviour log-probs (every rank's does)
        mismatch_tokens = total["mismatch_tokens"]
        logged["rollout/mismatch_abs_mean"] = total["mismatch_abs"] / mismatch_tokens
        logged["rollout/mismatch_k3"] = total["mismatch_k3"] / mismatch_tokens
        logged["rollout/mismatch_abs_max"] = all_reduce(torch.tensor([mismatch_max], dtype=torch.float64), "max")[0]
    merged = None
    if outputs:
        per_rollout = {k: torch.cat([o[k] for o in outputs]) for k in _PER_ROLLOUT if k in outputs[0]}
        merged = LossOutput(total["loss"], per_rollout | {"weight_normalizer": outputs[0]["weight_normalizer"]})
    rollouts = concat_batches(micro) if micro else minibatch
    return StepResult(bool(total["nonfinite"] > 0), {k: v.float() for k, v in logged.items()}, merged, rollouts)
