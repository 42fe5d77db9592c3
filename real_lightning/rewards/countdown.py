"""The countdown verifier: a chain of + − × steps from given numbers to a target, checked step by step.

A problem gives numbers and a target, ``"3 7 9 4>30"`` (the ground truth of the built-in ``countdown`` task,
:class:`~real_lightning.data.countdown.CountdownTask`). A response is steps ``a op b = c`` each ended by ``;``,
then ``\\boxed{target}``::

    7*4=28;28+3=31;31-1=30;\\boxed{30}

It scores 1 only if the whole response has that form (surrounding whitespace aside) and:

- every step's arithmetic is right (``c`` is ``a + b``, ``a − b`` or ``a × b``);
- every operand is available when it is used: the given numbers and the results made so far form a pool, an
  operand takes one item of its value out of the pool and the result goes in (so each given number is used at
  most once, a result only after its step, and each result at most once, as in the game);
- the boxed number is the last step's result, and it is the target.

Anything else scores 0; :func:`check_countdown` says which rule failed.

Examples:
    >>> countdown_reward("7*4=28;28+3=31;31-1=30;\\\\boxed{30}", "3 7 1 4>30")
    1.0
    >>> check_countdown("7*4=28;28+7=35;\\\\boxed{35}", "3 7 1 4>35")
    'unavailable'
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Literal

Verdict = Literal["correct", "malformed", "arithmetic", "unavailable", "answer_mismatch", "wrong_target"]
"""What :func:`check_countdown` found: ``correct`` or the first rule the response breaks."""

_STEP = r"(\d+)([+\-*])(\d+)=(\d+);"
_RESPONSE = re.compile(rf"(?:{_STEP})+\\boxed\{{(\d+)\}}")
_STEPS = re.compile(_STEP)
_PROBLEM = re.compile(r"\s*(\d+(?:\s+\d+)*)\s*>\s*(\d+)\s*:?\s*")


def parse_problem(ground_truth: str) -> tuple[list[int], int]:
    """The numbers and the target of ``"3 7 9 4>30"`` (a trailing ``:``, the prompt's, is allowed).

    Raises:
        ValueError: the text is not numbers separated by spaces, ``>`` and a target.
    """
    match = _PROBLEM.fullmatch(ground_truth)
    if match is None:
        raise ValueError(
            f"a countdown problem is numbers then '>' and the target, like '3 7 9 4>30', got {ground_truth!r}"
        )
    return [int(n) for n in match.group(1).split()], int(match.group(2))


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def check_countdown(response: str, ground_truth: str) -> Verdict:
    """Which rule ``response`` breaks for the problem ``ground_truth`` (``"correct"`` when none); see the module."""
    numbers, target = parse_problem(ground_truth)
    text = response.strip()
    if _RESPONSE.fullmatch(text) is None:
        return "malformed"
    pool = Counter(numbers)
    result = None
    for a, op, b, c in _STEPS.findall(text[: text.rindex("\\boxed")]):
        a, b, c = int(a), int(b), int(c)
        if _apply(a, op, b) != c:
            return "arithmetic"
        pool[a] -= 1
        pool[b] -= 1
        if pool[a] < 0 or pool[b] < 0:
            return "unavailable"
        pool[c] += 1
        result = c
    boxed = int(text[text.rindex("{") + 1 : -1])
    if boxed != result:
        return "answer_mismatch"
    return "correct" if result == target else "wrong_target"


def countdown_reward(response: str, ground_truth: str) -> float:
    """1.0 when ``response`` reaches the target of ``ground_truth`` by valid steps (:func:`check_countdown`), else 0."""
    return 1.0 if check_countdown(response, ground_truth) == "correct" else 0.0
