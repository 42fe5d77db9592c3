"""Parallel, time-bounded reward scoring of a batch of responses.

Three limits keep a slow grader from stalling a training step:

* each response has its own budget (``timeout_s``, ``data.verifier.timeout_s``);
* a batch has one too (``batch_timeout_s``, ``data.verifier.batch_timeout_s``): when it runs out, the responses not
  graded yet score 0 as ``"timeout"``, the busy workers are killed, and a warning says how many were cut;
* a stop request: :func:`request_stop` (safe in a signal handler, e.g. one for SIGTERM that only sets a flag, as
  Lightning's does) ends every grading in progress within about 0.1 s the same way, and every grading started
  until :func:`clear_stop`. A signal handler that raises (Ctrl-C's ``KeyboardInterrupt``) also ends a grading at
  once, its workers killed.

A grading that takes longer than :data:`PROGRESS_EVERY_S` seconds logs a progress line (through :mod:`logging`, at
warning level, on every rank on its own) every that many seconds.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from numbers import Real
from typing import Any, Literal, get_args

from real_lightning.rewards import math as math_module
from real_lightning.rewards.answers import GroundTruth, accepted_answers
from real_lightning.rewards.math import (
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
from real_lightning.rewards.registry import RewardFn, check_reward_fields, resolve_reward_fn, reward_fn_name
from real_lightning.rewards.timeouts import (
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

#: A grading that runs longer than this logs a progress line every this many seconds.
PROGRESS_EVERY_S = 30.0
#: The cut reasons of a response not graded (its status is ``"timeout"``).
CUT_BATCH_BUDGET = "batch_timeout_s"
CUT_STOP = "stop requested"
#: Characters of a response or ground truth quoted in an error.
_QUOTE_CHARS = 200

_stop_requested = False  # a plain flag: set from signal handlers, read from any thread


def request_stop() -> None:
    """End every grading in progress early, and every one started until :func:`clear_stop`.

    Responses not graded yet score 0 with status ``"timeout"`` (counted like per-response timeouts) and one warning
    per grading says how many. Busy worker processes are killed. Safe to call from a signal handler (it only sets a
    flag, polled every ~0.05 s) and from any thread; a SIGTERM handler that lets a training step end early calls it.
    """
    global _stop_requested
    _stop_requested = True


def clear_stop() -> None:
    """Grade normally again after :func:`request_stop`."""
    global _stop_requested
    _stop_requested = False


def stop_requested() -> bool:
    """Whether :func:`request_stop` was called (and not cleared since)."""
    return _stop_requested


class _Grading:
    """The clock, the cut rule and the progress of one :func:`score_batch` call."""

    def __init__(self, total: int, timeout_s: float, batch_timeout_s: float | None) -> None:
        self.start = time.monotonic()
        self.deadline = self.start + batch_timeout_s if batch_timeout_s is not None else math.inf
        self.total, self.timeout_s, self.batch_timeout_s = total, timeout_s, batch_timeout_s
        self.graded = self.timeouts = 0
        self.cut: dict[str, int] = {}
        self.next_report = self.start + PROGRESS_EVERY_S

    def cut_reason(self) -> str | None:
        """Why the calls not finished must end now, or ``None`` (quick and lock-free: polled in a signal handler)."""
        if _stop_requested:
            return CUT_STOP
        if time.monotonic() >= self.deadline:
            return CUT_BATCH_BUDGET
        return None

    def observe(self, outcome: Outcome | VerifyResult | None) -> None:
        """Count a finished check (``None``: none, a poll) and log progress when due."""
        if outcome is not None:
            self.graded += 1
            self.timeouts += outcome.status == "timeout"
            reason = getattr(outcome, "cut", None)
            if reason is not None:
                self.cut[reason] = self.cut.get(reason, 0) + 1
        now = time.monotonic()
        if now >= self.next_report:
            self.next_report = now + PROGRESS_EVERY_S
            log.warning(
                "grading: %d/%d checks done (%d timeouts so far) after %.0f s (per-response budget "
                "data.verifier.timeout_s=%.3g s, batch budget data.verifier.batch_timeout_s=%s)",
                self.graded,
                self.total,
                self.timeouts,
                now - self.start,
                self.timeout_s,
                f"{self.batch_timeout_s:.3g} s" if self.batch_timeout_s is not None else "off",
            )

    def warn_cut(self) -> None:
        """One warning when responses were left ungraded, with the option to raise."""
        elapsed = time.monotonic() - self.start
        if n := self.cut.get(CUT_BATCH_BUDGET, 0):
            log.warning(
                "grading ran out of its batch budget (data.verifier.batch_timeout_s=%.3g s) after %.0f s: %d of %d "
                "checks were not done and score 0 as timeouts; raise data.verifier.batch_timeout_s or "
                "data.verifier.workers, or lower data.verifier.timeout_s",
                self.batch_timeout_s,
                elapsed,
                n,
                self.total,
            )
        if n := self.cut.get(CUT_STOP, 0):
            log.warning(
                "grading stopped after %.0f s at a stop request (real_lightning.rewards.grading.request_stop): "
                "%d of %d checks were not done and score 0 as timeouts",
                elapsed,
                n,
                self.total,
            )


@dataclass(frozen=True)
class BatchScores:
    """Rewards of a batch.

    Attributes:
        rewards: one reward per response, in input order.
        statuses: one status of :data:`~real_lightning.rewards.math.STATUSES` per response.
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
    fn: Callable[..., Any],
    args_list: list[tuple[Any, ...]],
    *,
    num_workers: int,
    timeout_s: float,
    grading: _Grading,
) -> list[Outcome]:
    """``fn(*args)`` for each ``args``: inline when one worker would do (or processes cannot be used), else in a
    pool; the batch budget, stop requests and progress apply either way (inline, through the SIGALRM poll)."""
    if not args_list:
        return []
    preload = WORKER_PRELOAD if getattr(fn, "__module__", None) == math_module.__name__ else ()
    if min(num_workers, len(args_list)) <= 1 or not can_start_processes() or not loadable_in_worker(fn):
        outcomes = []
        for args in args_list:
            reason = grading.cut_reason()
            if reason is None:
                outcome = run_bounded(fn, args, timeout_s=timeout_s, preload=preload, cut=grading.cut_reason)
            else:
                outcome = Outcome("timeout", cut=reason)
            grading.observe(outcome)
            outcomes.append(outcome)
        return outcomes
    with _borrowed_pool(num_workers, preload) as pool:
        return pool.map(fn, args_list, timeout_s, cut=grading.cut_reason, progress=grading.observe)


