"""A slow grader cannot stall a step: the batch budget, stop requests and signals, progress lines, reward ranges."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from real_lightning.data.config import VerifierConfig
from real_lightning.rewards import grading as batch_module
from real_lightning.rewards import math as math_module
from real_lightning.rewards import score_batch
from real_lightning.rewards.grading import clear_stop, request_stop, stop_requested
from real_lightning.rollout.scoring import Scorer
from tests.rewards import helpers

REPO = Path(__file__).resolve().parents[2]
# Responses of helpers.exact_reward: "a" and "c" are right at once, "sleep" takes 10 s (any budget here runs out).
SLOW_BATCH = (["a", "sleep", "sleep", "sleep", "c"], ["a", "x", "x", "x", "c"])
BATCH_BUDGET_S = 1.0
SLACK_S = 1.5  # beyond a budget: killing workers, a loaded machine


@pytest.fixture(autouse=True)
def no_stop_request() -> Iterator[None]:
    clear_stop()
    yield
    clear_stop()


def warm_pool(num_workers: int = 2) -> None:
    """Start (or reuse) the pool of a user reward, so that worker start-up does not count in a budget."""
    assert score_batch(["a"] * num_workers, ["a"] * num_workers, reward_fn=helpers.exact_reward, num_workers=2).rewards


def test_batch_budget_in_the_pool(caplog: pytest.LogCaptureFixture) -> None:
    warm_pool()
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger=batch_module.__name__):
        scores = score_batch(
            *SLOW_BATCH,
            reward_fn=helpers.exact_reward,
            num_workers=2,
            timeout_s=5.0,
            batch_timeout_s=BATCH_BUDGET_S,
        )
    seconds = time.monotonic() - start
    assert scores.statuses == ["correct"] + ["timeout"] * 4  # "c" waited behind the sleepers: not graded
    assert scores.rewards == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert scores.counts["timeout"] == 4
    assert BATCH_BUDGET_S <= seconds < BATCH_BUDGET_S + SLACK_S
    assert "data.verifier.batch_timeout_s=1 s" in caplog.text and "4 of 5 checks were not done" in caplog.text
    # the killed workers are replaced: the pool grades normally again
    again = score_batch(["a", "b", "c"], ["a", "a", "c"], reward_fn=helpers.exact_reward, num_workers=2)
    assert again.statuses == ["correct", "incorrect", "correct"]


def test_batch_budget_inline_on_the_main_thread() -> None:
    start = time.monotonic()
    scores = score_batch(
        *SLOW_BATCH, reward_fn=helpers.exact_reward, num_workers=1, timeout_s=5.0, batch_timeout_s=BATCH_BUDGET_S
    )
    assert scores.statuses == ["correct"] + ["timeout"] * 4
    assert time.monotonic() - start < BATCH_BUDGET_S + SLACK_S


def test_batch_budget_inline_in_a_worker_thread() -> None:
    def grade(budget: float | None) -> tuple[list[str], float]:
        start = time.monotonic()
        scores = score_batch(
            *SLOW_BATCH, reward_fn=helpers.exact_reward, num_workers=1, timeout_s=5.0, batch_timeout_s=budget
        )
        return scores.statuses, time.monotonic() - start

    with ThreadPoolExecutor(max_workers=1) as executor:  # one thread: its worker process starts once
        executor.submit(score_batch, ["a"], ["a"], reward_fn=helpers.exact_reward, num_workers=1).result()
        statuses, seconds = executor.submit(grade, BATCH_BUDGET_S).result()
    assert statuses == ["correct"] + ["timeout"] * 4
    assert seconds < BATCH_BUDGET_S + SLACK_S


def test_batch_budget_with_the_math_reward(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(math_module, "_symbolic_status", helpers.slow_check)
    responses = [r"\boxed{7}", r"\boxed{x+1}", r"\boxed{x+2}", "no answer"]
    start = time.monotonic()
    scores = score_batch(responses, ["7", "x+1", "x+2", "1"], num_workers=1, timeout_s=5.0, batch_timeout_s=0.5)
    assert scores.statuses == ["correct", "timeout", "timeout", "no_answer"]
    assert time.monotonic() - start < 0.5 + SLACK_S


def test_results_do_not_depend_on_the_budget_when_it_is_not_hit() -> None:
    responses = [rf"\boxed{{\frac{{{i}}}{{4}}}}" for i in range(12)] + ["a", r"\boxed{3}"]
    truths = [str(i / 4) if i % 3 else str(i) for i in range(12)] + ["1", "3"]
    plain = score_batch(responses, truths, num_workers=2)
    for workers in (1, 2):
        assert score_batch(responses, truths, num_workers=workers, batch_timeout_s=60.0) == plain


def test_the_batch_budget_is_checked() -> None:
    for bad in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="batch_timeout_s"):
            score_batch(["a"], ["a"], batch_timeout_s=bad)
        with pytest.raises(ValueError, match=r"verifier\.batch_timeout_s"):
            VerifierConfig(batch_timeout_s=bad)
    assert VerifierConfig().batch_timeout_s == 300.0
    assert VerifierConfig(batch_timeout_s=None).batch_timeout_s is None


def test_the_scorer_applies_the_batch_budget() -> None:
    assert Scorer().batch_timeout_s == VerifierConfig().batch_timeout_s
    scorer = Scorer("tests.rewards.helpers:exact_reward", timeout_s=5.0, num_workers=1, batch_timeout_s=0.5)
    start = time.monotonic()
    scores = scorer.score(*SLOW_BATCH, truncated=torch.zeros(5, dtype=torch.bool))
    assert scores.counts["timeout"] == 4 and scores.rewards.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert time.monotonic() - start < 0.5 + SLACK_S


@pytest.mark.parametrize("num_workers", [1, 2])
def test_a_stop_request_ends_a_grading(num_workers: int, caplog: pytest.LogCaptureFixture) -> None:
    """``request_stop`` from another thread (as a signal handler of the main thread would be, elsewhere)."""
    if num_workers > 1:
        warm_pool()
    timer = threading.Timer(0.5, request_stop)
    start = time.monotonic()
    timer.start()
    with caplog.at_level(logging.WARNING, logger=batch_module.__name__):
        scores = score_batch(*SLOW_BATCH, reward_fn=helpers.exact_reward, num_workers=num_workers, timeout_s=5.0)
    seconds = time.monotonic() - start
    timer.join()
    assert scores.statuses == ["correct"] + ["timeout"] * 4
    assert 0.5 <= seconds < 0.5 + SLACK_S
    assert "stop request (real_lightning.rewards.grading.request_stop)" in caplog.text
    assert "4 of 5 checks were not done" in caplog.text
    # the request holds until it is cleared
    assert stop_requested()
    assert score_batch(["sleep"], ["x"], reward_fn=helpers.exact_reward, num_workers=num_workers).statuses == [
        "timeout"
    ]
    clear_stop()
    assert score_batch(["a"], ["a"], reward_fn=helpers.exact_reward, num_workers=num_workers).statuses == ["correct"]


@pytest.mark.skipif(not hasattr(signal, "SIGALRM"), reason="POSIX signals")
def test_a_signal_handler_that_requests_a_stop_ends_an_inline_grading() -> None:
    """Lightning's SIGTERM handler only sets a flag; one that also calls ``request_stop`` ends the step's grading
    even while the main thread is inside a slow reward call."""
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: request_stop())
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    try:
        start = time.monotonic()
        timer.start()
        scores = score_batch(*SLOW_BATCH, reward_fn=helpers.exact_reward, num_workers=1, timeout_s=5.0)
        seconds = time.monotonic() - start
    finally:
        timer.join()
        signal.signal(signal.SIGTERM, previous)
    assert scores.statuses == ["correct"] + ["timeout"] * 4
    assert seconds < 0.5 + SLACK_S


@pytest.mark.parametrize("num_workers", [1, 2])
def test_progress_of_a_long_grading_is_logged(
    num_workers: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(batch_module, "PROGRESS_EVERY_S", 0.3)
    with caplog.at_level(logging.WARNING, logger=batch_module.__name__):
        scores = score_batch(
            ["a", "sleep", "sleep", "c"],
            ["a", "x", "x", "c"],
            reward_fn=helpers.exact_reward,
            num_workers=num_workers,
            timeout_s=0.5,
        )
    assert scores.statuses == ["correct", "timeout", "timeout", "correct"]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("grading: ")]
    assert lines, caplog.text
    assert "/4 checks done (" in lines[0] and "timeouts so far) after" in lines[0]
    assert "data.verifier.timeout_s=0.5 s" in lines[0] and "batch_timeout_s=off" in lines[0]


def test_a_short_grading_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=batch_module.__name__):
        score_batch(["a", "b"], ["a", "a"], reward_fn=helpers.exact_reward, num_workers=2)
    assert caplog.text == ""


# --- signals in a separate process: it must end promptly, and so must its workers ---

_GRADE_SCRIPT = """
import signal, sys
from real_lightning.rewards.grading import request_stop, score_batch
from tests.rewards import helpers

