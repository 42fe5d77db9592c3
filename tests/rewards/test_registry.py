"""Reward functions by registered name and by ``module:function`` path."""

from __future__ import annotations

import pytest

import real_lightning.rewards as rewards
from real_lightning.rewards import REWARD_FUNCTIONS, countdown_reward, math_reward, resolve_reward_fn
from real_lightning.utils.registry import UnknownNameError
from tests.rewards import helpers


def test_public_api() -> None:
    for name in ["math_reward", "verify", "VerifyResult", "score_batch", "BatchScores", "REWARD_FUNCTIONS"]:
        assert name in rewards.__all__ and hasattr(rewards, name)
    assert callable(rewards.resolve_reward_fn)


def test_registered_name_and_import_path() -> None:
    assert set(REWARD_FUNCTIONS) == {"math", "countdown"}
    assert resolve_reward_fn("math") is math_reward
    assert resolve_reward_fn("countdown") is countdown_reward
    assert resolve_reward_fn("real_lightning.rewards:math_reward") is math_reward
    assert resolve_reward_fn("tests.rewards.helpers:exact_reward") is helpers.exact_reward
    assert resolve_reward_fn(helpers.exact_reward) is helpers.exact_reward
    assert resolve_reward_fn("real_lightning.rewards:math_reward")("\\boxed{2}", "2") == 1.0


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError, match="unknown reward function 'nope'; valid names: countdown, math"):
        resolve_reward_fn("nope")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("os:nonexistent", "'os:nonexistent': module 'os' has no attribute 'nonexistent'"),
        ("no_such_module_xyz:f", "'no_such_module_xyz:f': cannot import module 'no_such_module_xyz'"),
        ("os:sep", "'os:sep': 'sep' is a str, not a callable"),
        ("os:", "'os:' is not of the form 'package.module:function'"),
    ],
)
def test_bad_paths_name_the_spec(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_reward_fn(spec)


def test_non_string_spec_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="reward function spec"):
        resolve_reward_fn(42)  # type: ignore[arg-type]
