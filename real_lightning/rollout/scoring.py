"""Scoring a batch of responses: the reward function, its time budget, and the truncation rule."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from real_lightning.rewards import resolve_reward_fn, score_batch
from real_lightning.rewards.answers import GroundTruth
from real_lightning.rewards.grading import Grader, check_batch_timeout, check_grader


@dataclass
class Scores:
    """Rewards [B] float32 and counts of verifier outcomes (``correct``, ``timeout``, ``truncated``, ...)."""

    rewards: Tensor
    counts: dict[str, int]


class Scorer:
    """Score responses against ground truths.

    Args:
        reward: a registered reward name (``math``) or ``package.module:function`` (it may take row fields: see
            :func:`~real_lightning.rewards.registry.reward_fn_fields`).
        timeout_s: per-sample time budget; a timeout scores 0 and is counted.
        num_workers: processes for the verifier (default: all cores).
        answer_after_think: grade only the text after ``</think>``.
        grader: ``lenient`` or ``strict_boxed`` (a ``\\boxed{}`` answer required; math reward only).
        truncated_is_wrong: a response cut at the length limit without EOS scores 0 (otherwise a
            policy learns to stop emitting EOS when the reward ignores what follows the answer).
        batch_timeout_s: time budget of one call of :meth:`score` (a rank's rollout batch, a validation
            chunk); the responses not graded when it runs out score 0 as timeouts (None: no budget).
    """

    def __init__(
        self,
        reward: str | Callable[..., float] = "math",
        timeout_s: float = 5.0,
        num_workers: int | None = None,
        answer_after_think: bool = False,
        truncated_is_wrong: bool = False,
        grader: Grader = "lenient",
        batch_timeout_s: float | None = 300.0,
    ) -> None:
        self.reward_fn = resolve_reward_fn(reward)
        check_grader(grader, self.reward_fn)
        check_batch_timeout(batch_timeout_s)
        self.batch_timeout_s = batch_timeout_s
        self.grader = grader
        self.timeout_s = timeout_s
        self.num_workers = num_workers
        self.answer_after_think = answer_after_think
        self.truncated_is_wrong = truncated_is_wrong

    def score(
        self,
        responses: list[str],
        ground_truths: list[GroundTruth],
        truncated: Tensor,
        row_fields: Sequence[Mapping[str, Any]] | None = None,
    ) -> Scores:
        """Rewards of ``responses``; ``row_fields``: per response, the row fields the reward function takes."""
        result = score_batch(
            responses,
            ground_truths,
            row_fields=row_fields,
            reward_fn=self.reward_fn,
            num_workers=self.num_workers,
            timeout_s=self.timeout_s,
            answer_after_think=self.answer_after_think,
            grader=self.grader,
            batch_timeout_s=self.batch_timeout_s,
        )
        rewards = torch.tensor(result.rewards, dtype=torch.float32)
        counts = dict(result.counts)
        if self.truncated_is_wrong:
            cut = truncated.cpu()
            counts["truncated_zeroed"] = int((cut & (rewards != 0)).sum())
            rewards = torch.where(cut, torch.zeros_like(rewards), rewards)
        return Scores(rewards, counts)
