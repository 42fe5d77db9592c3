"""Parallel, time-bounded reward scoring of a batch of responses."""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, get_args

from real_lightning.verifiers import math as math_module
from real_lightning.verifiers.answers import GroundTruth, accepted_answers
from real_lightning.verifiers.math import (
    STATUSES,
    WORKER_PRELOAD,
    VerifyResult,
    answer_after_think_text,
    check_timeout,
    math_reward,
    prepare,
    result_from_outcome,
    verify,
)
from real_lightning.verifiers.registry import RewardFn, resolve_reward_fn
from real_lightning.verifiers.sandbox import (
    Outcome,
    WorkerPool,
    can_start_processes,
    loadable_in_worker,
    run_bounded,
)

log = logging.getLogger(__name__)

#: How the math reward finds the final answer (see :func:`score_batch`).
Grader = Literal["lenient", "strict_boxed"]
GRADERS: tuple[str, ...] = get_args(Grader)

_pools_lock = threading.Lock()
_idle_pools: dict[tuple[int, tuple[str, ...]], list[WorkerPool]] = {}


@dataclass(frozen=True)
class BatchScores:
    """Rewards of a batch.

    Attributes:
        rewards: one reward per response, in input order.
        statuses: one status of :data:`~real_lightning.verifiers.math.STATUSES` per response.
        counts: number of responses per status (every status present, zeros included).
    """

    rewards: list[float]
    statuses: list[str]
    counts: dict[str, int]


@contextmanager
def _borrowed_pool(num_workers: int, preload: tuple[str, ...]) -> Iterator[WorkerPool]:
    """A persistent pool for the duration of one batch (concurrent batches get distinct pools)."""
    key = (num_workers, preload)
    with _pools_lock:
        idle = _idle_pools.get(key)
        pool = idle.pop() if idle else None
    if pool is None:
        pool = WorkerPool(num_workers, preload)
    try:
        yield pool
    finally:
        with _pools_lock:
            _idle_pools.setdefault(key, []).append(pool)


def _run_many(
    fn: Callable[..., Any], args_list: list[tuple[Any, ...]], *, num_workers: int, timeout_s: float
) -> list[Outcome]:
    if not args_list:
        return []
    preload = WORKER_PRELOAD if getattr(fn, "__module__", None) == math_module.__name__ else ()
    if min(num_workers, len(args_list)) <= 1 or not can_start_processes() or not loadable_in_worker(fn):
        return [run_bounded(fn, args, timeout_s=timeout_s, preload=preload) for args in args_list]
    with _borrowed_pool(num_workers, preload) as pool:
        return pool.map(fn, args_list, timeout_s)


def _user_result(outcome: Outcome) -> VerifyResult:
    """A user reward function's outcome: a float (``"correct"`` if > 0) or a :class:`VerifyResult`."""
    if outcome.status != "ok":
        return VerifyResult(0.0, "timeout" if outcome.status == "timeout" else "error")
    if isinstance(outcome.value, VerifyResult):
        return outcome.value
    try:
        reward = float(outcome.value)
    except (TypeError, ValueError):
        return VerifyResult(0.0, "error")
    if not math.isfinite(reward):
        return VerifyResult(0.0, "error")
    return VerifyResult(reward, "correct" if reward > 0 else "incorrect")


