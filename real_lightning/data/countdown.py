"""The built-in ``countdown`` task: reach a target from four numbers with + − ×, every step written out.

A prompt is ``"3 7 9 4>30:"`` (the numbers, ``>``, the target, ``:``); a correct response is a chain of steps
then the boxed target, ``"7*4=28;28+3=31;31-1=30;\\boxed{30}"``, graded by the ``countdown`` reward
(:mod:`real_lightning.rewards.countdown`). Unlike arithmetic, a problem has many correct responses of different
lengths, so the correct rollouts of a group differ and their sequence scores s_i spread apart.

Problems are drawn deterministically: ``num_numbers`` numbers uniform in 1..``max_number``, then a random chain of
2 or 3 steps over them (random operands, a random operation with a positive result); its last result is the
target when it lies in ``target_range`` and is not one of the numbers. The held-out split (``num_held_out``
problems) is drawn first from a fixed seed; the training split (``num_train`` distinct problems) from another,
without any held-out problem. Both are independent of the run's seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from real_lightning.data.records import PromptRecord

_HELD_OUT_SEED = 20261206
_TRAIN_SEED = 20261207


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


@lru_cache(maxsize=65536)
def solutions(numbers: tuple[int, ...], target: int) -> tuple[str, ...]:
    """Every response without a wasted step that reaches ``target`` from ``numbers``, sorted.

    "Without a wasted step": every step's result but the last is used by a later step, and no step makes 0 or a
    negative number. Both operand orders of + and × count (``7*4`` and ``4*7`` are different responses); steps
    that do not depend on each other appear in every order. The verifier accepts more (wasted steps, results 0):
    these are the responses a careful solver writes, the set the warm start samples uniformly.

    Examples:
        >>> solutions((1, 2, 3), 9)
        ('1+2=3;3*3=9;\\\\boxed{9}', '2+1=3;3*3=9;\\\\boxed{9}')
    """
    found: list[str] = []

    def extend(pool: list[tuple[int, int]], steps: list[str], unused: frozenset[int]) -> None:
        # pool: (value, producer) with producer -1 for a given number, else the index of the step that made it
        if steps and pool[-1][0] == target and unused == {len(steps) - 1}:
            found.append(";".join(steps) + f";\\boxed{{{target}}}")
        for i, (a, made_a) in enumerate(pool):
            for j, (b, made_b) in enumerate(pool):
                if i == j:
                    continue
                rest = [item for k, item in enumerate(pool) if k not in (i, j)]
                used = unused - {made_a, made_b}
                for op in "+-*":
                    c = _apply(a, op, b)
                    if c > 0:
                        extend([*rest, (c, len(steps))], [*steps, f"{a}{op}{b}={c}"], used | {len(steps)})

    extend([(n, -1) for n in numbers], [], frozenset())
    return tuple(sorted(set(found)))  # equal numbers give the same text by different routes


@dataclass(frozen=True)
class CountdownTask:
    """Countdown problems ``"a b c d>target:"``; the ground truth is the problem without the colon.

    Args:
        num_numbers: numbers per problem (2 to 5).
        max_number: the numbers are drawn from 1..max_number.
        target_range: (low, high), inclusive bounds of the target.
        num_train: distinct problems in the ``train`` split.
        num_held_out: problems in the ``test`` split (never in ``train``).
    """

    num_numbers: int = 4
    max_number: int = 9
    target_range: tuple[int, int] = (10, 99)
    num_train: int = 50_000
    num_held_out: int = 512

    def __post_init__(self) -> None:
        if not 2 <= self.num_numbers <= 5:
            raise ValueError(f"num_numbers must be in [2, 5], got {self.num_numbers}")
        if self.max_number < 2:
            raise ValueError(f"max_number must be >= 2, got {self.max_number}")
        low, high = self.target_range
        if not 1 <= low <= high:
            raise ValueError(f"target_range must be (low, high) with 1 <= low <= high, got {self.target_range}")
        if self.num_train < 1 or self.num_held_out < 1:
            raise ValueError(f"num_train and num_held_out must be >= 1, got {self.num_train}, {self.num_held_out}")

    def _draw(self, rng: random.Random) -> tuple[tuple[int, ...], int] | None:
        numbers = tuple(rng.randint(1, self.max_number) for _ in range(self.num_numbers))
        pool = list(numbers)
        for _ in range(rng.randint(min(2, self.num_numbers - 1), self.num_numbers - 1)):
            a, b = (pool.pop(rng.randrange(len(pool))) for _ in range(2))
            options = [c for op in "+-*" if (c := _apply(a, op, b)) > 0]
            pool.append(rng.choice(options))
        target = pool[-1]
        low, high = self.target_range
        return (numbers, target) if low <= target <= high and target not in numbers else None

    def _problems(self, seed: int, count: int, exclude: set[tuple[tuple[int, ...], int]]) -> list[tuple]:
        rng, seen, out = random.Random(seed), set(exclude), []
        attempts = 0
        while len(out) < count:
            attempts += 1
            if attempts > 200 * count + 10_000:
                raise ValueError(
                    f"countdown: only {len(out)} distinct problems found for {count} asked; lower num_train or "
                    f"num_held_out, or widen target_range {self.target_range}"
                )
            problem = self._draw(rng)
            if problem is not None and problem not in seen:
                seen.add(problem)
                out.append(problem)
        return out

    @lru_cache(maxsize=4)  # noqa: B019 (frozen, hashable; a few tasks per process)
    def problems(self, split: Literal["train", "test"]) -> list[tuple[tuple[int, ...], int]]:
        """(numbers, target) of every problem of a split, in a fixed order."""
        held_out = self._problems(_HELD_OUT_SEED, self.num_held_out, set())
        if split == "test":
            return held_out
        return self._problems(_TRAIN_SEED, self.num_train, set(held_out))

    def records(self, split: Literal["train", "test"]) -> list[PromptRecord]:
        """All problems of a split as prompts, in a fixed order (the data module shuffles with its own seed)."""
        out = []
        for index, (numbers, target) in enumerate(self.problems(split)):
            problem = f"{' '.join(map(str, numbers))}>{target}"
            out.append(PromptRecord(prompt=f"{problem}:", ground_truth=problem, data_source="countdown", index=index))
        return out
