"""The rollout collector: turns a request into verified rollouts (engine → scorer → RolloutBatch).

It belongs to the data side: the module asks it for rollouts and pushes weights to its engines; it
never calls back into the module. It owns the rollout batch in flight: nothing else writes into it. π_old
and π_ref, which the module computes, reach it through :meth:`RolloutCollector.attach_logprobs` (a new
record replaces the old), and the checkpoint saves what the collector holds, so a run resumed in the middle
of a rollout batch continues on exactly the same rollouts.

Sampling issues no collective. Dynamic sampling's extra rounds need every rank to agree (a sharded policy
samples with all ranks): the caller decides between rounds — :meth:`RolloutCollector.start_rollout_batch`,
then :meth:`~RolloutCollector.sample_round` while :meth:`~RolloutCollector.more_rounds_allowed` and any rank is
:meth:`~RolloutCollector.short_of_groups`, then :meth:`~RolloutCollector.finish_rollout_batch` (the module does
this at the step boundary, with one all-reduce per round; :meth:`~RolloutCollector.collect` is the same loop
decided by this rank alone, for one process).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from real_lightning.rollout.batch import RolloutBatch, ValidationRollouts, concat_batches
from real_lightning.rollout.engine import Generation, RolloutEngine
from real_lightning.rollout.requests import PromptOrder, RolloutRequest, ValidationRequest, derive_seed
from real_lightning.rollout.schedule import RolloutSchedule
from real_lightning.rollout.scoring import Scorer, Scores
from real_lightning.utils.distributed import all_gather_objects
from real_lightning.utils.groups import build_groups

if TYPE_CHECKING:  # the data package imports this module; the producer package imports it too
    from torch import nn

    from real_lightning.data.prompts import TokenizedPrompt

log = logging.getLogger(__name__)


@dataclass
class Sampled:
    """Responses to some prompts, scored, and the seconds each phase took."""

    prompts: list[TokenizedPrompt]
    generation: Generation
    scores: Scores
    generation_s: float
    verification_s: float


def sample_and_score(
    engine: RolloutEngine, scorer: Scorer, prompts: list[TokenizedPrompt], n: int, seed: int
) -> Sampled:
    """Generate ``n`` responses per prompt with ``engine`` (seeded) and score them against the ground truths."""
    start = time.perf_counter()
    generation = engine.generate([p.ids for p in prompts], n, seed)
    generated = time.perf_counter()
    truths = [p.record.ground_truth for p in prompts for _ in range(n)]
    fields = [p.record.row_fields for p in prompts for _ in range(n)]
    scores = scorer.score(generation.texts, truths, generation.truncated, row_fields=fields)
    return Sampled(prompts, generation, scores, generated - start, time.perf_counter() - generated)


@dataclass
class _RolloutBatchInProgress:
    """A rollout batch being sampled: the rounds so far and the groups kept (dynamic sampling)."""

    request: RolloutRequest
    start: float
    sampled: list[RolloutBatch]
    kept: RolloutBatch


def _as_rollouts(sampled: Sampled, n: int, group_offset: int, temperature: float, version: int) -> RolloutBatch:
    g, count = sampled.generation, len(sampled.prompts)
    return RolloutBatch(
        input_ids=g.input_ids.cpu(),
        attention_mask=g.attention_mask.cpu(),
        response_mask=g.response_mask.cpu(),
        prompt_length=g.prompt_length,
        rewards=sampled.scores.rewards.cpu(),
        group_ids=torch.arange(group_offset, group_offset + count).repeat_interleave(n),
        prompt_ids=torch.tensor([p.record.index for p in sampled.prompts]).repeat_interleave(n),
        truncated=g.truncated.cpu(),
        temperature=temperature,
        policy_version=version,
        behaviour_logprobs=None if g.behaviour_logprobs is None else g.behaviour_logprobs.float().cpu(),
        responses=list(g.texts),
        ground_truths=[p.record.ground_truth for p in sampled.prompts for _ in range(n)],
        prompts=[p.text for p in sampled.prompts for _ in range(n)],
        stats={
            "time/generation_s": sampled.generation_s,
            "time/verification_s": sampled.verification_s,
            "rollout/generated_tokens": float(g.response_mask.sum()),
            **{f"verifier/{status}": float(c) for status, c in sampled.scores.counts.items()},
        },
    )


def contrast_mask(batch: RolloutBatch) -> Tensor:
    """[B] bool, the rollout's group holds at least two distinct rewards."""
    groups = build_groups(batch.rewards, batch.group_ids)
    return groups.contrast[groups.index]


