"""Verifiable rewards: the rule-based math reward, time-bounded and parallel scoring, reward functions by name.

Examples:
    >>> from real_lightning.rewards import math_reward, score_batch
    >>> math_reward("... so the answer is \\\\boxed{46}", "46")
    1.0
    >>> score_batch(["\\\\boxed{3}", "no idea"], ["3", "4"]).counts["no_answer"]
    1
"""

from __future__ import annotations

from real_lightning.rewards.countdown import check_countdown, countdown_reward
from real_lightning.rewards.grading import BatchScores, clear_stop, request_stop, score_batch
from real_lightning.rewards.math import VerifyResult, math_reward, verify
from real_lightning.rewards.registry import REWARD_FUNCTIONS, resolve_reward_fn

__all__ = [
    "REWARD_FUNCTIONS",
    "BatchScores",
    "VerifyResult",
    "check_countdown",
    "clear_stop",
    "countdown_reward",
    "math_reward",
    "request_stop",
    "resolve_reward_fn",
    "score_batch",
    "verify",
]
