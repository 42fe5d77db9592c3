"""One optimizer step as micro-batches of whole groups, and the micro-batched π_old pass.

Both run the same number of forward (and backward) passes on every rank: a rank with fewer
micro-batches runs zero-weight passes on a one-token dummy, so that a sharded policy's collectives
line up. The loss of every micro-batch is divided by counts taken over the whole step (all
micro-batches, all ranks) and multiplied by the number of ranks (DDP and FSDP average gradients
over ranks), so the step's gradient is the gradient of the whole mini-batch's loss, however it is split.

The micro-batch loop reads nothing back from the device: its metrics add up there
(:class:`~real_lightning.step.metrics.StepMetrics`) and go to the host once, after the loop, and a
non-finite loss is replaced by zero on the device (:func:`backward_if_finite`). The other parts of the
step: :mod:`real_lightning.step.importance` (truncated importance sampling, the engine-vs-trainer
mismatch), :meth:`KLPenalty.penalty <real_lightning.losses.kl.KLPenalty.penalty>` (the KL term),
:mod:`real_lightning.step.metrics` (the all-reduce, the names, :class:`StepResult`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from real_lightning.losses import LossOutput
from real_lightning.losses.common import BatchCounts
from real_lightning.losses.kl import KLPenalty
from real_lightning.rollout.batch import RolloutBatch, concat_batches
from real_lightning.step.importance import ImportanceSampling, mismatch, truncated_importance
from real_lightning.step.metrics import StepMetrics, StepResult
from real_lightning.utils.distributed import all_reduce, all_reduce_max

LogprobsFn = Callable[..., tuple[Tensor, Tensor | None]]
"""``fn(batch, with_entropy=False) -> ([B, T] log-probs, [B, T] entropy or None)``."""
Budget = tuple[int | None, int | None]
"""(max padded tokens, max sequences) of one micro-batch."""


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


def step_counts(
    minibatch: RolloutBatch,
    device: torch.device,
    extra_counts: Callable[[Tensor, Tensor, Tensor], Mapping[str, Any]] | None = None,
) -> BatchCounts:
    """The normalisers of the step: groups, contrast rollouts, sequences and response tokens of ``minibatch``
    (and a loss's own ``extra_counts``), summed over the ranks (one all-reduce of a [4 + E] float64 tensor), each
    field a [] float64 on ``device``, copied there once for all the micro-batches' losses."""
    local = BatchCounts.of(minibatch.response_mask, minibatch.rewards, minibatch.group_ids, extra_counts)
    return BatchCounts.from_tensor(all_reduce(local.as_tensor()).to(device), local.extra)


def backward_if_finite(loss: Tensor, logprobs: Tensor, backward: Callable[[Tensor], None], scale: float = 1) -> Tensor:
    """Back-propagate ``loss · scale`` into the policy, or zero where ``loss`` is not finite, without a host sync.

    The gradient g = ∂(loss · scale)/∂logprobs ([B, T], the loss's own graph) is taken first and replaced by
    zeros on the device when the loss is NaN or ±inf; then ``backward`` runs on Σ logprobs · g, whose gradient
    with respect to ``logprobs`` is g exactly. The policy's gradient is bit for bit the one of
    ``backward(loss · scale)`` (or of a zero-weight pass), as long as the loss depends on the parameters only
    through ``logprobs`` (every loss of :data:`~real_lightning.losses.LOSSES`, and the KL term, does). A
    precision plugin that scales the loss (fp16 AMP) scales Σ logprobs · g instead: the same gradient for a
    power-of-two scale.

    Args:
        loss: [] the micro-batch's loss.
        logprobs: [B, T] the policy's log-probs the loss was computed from.
        backward: back-propagates a scalar (the strategy's backward).
        scale: the factor of the gradient (the number of ranks DDP/FSDP average over).

    Returns:
        [] bool, whether ``loss`` was finite (on the device).
    """
    finite = torch.isfinite(loss)
    (grad,) = torch.autograd.grad(loss * scale, logprobs)
    backward((logprobs * torch.where(finite, grad, torch.zeros_like(grad))).sum())
    return finite


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
    KL(π_behaviour ‖ π_old)). Nothing in the micro-batch loop is copied to the host; the metrics are
    reduced once, after it (:meth:`StepMetrics.reduce <real_lightning.step.metrics.StepMetrics.reduce>`).
    """
    micro = minibatch.micro_batches(*budget) if len(minibatch) else []
    # a loss's own normalisers (LossSpec.extra_counts) are summed like the rest
    counts = step_counts(minibatch, device, getattr(loss_fn, "extra_counts", None))
    metrics = StepMetrics(device)
    kl_active = kl is not None and kl.active
    for i in range(all_reduce_max(len(micro))):
        if i >= len(micro):
            logprobs, _ = logprobs_fn(dummy_batch(minibatch.temperature, device))
            backward(logprobs.sum() * 0.0)
            continue
        batch = micro[i].to(device)
        mask = batch.response_mask
        logprobs, entropy = logprobs_fn(batch, with_entropy=True)
        old = batch.old_logprobs if batch.old_logprobs is not None else logprobs.detach()
        weights = truncated_importance(importance_sampling, old, batch.behaviour_logprobs, mask)
        if weights is not None:
            metrics.add_importance(weights)
        out = loss_fn(
            logprobs=logprobs,
            old_logprobs=old,
            response_mask=mask,
            rewards=batch.rewards,
            group_ids=batch.group_ids,
            counts=counts,
            **({} if weights is None else {"importance_weights": weights.weights}),
            **loss_kwargs,
        )
        loss = out.loss
        if kl_active:
            penalty = kl.penalty(logprobs, batch.ref_logprobs, mask, counts)
            metrics.add("kl_ref", penalty.detach())
            loss = loss + kl.coef * penalty
        finite = backward_if_finite(loss, logprobs, backward, scale=world_size)
        if batch.behaviour_logprobs is not None:  # train/inference mismatch: π_old against the sampler's log-probs
            metrics.add_mismatch(mismatch(old, batch.behaviour_logprobs, mask))
        metrics.add_loss(out, mask, entropy, finite)
        del logprobs, entropy, out, loss
    rollouts = concat_batches(micro) if micro else minibatch
    return metrics.result(rollouts, rollout_stats, world_size, kl_active)
