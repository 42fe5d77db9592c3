"""How prompts become optimizer steps: rollout batches, mini-batches, micro-batches (one typed config)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal


@dataclass
class RolloutSchedule:
    """The sampling and update schedule. Prompt counts are over **all ranks** (as in verl and the paper).

    A rollout batch samples ``rollouts_per_prompt`` responses for each of ``prompts_per_rollout``
    prompts; it is split into mini-batches of ``prompts_per_minibatch`` prompts (one optimizer step
    each, ``ppo_epochs`` passes); each rank runs its share of a mini-batch as micro-batches of whole
    groups (one forward/backward each) within ``max_tokens_per_micro_batch`` and
    ``max_sequences_per_micro_batch``. The optimizer step's gradient does not depend on that split: the
    losses divide by counts taken over the whole step.

    Args:
        prompts_per_rollout: P, prompts per rollout batch, all ranks together (a multiple of the number of ranks).
        rollouts_per_prompt: n, responses sampled per prompt (the group size), at least 2: every loss learns
            from the reward contrast within a group, which a group of one never has.
        prompts_per_minibatch: M, prompts per optimizer step, all ranks together (a divisor of P and a
            multiple of the number of ranks); None: P, one optimizer step per rollout batch.
        ppo_epochs: passes over each rollout batch.
        dynamic_sampling: DAPO's dynamic sampling: drop groups whose rewards are all equal and sample
            more prompts (uniformly at random, seeded) until every rank holds its share of P groups with a
            reward contrast or ``max_sampling_rounds`` extra rounds are spent. Ranks decide together.
        max_sampling_rounds: cap on the extra rounds of dynamic sampling.
        recompute_old_logprobs: always compute π_old with a no-grad pass, even when the update is exactly
            on-policy (by default that pass is skipped then, and π_old = π_θ.detach()).
        old_logprobs: where π_old comes from. ``trainer``: the training policy's log-probs of the sampled
            tokens (a no-grad pass, or π_θ.detach() when exactly on-policy). ``engine``: the sampling
            engine's behaviour log-probs (vLLM), no extra pass; the train/inference mismatch then enters
            the loss's ratio π_θ/π_old, and importance sampling (ratio π_old/π_behaviour = 1) does nothing.
        max_tokens_per_micro_batch: bound on the padded positions (rows × longest row) of one forward
            pass, for the update and the π_old pass; a group larger than that runs alone. None: no bound.
        max_sequences_per_micro_batch: bound on the rows of one forward pass (whole groups; a group
            larger than that runs alone). None: no bound.
        max_staleness: S, in rollout batches: rollout batch r may be sampled by the policy of the start of rollout
            batch r − S on, by a producer apart from training (``data.producer``) that samples up to S batches
            ahead while the trainer trains. 0 (default): sampling and training take turns, as without a producer.
        staleness_mode: ``fixed``: batch r is sampled by exactly the policy of the start of batch max(0, r − S),
            whatever the timing (the same rollouts, losses and weights in every run: tests, resume, research);
            ``bounded``: by the freshest policy the producer holds when it starts the batch, never older than S
            batches (faster when the producer lags; not deterministic).
    """

    prompts_per_rollout: int = 32
    rollouts_per_prompt: int = 8
    prompts_per_minibatch: int | None = None
    ppo_epochs: int = 1
    dynamic_sampling: bool = False
    max_sampling_rounds: int = 3
    recompute_old_logprobs: bool = False
    old_logprobs: Literal["trainer", "engine"] = "trainer"
    max_tokens_per_micro_batch: int | None = None
    max_sequences_per_micro_batch: int | None = None
    max_staleness: int = 0
    staleness_mode: Literal["fixed", "bounded"] = "fixed"

    def __post_init__(self) -> None:
        for name in ("prompts_per_rollout", "rollouts_per_prompt", "ppo_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"schedule.{name} must be >= 1, got {getattr(self, name)}")
        if self.rollouts_per_prompt < 2:
            raise ValueError(
                f"data.schedule.rollouts_per_prompt must be >= 2 for training, got {self.rollouts_per_prompt}: "
                "the losses learn from the reward contrast within a prompt's group, and a group of one has no "
                "contrast (every update would be zero); use e.g. 8 (Pass@k of validation uses "
                "data.validation.samples, which may be 1)"
            )
        if self.max_sampling_rounds < 0:
            raise ValueError(f"schedule.max_sampling_rounds must be >= 0, got {self.max_sampling_rounds}")
        if self.prompts_per_minibatch is not None and not 1 <= self.prompts_per_minibatch <= self.prompts_per_rollout:
            raise ValueError(
                f"schedule.prompts_per_minibatch must be in [1, prompts_per_rollout={self.prompts_per_rollout}], "
                f"got {self.prompts_per_minibatch}"
            )
        self._check_minibatch_divides()
        if self.old_logprobs not in ("trainer", "engine"):
            raise ValueError(f"schedule.old_logprobs must be 'trainer' or 'engine', got {self.old_logprobs!r}")
        if self.max_staleness < 0:
            raise ValueError(f"schedule.max_staleness must be >= 0 (0: no producer), got {self.max_staleness}")
        if self.staleness_mode not in ("fixed", "bounded"):
            raise ValueError(f"schedule.staleness_mode must be 'fixed' or 'bounded', got {self.staleness_mode!r}")
        for name in ("max_tokens_per_micro_batch", "max_sequences_per_micro_batch"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"schedule.{name} must be >= 1 or null, got {value}")

    def _check_minibatch_divides(self) -> None:
        """Refuse a mini-batch size that would leave a smaller last mini-batch (an uneven optimizer step)."""
        minibatch, rollout = self.minibatch_prompts, self.prompts_per_rollout
        if rollout % minibatch:
            divisors = ", ".join(str(d) for d in range(1, rollout + 1) if rollout % d == 0)
            raise ValueError(
                f"data.schedule.prompts_per_minibatch={minibatch} does not divide "
                f"data.schedule.prompts_per_rollout={rollout}: the last mini-batch of every rollout batch would "
                f"hold only {rollout % minibatch} prompts; use a divisor of {rollout}: {divisors}"
            )

    @property
    def minibatch_prompts(self) -> int:
        """M, prompts per optimizer step over all ranks."""
        return self.prompts_per_minibatch or self.prompts_per_rollout

    @property
    def minibatches_per_epoch(self) -> int:
        return math.ceil(self.prompts_per_rollout / self.minibatch_prompts)

    @property
    def minibatches_per_rollout(self) -> int:
        """Optimizer steps per rollout batch."""
        return self.minibatches_per_epoch * self.ppo_epochs

    @property
    def single_update(self) -> bool:
        """One optimizer step per rollout batch: π_old is the policy at the update (on-policy)."""
        return self.minibatches_per_rollout == 1

    @property
    def asynchronous(self) -> bool:
        """A producer samples ahead of training (``max_staleness`` > 0)."""
        return self.max_staleness > 0

    def check_world_size(self, world_size: int) -> None:
        """Raise ``ValueError`` unless every rank gets an equal share of whole prompts (and, with a producer,
        unless dynamic sampling's rounds could be agreed on)."""
        if self.asynchronous and self.dynamic_sampling and world_size > 1:
            raise ValueError(
                f"data.schedule.dynamic_sampling with max_staleness={self.max_staleness} on {world_size} ranks: "
                "each rank's producer samples its share of a rollout batch ahead of training, and the ranks must "
                "agree on the number of extra sampling rounds, which a producer cannot ask the other ranks (it "
                "issues no collective). Use max_staleness 0 with dynamic sampling on several ranks, or one process"
            )
        for name, value in (
            ("prompts_per_rollout", self.prompts_per_rollout),
            ("prompts_per_minibatch", self.minibatch_prompts),
        ):
            if value % world_size:
                raise ValueError(
                    f"schedule.{name}={value} counts prompts over all {world_size} ranks and must be a multiple of it"
                )

    def local_prompts(self, world_size: int) -> int:
        """Prompts of one rank per rollout batch."""
        return self.prompts_per_rollout // world_size

    def local_minibatch_prompts(self, world_size: int) -> int:
        """Prompts (groups) of one rank per mini-batch."""
        return self.minibatch_prompts // world_size