mode, folder = sys.argv[1], sys.argv[2]
if mode == "request_stop":
    signal.signal(signal.SIGTERM, lambda signum, frame: request_stop())
fn = helpers.stubborn_graded_slowly if mode == "default" else helpers.graded_slowly
scores = score_batch(["x"] * 6, [folder] * 6, reward_fn=fn, num_workers=2, timeout_s=5.0)
print("statuses", scores.statuses, flush=True)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _terminate_while_grading(mode: str, folder: Path) -> tuple[subprocess.CompletedProcess[str], float, list[int]]:
    """Start the grading script, send SIGTERM once both workers are inside the slow reward; return the finished
    process, the seconds from the signal to its exit, and the workers' pids."""
    process = subprocess.Popen(
        [sys.executable, "-c", _GRADE_SCRIPT, mode, str(folder)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        start = time.monotonic()
        while len(list(folder.iterdir())) < 2:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() - start < 90, "the workers did not start"
            time.sleep(0.05)
        time.sleep(0.3)
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
        seconds = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    pids = [int(p.name) for p in folder.iterdir()]
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), seconds, pids


def _assert_gone(pids: list[int], within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in pids if _alive(pid)], "verifier workers outlived their process"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_with_a_stop_handler_ends_the_grading(tmp_path: Path) -> None:
    """A SIGTERM handler that calls ``request_stop`` (as the trainer's does): the grading of 6 responses that each
    take the whole 5 s budget on 2 workers (15 s) ends at once, the process exits, its workers die."""
    done, seconds, pids = _terminate_while_grading("request_stop", tmp_path)
    assert done.returncode == 0, done.stderr
    assert "statuses ['timeout', 'timeout', 'timeout', 'timeout', 'timeout', 'timeout']" in done.stdout
    assert "at a stop request" in done.stderr and "6 of 6 checks were not done" in done.stderr
    assert seconds < 3.0
    assert len(pids) == 2
    _assert_gone(pids, within_s=2.0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")
def test_sigterm_without_a_handler_leaves_no_orphan_workers(tmp_path: Path) -> None:
    """The default SIGTERM kills the process at once; its workers, stuck in calls that SIGALRM cannot end, die
    with it instead of running on for their 10 s."""
    done, seconds, pids = _terminate_while_grading("default", tmp_path)
    assert done.returncode == -signal.SIGTERM
    assert seconds < 3.0
    assert len(pids) == 2
    _assert_gone(pids, within_s=2.0)


# --- reward values ---


@pytest.mark.parametrize("num_workers", [1, 2])
@pytest.mark.parametrize("name", ["two", "nan", "inf", "negative", "none", "text", "list", "bad_result"])
def test_a_reward_outside_0_1_is_an_error(name: str, num_workers: int) -> None:
    value = helpers.REWARDS_BY_NAME[name]
    response = name + " " + "y" * 300
    with pytest.raises(ValueError) as error:
        score_batch(
            ["half", response, "two"],
            ["1", "the truth", "1"],
            reward_fn="tests.rewards.helpers:reward_by_name",
            num_workers=num_workers,
        )
    message = str(error.value)
    assert message.startswith(f"reward function tests.rewards.helpers:reward_by_name returned {value!r} ")
    assert repr(name + " " + "y" * (199 - len(name)) + "…") in message  # the response, cut at 200 characters
    assert "(ground truth 'the truth')" in message and "[0, 1]" in message


def test_rewards_in_0_1_of_any_number_type_are_accepted() -> None:
    scores = score_batch(["half", "true", "result"], ["1"] * 3, reward_fn=helpers.reward_by_name, num_workers=1)
    assert scores.rewards == [0.5, 1.0, 0.5]
    assert scores.statuses == ["correct", "correct", "correct"]
    for value in (np.float32(0.25), np.int64(0), torch.tensor(0.75)):
        assert batch_module._reward_value(value) == pytest.approx(float(value))
