"""Module-level reward functions and checkers for the verifier tests (importable by worker processes)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from real_lightning.rewards import math as math_module

SLOW_S = 10.0


def slow_check(answer: str, ground_truth: str) -> str:
    """A symbolic comparison that takes :data:`SLOW_S` seconds."""
    time.sleep(SLOW_S)
    return "correct"


def stubborn_check(answer: str, ground_truth: str) -> str:
    """A slow comparison that SIGALRM cannot interrupt (stands in for a long C call); only for worker processes."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(SLOW_S)
    return "correct"


def raising_check(answer: str, ground_truth: str) -> str:
    """A symbolic comparison that raises."""
    raise RuntimeError("verifier exploded")


def exact_reward(response: str, ground_truth: str) -> float:
    """A user reward: 1.0 on an exact string match, raising on ``"boom"`` and sleeping on ``"sleep"``."""
    if response == "boom":
        raise ValueError("boom")
    if response == "sleep":
        time.sleep(SLOW_S)
    return float(response.strip() == ground_truth.strip())


def verify_with_slow_check(timeout_s: float) -> tuple[str, float]:
    """In a fresh process: patch in :func:`slow_check`, verify, return ``(status, seconds)``."""
    math_module._symbolic_status = slow_check
    start = time.monotonic()
    result = math_module.verify(r"\boxed{x+1}", "x+1", timeout_s=timeout_s)
    return result.status, time.monotonic() - start


def score_symbolic_batch(results: Any) -> None:
    """Score a small symbolic batch with two workers and put the rewards on ``results`` (a queue)."""
    from real_lightning.rewards import score_batch

    results.put(score_batch([r"\boxed{\frac{1}{2}}"] * 3 + [r"\boxed{x}"], ["0.5"] * 3 + ["y"], num_workers=2).rewards)


def graded_slowly(response: str, ground_truth: str) -> float:
    """A user reward that records its process id as a file in the folder ``ground_truth``, then sleeps
    :data:`SLOW_S` seconds (longer than any budget of the tests)."""
    Path(ground_truth, str(os.getpid())).touch()
    time.sleep(SLOW_S)
    return 1.0


def stubborn_graded_slowly(response: str, ground_truth: str) -> float:
    """:func:`graded_slowly` that SIGALRM cannot interrupt (stands in for a long C call); only for worker
    processes."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    return graded_slowly(response, ground_truth)


#: What :func:`reward_by_name` returns for each response.
REWARDS_BY_NAME: dict[str, Any] = {
    "two": 2.0,
    "nan": float("nan"),
    "inf": float("inf"),
    "negative": -0.5,
    "none": None,
    "text": "1",
    "list": [1.0],
    "half": 0.5,
    "true": True,
    "result": math_module.VerifyResult(0.5, "correct"),
    "bad_result": math_module.VerifyResult(3.0, "correct"),
}


def reward_by_name(response: str, ground_truth: str) -> Any:
    """A user reward that returns :data:`REWARDS_BY_NAME` ``[response]`` (the first word of a longer response)."""
    return REWARDS_BY_NAME[response.split(" ")[0]]
