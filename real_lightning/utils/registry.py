"""Name → object registries whose failed lookup lists the valid names, and objects named by an import path."""

from __future__ import annotations

import functools
import importlib
from typing import Any, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised for a registry lookup of a name that is not registered.

    Subclasses ``KeyError`` (a registry is a mapping) but prints a readable message instead of
    ``KeyError``'s quoted repr.
    """

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(dict[str, T]):
    """A ``dict`` of named components; ``registry["typo"]`` names the valid choices.

    Examples:
        >>> reg = Registry("loss", {"a": 1, "b": 2})
        >>> reg["c"]
        Traceback (most recent call last):
        ...
        real_lightning.utils.registry.UnknownNameError: unknown loss 'c'; valid names: a, b
    """

    def __init__(self, kind: str, entries: dict[str, T] | None = None) -> None:
        super().__init__(entries or {})
        self.kind = kind

    def __missing__(self, name: str) -> T:
        raise UnknownNameError(f"unknown {self.kind} {name!r}; valid names: {', '.join(sorted(self))}")


def import_path(path: str, what: str) -> Any:
    """The object ``"package.module:attr"`` names (``attr`` may be dotted, e.g. ``"pkg.rewards:Scorer.score"``).

    Raises ``ValueError`` starting with ``f"{what} {path!r}"`` (e.g. ``what="loss"``) when the path is not of that
    form, its module cannot be imported, or it lacks the attribute.
    """
    module_name, _, attr_path = path.partition(":")
    if not module_name or not attr_path:
        raise ValueError(f"{what} {path!r} is not of the form 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{what} {path!r}: cannot import module {module_name!r} ({exc})") from exc
    try:
        return functools.reduce(getattr, attr_path.split("."), module)
    except AttributeError as exc:
        raise ValueError(f"{what} {path!r}: module {module_name!r} has no attribute {attr_path!r}") from exc