def score_batch(
    responses: Sequence[str],
    ground_truths: Sequence[GroundTruth],
    *,
    reward_fn: RewardFn | str = math_reward,
    num_workers: int | None = None,
    timeout_s: float = 5.0,
    answer_after_think: bool = False,
    grader: Grader = "lenient",
) -> BatchScores:
    """Score responses against ground truths in parallel, each within its own time budget.

    With the math reward (:func:`~real_lightning.verifiers.math.math_reward`, ``"math"``), responses decided by
    extraction or the exact-number fast path are scored inline; the rest go to a persistent pool of worker processes.
    A user reward function ``fn(response, ground_truth) -> float`` runs in the pool for every response (inline,
    serially, if it cannot be pickled by reference); its exceptions give reward 0 with status ``"error"`` and a
    positive reward counts as ``"correct"``. It may also return a :class:`VerifyResult`.

    A ground truth that is a tuple of accepted answers is scored against each of them (each within its own
    budget) and the response gets the best result: any accepted answer scores 1.

    Args:
        responses: model responses.
        ground_truths: one ground truth per response: a text, or a tuple of accepted answers.
        reward_fn: a callable, a registered name, or a ``"module:function"`` path.
        num_workers: worker processes (default ``os.cpu_count()``); ≤ 1 scores inline.
        timeout_s: wall-clock budget per response, in seconds; overrunning gives reward 0, status ``"timeout"``.
        answer_after_think: grade only the text after the last ``</think>`` (none: ``"no_answer"``).
        grader: how the math reward finds the final answer: ``lenient`` (the last ``\\boxed{}``, else "the
            answer is …", else the last number of the last line) or ``strict_boxed`` (the official REAL rule: a
            ``\\boxed{}`` is required, none scores 0 as ``no_answer``). Other reward functions grade themselves.

    Returns:
        The :class:`BatchScores`, in input order.

    Raises:
        ValueError: if the two lists differ in length, ``timeout_s`` is not positive, or ``grader`` is unknown
            or not ``lenient`` with another reward than the math reward.
    """
    if len(responses) != len(ground_truths):
        raise ValueError(f"{len(responses)} responses but {len(ground_truths)} ground truths")
    check_grader(grader, reward_fn)
    owners = [i for i, truth in enumerate(ground_truths) for _ in accepted_answers(truth)]
    pairs = _score_pairs(
        [responses[i] for i in owners],
        [answer for truth in ground_truths for answer in accepted_answers(truth)],
        reward_fn=reward_fn,
        num_workers=num_workers,
        timeout_s=timeout_s,
        answer_after_think=answer_after_think,
        require_boxed=grader == "strict_boxed",
    )
    best: list[VerifyResult | None] = [None] * len(responses)
    for i, reward, status in zip(owners, pairs.rewards, pairs.statuses, strict=True):
        if best[i] is None or reward > best[i].reward:
            best[i] = VerifyResult(reward, status)
    final = [r if r is not None else VerifyResult(0.0, "error") for r in best]
    return _batch_scores(final)


def check_grader(grader: str, reward_fn: RewardFn | str) -> None:
    """Raise ``ValueError`` unless ``grader`` is a known mode that applies to ``reward_fn``."""
    if grader not in GRADERS:
        raise ValueError(f"grader must be one of {', '.join(GRADERS)}, got {grader!r}")
    fn = resolve_reward_fn(reward_fn)
    if grader != "lenient" and fn is not math_reward and fn is not verify:
        raise ValueError(f"grader {grader!r} applies to the math reward only; {reward_fn!r} grades by itself")


def _batch_scores(results: list[VerifyResult]) -> BatchScores:
    counts = dict.fromkeys(STATUSES, 0)
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    return BatchScores(rewards=[r.reward for r in results], statuses=[r.status for r in results], counts=counts)


def _score_pairs(
    responses: Sequence[str],
    ground_truths: Sequence[str],
    *,
    reward_fn: RewardFn | str = math_reward,
    num_workers: int | None = None,
    timeout_s: float = 5.0,
    answer_after_think: bool = False,
    require_boxed: bool = False,
) -> BatchScores:
    """:func:`score_batch` with exactly one answer per response."""
    check_timeout(timeout_s)
    fn = resolve_reward_fn(reward_fn)
    workers = num_workers if num_workers is not None else os.cpu_count() or 1
    results: list[VerifyResult | None] = [None] * len(responses)
    if fn is math_reward or fn is verify:
        pending: list[int] = []
        symbolic: list[tuple[str, str]] = []
        for i, (response, truth) in enumerate(zip(responses, ground_truths, strict=True)):
            prepared = prepare(response, truth, answer_after_think=answer_after_think, require_boxed=require_boxed)
            if isinstance(prepared, VerifyResult):
                results[i] = prepared
            else:
                pending.append(i)
                symbolic.append(prepared)
        outcomes = _run_many(math_module._symbolic_status, symbolic, num_workers=workers, timeout_s=timeout_s)
        for i, outcome in zip(pending, outcomes, strict=True):
            results[i] = result_from_outcome(outcome)
    else:
        pending = []
        calls: list[tuple[str, str]] = []
        for i, (response, truth) in enumerate(zip(responses, ground_truths, strict=True)):
            text = response or ""
            if answer_after_think:
                after = answer_after_think_text(text)
                if after is None:
                    results[i] = VerifyResult(0.0, "no_answer")
                    continue
                text = after
            pending.append(i)
            calls.append((text, truth))
        outcomes = _run_many(fn, calls, num_workers=workers, timeout_s=timeout_s)
        errors = [o.error for o in outcomes if o.status == "error"]
        if errors:
            log.warning(
                "reward function %r failed on %d of %d responses; first: %s", fn, len(errors), len(calls), errors[0]
            )
        for i, outcome in zip(pending, outcomes, strict=True):
            results[i] = _user_result(outcome)
    return _batch_scores([r if r is not None else VerifyResult(0.0, "error") for r in results])
