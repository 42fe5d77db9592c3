"""Every ground truth of the evaluation sets, boxed in a response, is graded correct (and mismatches are not)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from real_lightning.rewards import math_reward, score_batch

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def _ground_truths(name: str) -> list[str]:
    path = DATA / f"{name}.parquet"
    if not path.exists():
        pytest.skip(f"{path} is missing (the shared evaluation data sits next to the repository)")
    pd = pytest.importorskip("pandas")
    return [str(row["ground_truth"]) for row in pd.read_parquet(path, columns=["reward_model"])["reward_model"]]


@pytest.mark.parametrize("name", ["math500", "amc23", "aime24"])
def test_every_boxed_ground_truth_is_correct(name: str) -> None:
    truths = _ground_truths(name)
    responses = ["... so the answer is \\boxed{" + truth + "}" for truth in truths]
    start = time.perf_counter()
    scores = score_batch(responses, truths)
    seconds = time.perf_counter() - start
    print(f"\n{name}: {len(truths)} boxed ground truths scored in {seconds:.2f} s; {scores.counts}")
    failures = [(i, truths[i], s) for i, s in enumerate(scores.statuses) if s != "correct"]
    assert not failures
    # a sample through the single-call API gives the same answer
    assert all(math_reward(responses[i], truths[i]) == 1.0 for i in range(0, len(truths), max(1, len(truths) // 25)))


@pytest.mark.parametrize("name", ["math500", "amc23", "aime24"])
def test_mismatched_ground_truths_are_mostly_wrong(name: str) -> None:
    truths = _ground_truths(name)
    shifted = truths[1:] + truths[:1]
    scores = score_batch(["\\boxed{" + t + "}" for t in shifted], truths)
    same = sum(a == b for a, b in zip(shifted, truths, strict=True))
    assert scores.counts["correct"] <= same + 0.05 * len(truths), scores.counts


def test_amc_float_ground_truths_take_integer_answers() -> None:
    truths = _ground_truths("amc23")
    assert any(t.endswith(".0") for t in truths)
    integral = [t for t in truths if t.endswith(".0")]
    scores = score_batch(["The answer is \\boxed{" + t[:-2] + "}" for t in integral], integral)
    assert scores.counts["correct"] == len(integral)
