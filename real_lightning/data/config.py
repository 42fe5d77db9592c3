"""Typed option groups of the RolloutDataModule (each field documented once, shown by ``fit --help``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class PromptFormat:
    """How dataset rows become prompt tokens.

    Args:
        max_length: prompts with more tokens are dropped (and counted in a warning).
        suffix: appended to plain-text prompts (not to chat-message rows, which carry their own).
    """

    max_length: int = 1024
    suffix: str = ""

    def __post_init__(self) -> None:
        if self.max_length < 1:
            raise ValueError(f"prompts.max_length must be >= 1, got {self.max_length}")


@dataclass
class VerifierConfig:
    """How responses are scored.

    Args:
        reward: a registered reward name (``math``) or ``package.module:function`` with
            ``(response, ground_truth) -> float``, or ``(response, ground_truth, **row) -> float`` to also get
            the row fields a source's ``reward_fields`` names (``data.train.reward_fields``) as keyword arguments.
        answer_after_think: grade only the text after ``</think>`` (reasoning models).
        grader: how the math reward finds the final answer. ``lenient``: the last ``\\boxed{}``, else "the
            answer is …", else the last number of the last line. ``strict_boxed``: the official REAL grader,
            a ``\\boxed{}`` answer is required (none scores 0, counted as ``no_answer``).
        timeout_s: per-sample time budget; a timeout scores 0 and is counted.
        workers: verifier processes (None: all cores).
        truncated_is_wrong: a response cut at the length limit without EOS scores 0. None: on when the
            training set is a built-in task (``builtin:arithmetic``, ``builtin:countdown``), off otherwise.
        batch_timeout_s: time budget of grading one rank's rollout batch (or validation chunk): when it
            runs out, the responses not graded yet score 0 and are counted as timeouts, with a warning
            (None: no budget). A grading longer than 30 s logs its progress every 30 s.
    """

    reward: str = "math"
    answer_after_think: bool = False
    grader: Literal["lenient", "strict_boxed"] = "lenient"
    timeout_s: float = 5.0
    workers: int | None = None
    truncated_is_wrong: bool | None = None
    batch_timeout_s: float | None = 300.0

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"verifier.timeout_s must be > 0, got {self.timeout_s}")
        if self.batch_timeout_s is not None and not 0 < self.batch_timeout_s < float("inf"):
            raise ValueError(f"verifier.batch_timeout_s must be > 0 or null, got {self.batch_timeout_s}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"verifier.workers must be >= 1 or null, got {self.workers}")


@dataclass
class ValidationConfig:
    """How validation sets are sampled (Pass@k).

    Args:
        samples: k responses per prompt (Pass@1 is their mean correctness).
        prompts_per_batch: prompts per generation call (a chunk; chunks are spread over the ranks and
            each is seeded by its index, so Pass@k does not depend on the number of ranks).
    """

    samples: int = 8
    prompts_per_batch: int = 64

    def __post_init__(self) -> None:
        for name in ("samples", "prompts_per_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"validation.{name} must be >= 1, got {getattr(self, name)}")
