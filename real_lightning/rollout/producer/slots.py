"""Weight snapshots a producer reads: a few flat byte buffers in shared memory, one per published version.

The trainer writes a snapshot (:meth:`WeightSlots.write`) and tells the producer which slot holds which version;
the producer loads the slot's views (:meth:`WeightSlots.named`) into its engine. A buffer is one storage (one file
descriptor when shared with a worker process, whatever the number of tensors). Snapshots, not the trainer's live
parameters: the optimizer changes those in place, so a reader would see a half-updated policy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

_ALIGN = 64  # bytes: every tensor starts on a boundary any dtype's view accepts


@dataclass(frozen=True)
class TensorEntry:
    """Where one named tensor lives in a slot: ``nbytes`` bytes from ``offset``, as ``dtype`` of ``shape``."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


def layout(named_tensors: Iterable[tuple[str, Tensor]]) -> tuple[list[TensorEntry], int]:
    """The entries of these tensors packed one after another (aligned), and the slot size in bytes."""
    entries, offset = [], 0
    for name, tensor in named_tensors:
        nbytes = tensor.numel() * tensor.element_size()
        entries.append(TensorEntry(name, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape), offset, nbytes))
        offset += -(-nbytes // _ALIGN) * _ALIGN
    return entries, offset


class WeightSlots:
    """``count`` snapshots of the policy's weights in flat uint8 buffers (shared memory when ``shared``).

    Picklable with :mod:`torch.multiprocessing` (a worker process receives handles to the same memory).
    """

    def __init__(self, entries: list[TensorEntry], buffers: list[Tensor]) -> None:
        self.entries, self.buffers = entries, buffers
        self._by_name = {e.name: e for e in entries}

    @classmethod
    def allocate(cls, entries: list[TensorEntry], size: int, count: int, shared: bool) -> WeightSlots:
        buffers = [torch.empty(max(size, 1), dtype=torch.uint8) for _ in range(count)]
        if shared:
            buffers = [b.share_memory_() for b in buffers]
        return cls(entries, buffers)

    def view(self, slot: int, entry: TensorEntry) -> Tensor:
        raw = self.buffers[slot][entry.offset : entry.offset + entry.nbytes]
        return raw.view(getattr(torch, entry.dtype)).view(entry.shape)

    @torch.no_grad()
    def write(self, slot: int, named_tensors: Iterable[tuple[str, Tensor]]) -> None:
        """Copy each (name, full tensor) into ``slot``; every entry must receive one, of its shape and dtype."""
        missing = set(self._by_name)
        for name, tensor in named_tensors:
            entry = self._by_name.get(name)
            if entry is None or tuple(tensor.shape) != entry.shape or tensor.dtype != getattr(torch, entry.dtype):
                raise ValueError(
                    f"weight snapshot: {name} {tuple(tensor.shape)} {tensor.dtype} does not match the layout "
                    f"of the first snapshot ({entry})"
                )
            self.view(slot, entry).copy_(tensor.detach())
            missing.discard(name)
        if missing:
            raise ValueError(f"weight snapshot: no tensor for {sorted(missing)[:5]} (of {len(missing)})")

    def named(self, slot: int) -> list[tuple[str, Tensor]]:
        """The (name, tensor view) pairs of ``slot`` (views of the shared memory: copy them, do not keep them)."""
        return [(e.name, self.view(slot, e)) for e in self.entries]
