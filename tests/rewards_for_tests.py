"""Reward functions importable by ``module:function`` (and by verifier worker processes) in tests."""


def contains_seven(response: str, ground_truth: str) -> float:
    """1 when the response contains the character 7: gives a random policy's groups a label contrast."""
    return float("7" in response)


def first_char_even(response: str, ground_truth: str) -> float:
    """1 when the response's first character has an even code point: about half of a random policy's samples."""
    return float(bool(response) and ord(response[0]) % 2 == 0)


def always_one(response: str, ground_truth: str) -> float:
    """1 for every response: no group ever has a label contrast."""
    return 1.0


def tolerance_reward(response: str, ground_truth: str, *, tolerance: float) -> float:
    """The row's ``tolerance`` (a field of the row, through ``reward_fields``) when the response's first character
    has an even code point, else ``1 - tolerance``: every reward depends on the row field."""
    return tolerance if first_char_even(response, ground_truth) else 1.0 - tolerance


def tolerance_reward_from_row(response: str, ground_truth: str, **row: float) -> float:
    """:func:`tolerance_reward`, the field taken through ``**row``."""
    return tolerance_reward(response, ground_truth, tolerance=row["tolerance"])


def slow_first_char_even(response: str, ground_truth: str) -> float:
    """:func:`first_char_even` after 4 ms of sleep: a rollout producer that scores with it falls behind a fast
    trainer (64 responses: about 0.25 s per rollout batch, less with parallel verifier workers)."""
    import time

    time.sleep(0.004)
    return first_char_even(response, ground_truth)
