"""The time budget on the main thread, in worker threads and in process pools; errors; batch scoring."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest

from real_lightning.rewards import BatchScores, VerifyResult, score_batch, verify
from real_lightning.rewards import math as math_module
from real_lightning.rewards.timeouts import WorkerPool, run_with_alarm
from tests.rewards import helpers

SYMBOLIC = (r"\boxed{x+1}", "x+1")  # not plain numbers: needs math-verify
BUDGET_S = 0.5
# Worker processes start in ~1 s (the fork server imports math-verify once); generous bound on one bounded call.
SLACK_S = 8.0


def test_budget_on_the_main_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(math_module, "_symbolic_status", helpers.slow_check)
    handler = signal.getsignal(signal.SIGALRM)
    start = time.monotonic()
    assert verify(*SYMBOLIC, timeout_s=BUDGET_S) == VerifyResult(0.0, "timeout")
    assert time.monotonic() - start < BUDGET_S + 1.0
    assert signal.getsignal(signal.SIGALRM) is handler
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_alarm_restores_an_outer_timer() -> None:
    fired: list[int] = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(signum))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        assert run_with_alarm(time.sleep, (5.0,), 0.1).status == "timeout"
        assert 0 < signal.getitimer(signal.ITIMER_REAL)[0] <= 0.2
        time.sleep(0.4)
        assert fired == [signal.SIGALRM]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_budget_in_worker_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(math_module, "_symbolic_status", helpers.slow_check)

    def timed_verify(_: int) -> tuple[VerifyResult, float]:
        assert threading.current_thread() is not threading.main_thread()
        start = time.monotonic()
        return verify(*SYMBOLIC, timeout_s=BUDGET_S), time.monotonic() - start

    with ThreadPoolExecutor(max_workers=3) as executor:
        first = list(executor.map(timed_verify, range(3)))  # each thread starts its own worker process
        again = list(executor.map(timed_verify, range(6)))  # warm workers: about the budget itself
    for result, seconds in first:
        assert result == VerifyResult(0.0, "timeout")
        assert seconds < BUDGET_S + SLACK_S
    for result, seconds in again:
        assert result == VerifyResult(0.0, "timeout")
        assert seconds < BUDGET_S + 2.0
    print(f"\nwarm worker-thread timeouts took {max(s for _, s in again):.2f} s for a {BUDGET_S} s budget")


def test_uninterruptible_call_is_killed_in_worker_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(math_module, "_symbolic_status", helpers.stubborn_check)
    with ThreadPoolExecutor(max_workers=2) as executor:
        results = list(executor.map(lambda _: verify(*SYMBOLIC, timeout_s=BUDGET_S), range(2)))
    assert results == [VerifyResult(0.0, "timeout")] * 2
    monkeypatch.undo()
    with ThreadPoolExecutor(max_workers=1) as executor:  # the restarted worker is usable
        assert executor.submit(verify, r"\boxed{\frac{1}{2}}", "0.5").result() == VerifyResult(1.0, "correct")


def test_correct_results_from_worker_threads() -> None:
    cases = [(r"\boxed{2\sqrt{3}}", r"\sqrt{12}", 1.0), (r"\boxed{3}", "3", 1.0), (r"\boxed{x}", "y", 0.0)] * 3
    with ThreadPoolExecutor(max_workers=3) as executor:
        rewards = list(executor.map(lambda c: verify(c[0], c[1]).reward, cases))
    assert rewards == [c[2] for c in cases]


def test_budget_in_a_process_pool() -> None:
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as executor:
        status, seconds = executor.submit(helpers.verify_with_slow_check, BUDGET_S).result(timeout=60)
    assert status == "timeout"
    assert seconds < BUDGET_S + 1.0


def test_a_raising_verifier_gives_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(math_module, "_symbolic_status", helpers.raising_check)
    assert verify(*SYMBOLIC) == VerifyResult(0.0, "error")
    scores = score_batch([SYMBOLIC[0], r"\boxed{3}", SYMBOLIC[0]], [SYMBOLIC[1], "3", SYMBOLIC[1]], num_workers=2)
    assert scores.rewards == [0.0, 1.0, 0.0]
    assert scores.counts["error"] == 2 and scores.counts["correct"] == 1


def test_an_exception_inside_math_verify_gives_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> bool:
        raise TypeError("sympy exploded")

    monkeypatch.setattr(math_module, "mv_verify", broken)
    assert verify(*SYMBOLIC) == VerifyResult(0.0, "error")


def test_score_batch_timeouts_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(math_module, "_symbolic_status", helpers.slow_check)
    responses = [SYMBOLIC[0]] * 4 + [r"\boxed{7}"]
    start = time.monotonic()
    scores = score_batch(responses, [SYMBOLIC[1]] * 4 + ["7"], timeout_s=BUDGET_S, num_workers=2)
    seconds = time.monotonic() - start
    assert scores.rewards == [0.0] * 4 + [1.0]
    assert scores.statuses == ["timeout"] * 4 + ["correct"]
    assert scores.counts == {"correct": 1, "incorrect": 0, "no_answer": 0, "timeout": 4, "error": 0}
    assert seconds < 2 * BUDGET_S + SLACK_S


def test_score_batch_of_integers_is_inline_and_fast() -> None:
    responses = [f"The sum is \\boxed{{{i}}}" for i in range(256)]
    truths = [str(i if i % 4 else i + 1) for i in range(256)]
    score_batch(responses[:1], truths[:1])  # imports warm
    start = time.perf_counter()
    scores = score_batch(responses, truths)
    seconds = time.perf_counter() - start
    print(f"\nscore_batch of 256 integer answers: {seconds * 1e3:.1f} ms")
    assert scores.counts["correct"] == 192 and scores.counts["incorrect"] == 64
    assert seconds < 5.0


def test_score_batch_keeps_input_order() -> None:
    responses = [rf"\boxed{{\frac{{{i}}}{{4}}}}" for i in range(40)] + ["nothing", r"\boxed{9}"]
    truths = [str(i / 4) if i % 3 else str(i) for i in range(40)] + ["1", "9"]
    scores = score_batch(responses, truths, num_workers=2)
    expected = [1.0 if i % 3 or i == 0 else 0.0 for i in range(40)] + [0.0, 1.0]
    assert scores.rewards == expected
    assert scores.statuses[-2:] == ["no_answer", "correct"]
    assert isinstance(scores, BatchScores) and sum(scores.counts.values()) == 42


def test_score_batch_with_answer_after_think() -> None:
    responses = [r"<think>\boxed{1}</think>\boxed{2}", r"<think>\boxed{2}", r"\boxed{2}"]
    assert score_batch(responses, ["2"] * 3).rewards == [1.0, 1.0, 1.0]
    scores = score_batch(responses, ["2"] * 3, answer_after_think=True)
    assert scores.statuses == ["correct", "no_answer", "no_answer"]


@pytest.mark.parametrize("reward_fn", [helpers.exact_reward, "tests.rewards.helpers:exact_reward"])
def test_score_batch_with_a_user_reward_function(reward_fn: object) -> None:
    responses = ["a", "boom", "b", "sleep", "c"]
    start = time.monotonic()
    scores = score_batch(responses, ["a", "x", "x", "x", "c"], reward_fn=reward_fn, timeout_s=BUDGET_S, num_workers=2)
    assert scores.rewards == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert scores.statuses == ["correct", "error", "incorrect", "timeout", "correct"]
    assert time.monotonic() - start < BUDGET_S + SLACK_S


def test_score_batch_with_an_unpicklable_user_function() -> None:
    scores = score_batch(["abc", "de"], ["x", "y"], reward_fn=lambda r, g: len(r) / 10, num_workers=2)
    assert scores.rewards == [0.3, 0.2]
    assert scores.counts["correct"] == 2


def test_score_batch_with_lists_of_accepted_answers() -> None:
    """A tuple ground truth: any accepted answer scores 1 (math reward and user functions alike); counts and
    statuses stay one per response, in input order."""
    responses = [r"\boxed{48/5}", r"\boxed{9.6}", r"\boxed{7}", "no answer here", r"\boxed{x+1}"]
    truths = [("9.6", "10"), ("10", "9.6"), ("9.6", "10"), ("1", "2"), ("1+x", "2")]
    scores = score_batch(responses, truths, num_workers=1)
    assert scores.rewards == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert scores.statuses == ["correct", "correct", "incorrect", "no_answer", "correct"]
    assert sum(scores.counts.values()) == len(responses)
    user = score_batch(["b", "c", "a"], [("a", "b"), "c", ("x",)], reward_fn=helpers.exact_reward, num_workers=1)
    assert user.rewards == [1.0, 1.0, 0.0]


def test_score_batch_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="2 responses but 1 ground truths"):
        score_batch(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="timeout_s"):
        score_batch(["a"], ["a"], timeout_s=0)


def test_worker_pool_survives_a_crashing_call() -> None:
    pool = WorkerPool(2)
    try:
        outcomes = pool.map(helpers.exact_reward, [("a", "a"), ("boom", "x"), ("b", "a")], 5.0)
        assert [o.status for o in outcomes] == ["ok", "error", "ok"]
        assert [o.value for o in outcomes] == [1.0, None, 0.0]
        assert outcomes[1].error == "ValueError: boom"
        outcomes = pool.map(os._exit, [(3,), (4,)], 5.0)
        assert [o.status for o in outcomes] == ["error", "error"]
        assert pool.map(helpers.exact_reward, [("a", "a")], 5.0)[0].value == 1.0
    finally:
        pool.close()


def test_a_forked_child_gets_its_own_workers() -> None:
    score_batch([r"\boxed{\frac{1}{2}}"] * 2, ["0.5"] * 2, num_workers=2)  # the parent's pool and fork server exist
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    child = ctx.Process(target=helpers.score_symbolic_batch, args=(results,))
    child.start()
    assert results.get(timeout=60) == [1.0, 1.0, 1.0, 0.0]
    child.join(timeout=30)
    assert child.exitcode == 0
    assert score_batch([r"\boxed{\frac{1}{2}}"] * 2, ["0.5"] * 2, num_workers=2).rewards == [1.0, 1.0]
