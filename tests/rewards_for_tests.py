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
