"""Name → object registries whose failed lookup lists the valid names."""

from __future__ import annotations

from typing import TypeVar

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

    Example:
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
