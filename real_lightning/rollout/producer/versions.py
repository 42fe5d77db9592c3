"""Which published weights sample which rollout batch (the staleness rule; pure, no process or tensor).

The trainer publishes its weights at the start of every rollout batch q: :class:`Published` ``(q, version,
slot)``, ``version`` being the optimizer step. Rollout batch r may be sampled by weights published at the start of
batch r − S or later (S = ``max_staleness``):

- ``fixed``: exactly those of batch max(0, r − S), so that the rollouts never depend on timing;
- ``bounded``: the newest published when the producer starts batch r (at least batch r − S's).

Examples:
    >>> book = {0: Published(0, 0, 0), 1: Published(1, 2, 1)}
    >>> choose_weights(2, book, 2, "fixed").index, choose_weights(2, book, 2, "bounded").index
    (0, 1)
    >>> choose_weights(3, book, 1, "fixed") is None  # batch 3 waits for the weights of batch 2's start
    True
"""

from __future__ import annotations

from typing import Literal, NamedTuple


class Published(NamedTuple):
    """Weights the trainer published at the start of rollout batch ``index``: optimizer step ``version``, held
    in snapshot slot ``slot``."""

    index: int
    version: int
    slot: int


def oldest_allowed(rollout_index: int, max_staleness: int) -> int:
    """The rollout batch whose start's weights are the oldest that may sample batch ``rollout_index``."""
    return max(0, rollout_index - max_staleness)


def choose_weights(
    rollout_index: int, book: dict[int, Published], max_staleness: int, mode: Literal["fixed", "bounded"]
) -> Published | None:
    """The published weights that sample batch ``rollout_index``, or None while they are not published yet.

    In ``fixed`` mode, when batch r − S's weights were never published to this producer but later ones were (a
    run resumed from a checkpoint that did not hold the batches in flight), the oldest later ones sample it:
    publishing is in order, so r − S's will not come.
    """
    floor = oldest_allowed(rollout_index, max_staleness)
    allowed = [p for i, p in book.items() if i >= floor]
    if not allowed:
        return None
    if mode == "bounded":
        return max(allowed, key=lambda p: p.index)
    return book.get(floor) or min(allowed, key=lambda p: p.index)


def slot_of(index: int, max_staleness: int) -> int:
    """The snapshot slot of the weights published at batch ``index``: S + 1 slots in a ring.

    The trainer publishes batch q's weights after it has received batch q − 1, the last one batch q − S − 1's
    weights (the slot's previous content) may sample, so a slot is never overwritten while still needed."""
    return index % (max_staleness + 1)
