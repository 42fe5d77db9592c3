"""Reward functions by name, or by ``"package.module:function"`` path, and the row fields they take."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from real_lightning.rewards.countdown import countdown_reward
from real_lightning.rewards.math import math_reward, verify
from real_lightning.utils.registry import Registry, import_path

#: A reward function: ``fn(response, ground_truth) -> reward``, or ``fn(response, ground_truth, **row) -> reward``
#: when it takes row fields (see :func:`reward_fn_fields`).
RewardFn = Callable[..., float]

#: Registered reward functions; an unknown name's error lists the valid ones.
REWARD_FUNCTIONS: Registry[RewardFn] = Registry("reward function", {"math": math_reward, "countdown": countdown_reward})


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

    Examples:
        >>> resolve_reward_fn("math") is resolve_reward_fn("real_lightning.rewards:math_reward")
        True
    """
    if callable(spec):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"a reward function spec is a name, a 'module:function' path or a callable, got {spec!r}")
    if ":" not in spec:
        return REWARD_FUNCTIONS[spec]
    fn = import_path(spec, "reward function spec")
    if not callable(fn):
        attr_path = spec.partition(":")[2]
        raise ValueError(f"reward function spec {spec!r}: {attr_path!r} is a {type(fn).__name__}, not a callable")
    return fn


#: :attr:`RowFieldParams.accepted` of a function with a ``**kwargs`` parameter: it takes any row field.
ANY_FIELD = "**"


class RowFieldParams(NamedTuple):
    """The row fields a reward function takes (see :func:`reward_fn_fields`).

    Attributes:
        accepted: the names it takes, or :data:`ANY_FIELD` (a ``**kwargs`` parameter).
        required: the names it cannot do without (parameters without a default).
        reserved: the names of its response and ground-truth parameters (no row field may be called so).
    """

    accepted: frozenset[str] | str
    required: frozenset[str]
    reserved: frozenset[str]


def reward_fn_fields(fn: Callable[..., Any]) -> RowFieldParams:
    """The row fields a reward function takes, read from its signature.

    The first two positional parameters are the response and the ground truth. Row fields reach the function as
    keyword arguments: a ``**kwargs`` parameter takes any, and every other parameter that can be passed by keyword
    takes the field of its name; those without a default are required. A function of two parameters takes none.
    The math reward (and :func:`~real_lightning.rewards.math.verify`) takes none either: its keyword parameters
    are its own options. A function whose signature cannot be read takes none.

    Examples:
        >>> def near(response, ground_truth, *, tolerance, unit="m"): ...
        >>> params = reward_fn_fields(near)
        >>> sorted(params.accepted), sorted(params.required)
        (['tolerance', 'unit'], ['tolerance'])
        >>> reward_fn_fields(lambda response, ground_truth, **row: 1.0).accepted
        '**'
        >>> reward_fn_fields(math_reward).accepted
        frozenset()
    """
    none = RowFieldParams(frozenset(), frozenset(), frozenset())
    if fn is math_reward or fn is verify:
        return none
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # some builtins and C callables
        return none
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    taken = 0  # response and ground truth fill the first two positional parameters
    accepted: set[str] = set()
    required: set[str] = set()
    reserved: set[str] = set()
    any_field = False
    for p in parameters:
        if p.kind in positional and taken < 2:
            taken += 1
            if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD:
                reserved.add(p.name)
        elif p.kind is inspect.Parameter.VAR_POSITIONAL:
            taken = 2
        elif p.kind is inspect.Parameter.VAR_KEYWORD:
            any_field = True
        elif p.kind is not inspect.Parameter.POSITIONAL_ONLY:
            accepted.add(p.name)
            if p.default is inspect.Parameter.empty:
                required.add(p.name)
    return RowFieldParams(ANY_FIELD if any_field else frozenset(accepted), frozenset(required), frozenset(reserved))


def reward_fn_name(fn: Callable[..., Any]) -> str:
    """``module:qualname`` of a function (its ``repr`` when it has none), for messages."""
    module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    return f"{module}:{name}" if module and name else repr(fn)


def check_reward_fields(fn: Callable[..., Any], fields: Sequence[str], option: str) -> None:
    """Raise ``ValueError``, naming ``option`` and the function, unless ``fn`` takes exactly the row ``fields``
    asked for it: each one (by name or through ``**kwargs``), and every parameter it requires.

    Examples:
        >>> check_reward_fields(math_reward, ["tolerance"], "data.train.reward_fields")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: data.train.reward_fields asks for the row fields ['tolerance'], but the reward function ...
    """
    accepted, required, reserved = reward_fn_fields(fn)
    name, fields = reward_fn_name(fn), list(fields)
    if fields and not accepted:
        raise ValueError(
            f"{option} asks for the row fields {fields}, but the reward function {name} takes none (only the "
            "response and the ground truth); use one with a parameter per field (e.g. `def reward(response, "
            f"ground_truth, *, {', '.join(fields)})`) or `**row`, or leave {option} empty"
        )
    if clash := [f for f in fields if f in reserved]:
        raise ValueError(
            f"{option} asks for the row fields {clash}, which are the names of the response and ground-truth "
            f"parameters of the reward function {name}; rename those parameters"
        )
    if accepted != ANY_FIELD and (unknown := [f for f in fields if f not in accepted]):
        raise ValueError(
            f"{option} asks for the row fields {unknown}, which the reward function {name} has no parameter for "
            f"(it takes {sorted(accepted)}); rename them, add them to its parameters or give it `**row`"
        )
    if missing := sorted(required.difference(fields)):
        raise ValueError(
            f"the reward function {name} requires the row fields {missing}, which {option} does not list "
            f"(it lists {fields}); add them to {option} (each row must have them) or give them defaults"
        )
