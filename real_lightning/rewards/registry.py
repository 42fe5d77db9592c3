"""Reward functions by name, or by ``"package.module:function"`` path."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable

from real_lightning.rewards.math import math_reward
from real_lightning.utils.registry import Registry

#: A reward function: ``fn(response, ground_truth) -> reward``.
RewardFn = Callable[[str, str], float]

#: Registered reward functions; an unknown name's error lists the valid ones.
REWARD_FUNCTIONS: Registry[RewardFn] = Registry("reward function", {"math": math_reward})


def resolve_reward_fn(spec: str | RewardFn) -> RewardFn:
    """A reward function from a callable, a registered name, or a ``"package.module:function"`` path.

    Args:
        spec: a callable (returned as is), a name of :data:`REWARD_FUNCTIONS`, or ``"module:attr"`` (``attr`` may be
            dotted, e.g. ``"pkg.rewards:Scorer.score"``).

    Returns:
        The callable.

    Raises:
        real_lightning.utils.registry.UnknownNameError: for an unregistered bare name (the message lists the
            valid names).
        ValueError: if the module of a path cannot be imported, lacks the attribute, or it is not callable.
        TypeError: if ``spec`` is neither a string nor a callable.

    Example:
        >>> resolve_reward_fn("math") is resolve_reward_fn("real_lightning.rewards:math_reward")
        True
    """
    if callable(spec):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"a reward function spec is a name, a 'module:function' path or a callable, got {spec!r}")
    if ":" not in spec:
        return REWARD_FUNCTIONS[spec]
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise ValueError(f"reward function spec {spec!r} is not of the form 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"reward function spec {spec!r}: cannot import module {module_name!r} ({exc})") from exc
    try:
        fn = functools.reduce(getattr, attr_path.split("."), module)
    except AttributeError as exc:
        raise ValueError(
            f"reward function spec {spec!r}: module {module_name!r} has no attribute {attr_path!r}"
        ) from exc
    if not callable(fn):
        raise ValueError(f"reward function spec {spec!r}: {attr_path!r} is a {type(fn).__name__}, not a callable")
    return fn
