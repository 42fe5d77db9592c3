"""Ground truths: one reference answer, or several accepted ones."""

from __future__ import annotations

#: A reference answer, or several accepted ones (any of them scores 1), as in the verl files of Minerva and
#: OlympiadBench.
GroundTruth = str | tuple[str, ...]


def accepted_answers(ground_truth: GroundTruth) -> tuple[str, ...]:
    """The accepted answers of a ground truth: itself, or each of a list."""
    return (ground_truth,) if isinstance(ground_truth, str) else tuple(ground_truth)


def describe_ground_truth(ground_truth: GroundTruth) -> str:
    """One line for tables and logs: the answer, or the accepted answers joined by `` | ``."""
    return " | ".join(accepted_answers(ground_truth))
