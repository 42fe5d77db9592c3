"""One prompt of a dataset, whatever its source and schema."""

from __future__ import annotations

from dataclasses import dataclass

from real_lightning.rewards.answers import GroundTruth


@dataclass(frozen=True)
class PromptRecord:
    """A prompt with its verifiable answer.

    Attributes:
        prompt: plain text, or chat messages ``[{"role": ..., "content": ...}, ...]`` (verl schema).
        ground_truth: the reference answer the verifier compares against, or a tuple of accepted answers.
        data_source: dataset name, for logging.
        index: row index in the source (for error messages and sample tables).
    """

    prompt: str | tuple[dict[str, str], ...]
    ground_truth: GroundTruth
    data_source: str
    index: int