class RolloutCollector:
    """Rollouts for training requests and scored samples for validation requests, on one rank.

    Args:
        prompts: tokenized training prompts (``RolloutRequest.prompt_indices`` index them).
        engine: samples training rollouts.
        scorer: verifies responses.
        schedule: the sampling schedule (global counts).
        order: the training prompt order (dynamic sampling draws its extra prompts from it); None before fit.
        seed: the run's seed.
        rank, world_size: this rank and the number of ranks.
        val_prompts: tokenized validation sets by name.
        val_engine: samples for validation (default: ``engine``).
        val_samples: responses per validation prompt.
    """

    def __init__(
        self,
        prompts: list[TokenizedPrompt],
        engine: RolloutEngine,
        scorer: Scorer,
        schedule: RolloutSchedule,
        order: PromptOrder | None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        val_prompts: dict[str, list[TokenizedPrompt]] | None = None,
        val_engine: RolloutEngine | None = None,
        val_samples: int = 8,
    ) -> None:
        self.prompts, self.engine, self.scorer, self.schedule, self.order = prompts, engine, scorer, schedule, order
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.val_prompts = dict(val_prompts or {})
        self.val_engine = val_engine or engine
        self.val_samples = val_samples
        self.next_step = 0
        """The first training step not yet served (the data position a checkpoint saves)."""
        self._rollout_index = -1
        self._batch: RolloutBatch | None = None
        self._in_progress: _RolloutBatchInProgress | None = None
        self.producer: Any = None
        """A :class:`~real_lightning.rollout.producer.RolloutProducer` that samples ahead of training when
        ``schedule.max_staleness`` > 0 (the data module attaches it for fit; the producer package imports this
        module, not the reverse)."""
        self._restored_ahead: dict[int, RolloutBatch] = {}
        self._received_at: float | None = None  # perf_counter when the trainer got its latest producer batch

    # --- training ahead of sampling (a producer) ------------------------------------------------------

    def attach_producer(self, producer: Any) -> None:
        """Sample through ``producer`` from now on (it gets any batches a checkpoint held in flight)."""
        self.producer = producer
        if producer is not None and self._restored_ahead:
            producer.restore(self._restored_ahead)
            self._restored_ahead = {}

    def publish_weights(self, rollout_index: int, version: int, policy: nn.Module) -> None:
        """Give the producer the weights at the start of rollout batch ``rollout_index`` (every rank at once)."""
        assert self.producer is not None
        self.producer.publish(rollout_index, version, policy)

    def receive_rollout_batch(self, request: RolloutRequest) -> RolloutBatch:
        """The producer's rollout batch of ``request``, which becomes the batch in flight. A batch older than the
        staleness bound (never, by the producer's rule: the backstop) is dropped and counted, not trained on.

        Its stats gain ``time/wait_for_rollouts_s`` (the trainer idle, waiting for it), ``rollout/stale_dropped``
        and, from the second batch on, ``time/trainer_busy_s`` (seconds from receiving the previous batch to asking
        for this one: training it)."""
        assert self.producer is not None
        asked = time.perf_counter()
        batch, waited = self.producer.take(request.rollout_index)
        stale = batch.rollout_staleness > self.schedule.max_staleness
        if stale:
            log.error(
                "rollout batch %d was sampled %d rollout batches ago, past data.schedule.max_staleness = %d: its "
                "groups are dropped",
                request.rollout_index,
                batch.rollout_staleness,
                self.schedule.max_staleness,
            )
            batch = batch.take_groups(torch.empty(0, dtype=torch.long))
        stats = {**batch.stats, "time/wait_for_rollouts_s": waited, "rollout/stale_dropped": float(stale)}
        if self._received_at is not None:  # trainer idle share = wait / (wait + busy): run health reads it
            stats["time/trainer_busy_s"] = asked - self._received_at
        self._received_at = time.perf_counter()
        self._batch, self._rollout_index = replace(batch, stats=stats), request.rollout_index
        return self._batch

    # --- training ---------------------------------------------------------------------------------

    def needs_generation(self, request: RolloutRequest) -> bool:
        """Serving ``request`` will sample a new rollout batch (the engine must hold the current weights)."""
        return request.rollout_index != self._rollout_index

    def rollouts(self, request: RolloutRequest) -> RolloutBatch:
        """This rank's whole rollout batch of ``request`` (sampled, scored, filtered), sampled on first use.

        Sampling here decides dynamic sampling's rounds from this rank alone (:meth:`collect`): with several
        ranks the caller samples first, agreeing on the rounds across ranks (the module does)."""
        if self.needs_generation(request):
            if self.world_size > 1:
                raise RuntimeError(
                    "with several ranks, sample the rollout batch first (start_rollout_batch, sample_round while "
                    "any rank is short_of_groups, finish_rollout_batch)"
                )
            self.collect(request)
        assert self._batch is not None
        return self._batch

    def collect(self, request: RolloutRequest) -> RolloutBatch:
        """Sample, score and filter the rollout batch of ``request``, this rank deciding dynamic sampling's rounds
        alone: round 0, more rounds while allowed and short of groups, then the batch's statistics."""
        self.start_rollout_batch(request)
        while self.more_rounds_allowed() and self.short_of_groups():
            self.sample_round()
        return self.finish_rollout_batch()

    def start_rollout_batch(self, request: RolloutRequest) -> None:
        """Sample and score round 0 of ``request``'s rollout batch (the previous batch is freed first)."""
        self._batch, self._rollout_index = None, -1
        start = time.perf_counter()
        first = self._sample(request.prompt_indices, request.seed, group_offset=0)
        kept = first.select(torch.nonzero(contrast_mask(first)).flatten()) if self.schedule.dynamic_sampling else first
        self._in_progress = _RolloutBatchInProgress(request, start, [first], kept)

    def more_rounds_allowed(self) -> bool:
        """Dynamic sampling is on and fewer than ``max_sampling_rounds`` extra rounds were sampled."""
        progress = self._in_progress
        assert progress is not None, "start_rollout_batch first"
        return self.schedule.dynamic_sampling and len(progress.sampled) - 1 < self.schedule.max_sampling_rounds

    def short_of_groups(self) -> bool:
        """This rank kept fewer groups with a contrast than its share of prompts (dynamic sampling)."""
        progress = self._in_progress
        assert progress is not None, "start_rollout_batch first"
        return _num_groups(progress.kept) < len(progress.request.prompt_indices)

    def sample_round(self) -> None:
        """Dynamic sampling's next round: as many fresh prompts from the order as the rollout batch has, their
        groups with a contrast kept."""
        progress = self._in_progress
        assert progress is not None and self.order is not None
        round_index = len(progress.sampled)
        request, count = progress.request, len(progress.request.prompt_indices)
        indices = self.order.refill(request.rollout_index, round_index, self.rank, count)
        seed = derive_seed(self.seed, "sample", request.rollout_index, self.rank, round_index)
        more = self._sample(indices, seed, group_offset=round_index * count)
        progress.sampled.append(more)
        progress.kept = concat_batches([progress.kept, more.select(torch.nonzero(contrast_mask(more)).flatten())])

    def finish_rollout_batch(self) -> RolloutBatch:
        """The rollout batch being sampled, complete (its first groups with a contrast under dynamic sampling),
        with its statistics; it becomes the batch in flight."""
        progress = self._in_progress
        assert progress is not None
        count = len(progress.request.prompt_indices)
        batch, sampled = progress.kept, progress.sampled
        if self.schedule.dynamic_sampling and len(batch):
            batch = batch.take_groups(batch.groups_in_order()[:count])
        raw = concat_batches(sampled) if len(sampled) > 1 else sampled[0]
        batch = replace(batch, stats=_rollout_stats(sampled, raw, batch, time.perf_counter() - progress.start))
        sleep = getattr(self.engine, "sleep", None)  # engines that can free their memory while the trainer runs
        if callable(sleep):
            sleep()
        self._in_progress = None
        self._batch, self._rollout_index = batch, progress.request.rollout_index
        return batch

    def attach_logprobs(self, old: Tensor | None = None, ref: Tensor | None = None) -> RolloutBatch:
        """The batch in flight with π_old (and π_ref) [B, T] log-probs the module computed, as a new record that
        replaces it (and that a checkpoint saves); None leaves a field as it is."""
        assert self._batch is not None, "no rollout batch in flight"
        updates = {name: value for name, value in (("old_logprobs", old), ("ref_logprobs", ref)) if value is not None}
        self._batch = replace(self._batch, **updates)
        return self._batch

    def minibatch(self, request: RolloutRequest) -> RolloutBatch:
        """This rank's groups of mini-batch ``request.minibatch_index`` (possibly none, after dynamic sampling).

        The first mini-batch of a rollout batch carries the batch's ``stats``. Serving it moves the data
        position past ``request.step``.
        """
        batch = self.rollouts(request)
        epoch, position = divmod(request.minibatch_index, self.schedule.minibatches_per_epoch)
        groups = batch.groups_in_order()
        generator = torch.Generator().manual_seed(
            derive_seed(self.seed, "minibatch", request.rollout_index, self.rank, epoch)
        )
        groups = groups[torch.randperm(groups.numel(), generator=generator)]
        size = self.schedule.local_minibatch_prompts(self.world_size)
        minibatch = batch.take_groups(groups[position * size : (position + 1) * size])
        minibatch = replace(minibatch, stats=dict(batch.stats) if request.minibatch_index == 0 else {})
        self.next_step = request.step + 1
        return minibatch

    def _sample(self, indices: tuple[int, ...], seed: int, group_offset: int) -> RolloutBatch:
        sampled = sample_and_score(
            self.engine, self.scorer, [self.prompts[i] for i in indices], self.schedule.rollouts_per_prompt, seed
        )
        n = self.schedule.rollouts_per_prompt
        return _as_rollouts(sampled, n, group_offset, self.engine.temperature, self.engine.policy_version)

    # --- validation -------------------------------------------------------------------------------

    def validate(self, request: ValidationRequest) -> ValidationRollouts:
        """Score ``val_samples`` responses to each prompt of the request; an empty request still generates once.

        The padding request of a rank with fewer chunks samples one prompt and returns zero rows, so that
        every rank generates the same number of times (a sharded policy needs all ranks in each forward).
        """
        prompts = self.val_prompts[request.dataset]
        chosen = [prompts[i] for i in request.prompt_indices] or prompts[:1]
        sampled = sample_and_score(self.val_engine, self.scorer, chosen, self.val_samples, request.seed)
        rows = len(request.prompt_indices)
        shape = (len(chosen), self.val_samples)
        return ValidationRollouts(
            dataset=request.dataset,
            correct=(sampled.scores.rewards > 0.5).reshape(shape)[:rows].cpu(),
            response_lengths=sampled.generation.response_mask.sum(-1).reshape(shape)[:rows].cpu(),
            truncated=sampled.generation.truncated.reshape(shape)[:rows].cpu(),
        )

    # --- checkpoint state -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The data position and every rank's rollout batch in flight (a collective: all ranks call it).

        The batch is saved only while steps of it remain (not after its last mini-batch). With a producer, the
        batches it samples ahead are saved too, finished (``ahead``; this waits for the producer to finish
        every batch the published weights allow): a resumed run trains on exactly the same rollouts.
        """
        in_flight = self._batch is not None and self.next_step % self.schedule.minibatches_per_rollout != 0
        local = {
            "rollout_index": self._rollout_index if in_flight else -1,
            "batch": batch_state(self._batch) if in_flight else None,
        }
        if self.producer is not None or self._restored_ahead:
            ahead = self.producer.in_flight() if self.producer is not None else self._restored_ahead
            local["ahead"] = {r: batch_state(b) for r, b in sorted(ahead.items())}
        return {"next_step": self.next_step, "world_size": self.world_size, "ranks": all_gather_objects(local)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.next_step = int(state["next_step"])
        self._rollout_index, self._batch = -1, None
        if state["world_size"] != self.world_size:
            log.warning(
                "the checkpoint was written by %d ranks and this run has %d: the rollout batch in flight is "
                "sampled again from the current weights (the resumed run is not bit-identical)",
                state["world_size"],
                self.world_size,
            )
            return
        local = state["ranks"][self.rank]
        if local["batch"] is not None:
            self._rollout_index, self._batch = int(local["rollout_index"]), RolloutBatch(**local["batch"])
        self._restored_ahead = {int(r): RolloutBatch(**b) for r, b in local.get("ahead", {}).items()}
        if self.producer is not None and self._restored_ahead:
            self.attach_producer(self.producer)


def _num_groups(batch: RolloutBatch) -> int:
    return batch.num_groups if len(batch) else 0


def batch_state(batch: RolloutBatch) -> dict[str, Any]:
    """Plain values only (tensors, lists, numbers): checkpoints load with ``weights_only=True``."""
    values = {f.name: getattr(batch, f.name) for f in fields(batch)}
    return {name: value.cpu() if isinstance(value, Tensor) else value for name, value in values.items()}


def _rollout_stats(
    sampled: list[RolloutBatch], raw: RolloutBatch, batch: RolloutBatch, seconds: float
) -> dict[str, float]:
    """What the rollout phase logs: rewards, lengths, truncation, contrast, timings, verifier counts."""
    lengths = raw.response_lengths.float()
    stats = {key: sum(b.stats.get(key, 0.0) for b in sampled) for key in sampled[0].stats}
    stats.update(
        {
            "rollout/reward_mean": float(raw.rewards.float().mean()),
            "rollout/contrast_fraction": float(contrast_mask(raw).float().mean()),
            "rollout/response_length_mean": float(lengths.mean()),
            "rollout/response_length_max": float(lengths.max()),
            "rollout/truncation_rate": float(raw.truncated.float().mean()),
            "rollout/groups": float(_num_groups(batch)),
            "rollout/sampling_rounds": float(len(sampled)),
            "time/rollout_s": seconds,
        }
    )
    stats["rollout/tokens_per_s"] = stats["rollout/generated_tokens"] / max(stats["time/generation_s"], 1e-9)
    return stats
