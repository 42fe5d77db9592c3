"""One prompt of a dataset, whatever its source and schema."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from real_lightning.rewards.answers import GroundTruth


@dataclass(frozen=True)
class PromptRecord:
    """A prompt with its verifiable answer.

    Attributes:
        prompt: plain text, or chat messages ``[{"role": ..., "content": ...}, ...]`` (verl schema).
        ground_truth: the reference answer the verifier compares against, or a tuple of accepted answers.
        data_source: dataset name, for logging.
        index: row index in the source (for error messages and sample tables).
        row_fields: the row's fields named by the source's ``reward_fields``, which the reward function takes as
            keyword arguments (JSON-like values: they travel to the verifier's worker processes). Not saved in
            checkpoints: a rollout batch in flight is saved with its rewards.
    """

    prompt: str | tuple[dict[str, str], ...]
    ground_truth: GroundTruth
    data_source: str
    index: int
    row_fields: dict[str, Any] = field(default_factory=dict)