def _quote(text: str) -> str:
    return repr(text if len(text) <= _QUOTE_CHARS else text[:_QUOTE_CHARS] + "…")


class _WithRowFields:
    """``fn(response, ground_truth, **fields)`` as a call of three positional arguments (those a worker gets).

    It pickles by reference to ``fn`` (a worker loads it when it can load ``fn``), and carries ``fn``'s module so
    that :func:`~real_lightning.rewards.timeouts.loadable_in_worker` judges ``fn``.
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.__module__ = getattr(fn, "__module__", None)

    def __call__(self, response: str, ground_truth: str, fields: Mapping[str, Any]) -> Any:
        return self.fn(response, ground_truth, **fields)


def _reward_value(value: Any) -> float | None:
    """The reward a user function returned, as a float; ``None`` unless it is a number (not a text) in [0, 1]."""
    if isinstance(value, VerifyResult):
        value = value.reward
    if isinstance(value, (str, bytes)) or not (isinstance(value, Real) or hasattr(value, "__float__")):
        return None
    try:
        reward = float(value)
    except (TypeError, ValueError):
        return None
    return reward if 0.0 <= reward <= 1.0 else None  # NaN fails both comparisons


def _user_result(outcome: Outcome, fn: Callable[..., Any], response: str, ground_truth: str) -> VerifyResult:
    """A user reward function's outcome: a number in [0, 1] (``"correct"`` if > 0) or a :class:`VerifyResult`.

    Raises:
        ValueError: for any other value (NaN, out of range, not a number), naming the function, the value, the
            response and the ground truth: such a reward cannot be a label, and scoring it 0 would hide a bug.
    """
    if outcome.status != "ok":
        return VerifyResult(0.0, "timeout" if outcome.status == "timeout" else "error")
    reward = _reward_value(outcome.value)
    if reward is None:
        raise ValueError(
            f"reward function {reward_fn_name(fn)} returned {outcome.value!r} for the response {_quote(response)} "
            f"(ground truth {_quote(ground_truth)}); a reward must be a number in [0, 1] (or a VerifyResult with "
            "one): map the function's scale to [0, 1], or raise for a response it cannot grade (that scores 0 as "
            "'error')"
        )
    if isinstance(outcome.value, VerifyResult):
        return VerifyResult(reward, outcome.value.status)
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
    batch_timeout_s: float | None = None,
    row_fields: Sequence[Mapping[str, Any]] | None = None,
) -> BatchScores:
    """Score responses against ground truths in parallel, each within its own time budget and the batch within one.

    With the math reward (:func:`~real_lightning.rewards.math.math_reward`, ``"math"``), responses decided by
    extraction or the exact-number fast path are scored inline; the rest go to a persistent pool of worker processes.
    A user reward function ``fn(response, ground_truth) -> float`` runs in the pool for every response (inline,
    serially, if it cannot be pickled by reference); its exceptions give reward 0 with status ``"error"`` and a
    positive reward counts as ``"correct"``. It may also return a :class:`VerifyResult`. A reward outside [0, 1],
    NaN or not a number is an error (``ValueError``). With ``row_fields``, it is called as
    ``fn(response, ground_truth, **row_fields[i])`` (see :func:`~real_lightning.rewards.registry.reward_fn_fields`
    for the functions that take them).

    The whole batch has a budget too (``batch_timeout_s``), and :func:`request_stop` ends a grading early; either
    way the responses not graded score 0 with status ``"timeout"`` and a warning says how many. A grading longer
    than :data:`PROGRESS_EVERY_S` seconds logs its progress that often. Results do not depend on the number of
    workers or on timing unless a budget runs out.

    A ground truth that is a tuple of accepted answers is scored against each of them (each within its own
    budget) and the response gets the best result: any accepted answer scores 1.

    Args:
        responses: model responses.
        ground_truths: one ground truth per response: a text, or a tuple of accepted answers.
        reward_fn: a callable, a registered name, or a ``"module:function"`` path.
        num_workers: worker processes (default ``os.cpu_count()``); ≤ 1 scores inline (on the main thread a
            stop request or the batch budget still interrupts a call within ~0.05 s, through SIGALRM).
        timeout_s: wall-clock budget per response, in seconds; overrunning gives reward 0, status ``"timeout"``.
        batch_timeout_s: wall-clock budget of the whole batch, in seconds (``None``: none).
        answer_after_think: grade only the text after the last ``</think>`` (none: ``"no_answer"``).
        grader: how the math reward finds the final answer: ``lenient`` (the last ``\\boxed{}``, else "the
            answer is …", else the last number of the last line) or ``strict_boxed`` (the official REAL rule: a
            ``\\boxed{}`` is required, none scores 0 as ``no_answer``). Other reward functions grade themselves.
        row_fields: per response, the dataset row's fields the reward function takes as keyword arguments (plain,
            picklable values: they travel to the worker processes). ``None``, or only empty mappings: none.

    Returns:
        The :class:`BatchScores`, in input order.

    Raises:
        ValueError: if the lists differ in length, ``timeout_s`` or ``batch_timeout_s`` is not positive,
            ``grader`` is unknown or not ``lenient`` with another reward than the math reward, the reward function
            does not take the row fields given, or a user reward function returned a value that is not a number
            in [0, 1].
    """
    if len(responses) != len(ground_truths):
        raise ValueError(f"{len(responses)} responses but {len(ground_truths)} ground truths")
    if row_fields is not None and len(row_fields) != len(responses):
        raise ValueError(f"{len(responses)} responses but {len(row_fields)} row fields")
    if row_fields is not None and not any(row_fields):
        row_fields = None  # no row takes part: grade exactly as without them
    if row_fields is not None:
        names = sorted({name for fields in row_fields for name in fields})
        check_reward_fields(resolve_reward_fn(reward_fn), names, "row_fields")
    check_grader(grader, reward_fn)
    check_batch_timeout(batch_timeout_s)
    owners = [i for i, truth in enumerate(ground_truths) for _ in accepted_answers(truth)]
    grading = _Grading(len(owners), timeout_s, batch_timeout_s)
    pairs = _score_pairs(
        [responses[i] for i in owners],
        [answer for truth in ground_truths for answer in accepted_answers(truth)],
        row_fields=None if row_fields is None else [row_fields[i] for i in owners],
        reward_fn=reward_fn,
        num_workers=num_workers,
        timeout_s=timeout_s,
        answer_after_think=answer_after_think,
        require_boxed=grader == "strict_boxed",
        grading=grading,
    )
    grading.warn_cut()
    best: list[VerifyResult | None] = [None] * len(responses)
    for i, reward, status in zip(owners, pairs.rewards, pairs.statuses, strict=True):
        if best[i] is None or reward > best[i].reward:
            best[i] = VerifyResult(reward, status)
    final = [r if r is not None else VerifyResult(0.0, "error") for r in best]
    return _batch_scores(final)


def check_batch_timeout(batch_timeout_s: float | None) -> None:
    """Raise ``ValueError`` unless ``batch_timeout_s`` is ``None`` or a positive, finite number of seconds."""
    if batch_timeout_s is not None and not 0 < batch_timeout_s < math.inf:
        raise ValueError(
            f"batch_timeout_s must be a positive, finite number of seconds or None, got {batch_timeout_s!r}"
        )


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
    row_fields: Sequence[Mapping[str, Any]] | None = None,
    reward_fn: RewardFn | str = math_reward,
    num_workers: int | None = None,
    timeout_s: float = 5.0,
    answer_after_think: bool = False,
    require_boxed: bool = False,
    grading: _Grading | None = None,
) -> BatchScores:
    """:func:`score_batch` with exactly one answer per response."""
    check_timeout(timeout_s)
    grading = grading if grading is not None else _Grading(len(responses), timeout_s, None)
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
                grading.observe(prepared)
            else:
                pending.append(i)
                symbolic.append(prepared)
        outcomes = _run_many(
            math_module._symbolic_status, symbolic, num_workers=workers, timeout_s=timeout_s, grading=grading
        )
        for i, outcome in zip(pending, outcomes, strict=True):
            results[i] = result_from_outcome(outcome)
    else:
        pending = []
        calls: list[tuple[Any, ...]] = []
        for i, (response, truth) in enumerate(zip(responses, ground_truths, strict=True)):
            text = response or ""
            if answer_after_think:
                after = answer_after_think_text(text)
                if after is None:
                    results[i] = VerifyResult(0.0, "no_answer")
                    grading.observe(results[i])
                    continue
                text = after
            pending.append(i)
            calls.append((text, truth) if row_fields is None else (text, truth, row_fields[i]))
        call = fn if row_fields is None else _WithRowFields(fn)
        outcomes = _run_many(call, calls, num_workers=workers, timeout_s=timeout_s, grading=grading)
        errors = [o.error for o in outcomes if o.status == "error"]
        if errors:
            log.warning(
                "reward function %r failed on %d of %d responses; first: %s", fn, len(errors), len(calls), errors[0]
            )
        for i, outcome in zip(pending, outcomes, strict=True):
            results[i] = _user_result(outcome, fn, responses[i], ground_truths[i])
    return _batch_scores([r if r is not None else VerifyResult(0.0, "error") for r in results])
