"""The built-in verifiable task: integer arithmetic with answers in ``\\boxed{}``.

Deterministic and seedable; the held-out split is fixed (independent of the seed) and disjoint
from the training split, so Pass@1 measured on it is comparable across runs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from real_lightning.data.records import PromptRecord

Operation = Literal["+", "-", "*"]
_HELD_OUT_SEED = 20260224


@dataclass(frozen=True)
class ArithmeticTask:
    """Problems ``a{op}b=`` with operands of exactly ``digits`` digits; the answer is the integer result.

    Args:
        digits: operand size: operands are drawn from [10**(digits-1), 10**digits) (from [0, 10) for
            one digit). Difficulty knob: 2-digit addition suits the ~1M-parameter tiny policy.
        operations: which of ``+``, ``-``, ``*`` appear.
        num_held_out: problems reserved for the ``test`` split (never in ``train``).
    """

    digits: int = 2
    operations: tuple[Operation, ...] = ("+",)
    num_held_out: int = 256

    def __post_init__(self) -> None:
        if self.digits < 1:
            raise ValueError(f"digits must be >= 1, got {self.digits}")
        if not self.operations or any(op not in ("+", "-", "*") for op in self.operations):
            raise ValueError(f"operations must be a non-empty subset of '+', '-', '*', got {self.operations}")
        if not 0 < self.num_held_out < self.num_problems:
            raise ValueError(f"num_held_out must be in (0, {self.num_problems}), got {self.num_held_out}")

    @property
    def _low(self) -> int:
        return 0 if self.digits == 1 else 10 ** (self.digits - 1)

    @property
    def num_problems(self) -> int:
        return len(self.operations) * (10**self.digits - self._low) ** 2

    def _problem(self, index: int) -> tuple[str, str]:
        size = 10**self.digits - self._low
        op = self.operations[index // (size * size)]
        a, b = (self._low + x for x in divmod(index % (size * size), size))
        result = a + b if op == "+" else a - b if op == "-" else a * b
        return f"{a}{op}{b}=", str(result)

    def records(self, split: Literal["train", "test"]) -> list[PromptRecord]:
        """All problems of a split, in a fixed order (the data module shuffles with its own seed)."""
        order = list(range(self.num_problems))
        random.Random(_HELD_OUT_SEED).shuffle(order)
        chosen = order[: self.num_held_out] if split == "test" else sorted(order[self.num_held_out :])
        out = []
        for index in chosen:
            problem, answer = self._problem(index)
            out.append(PromptRecord(prompt=problem, ground_truth=answer, data_source="arithmetic", index=index))
        return out

    @staticmethod
    def target(answer: str) -> str:
        """The completion a solved problem should produce (used by the supervised warm start)."""
        return f"\\boxed{{{answer}}}"
