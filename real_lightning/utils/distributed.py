"""The few collectives the pipeline needs, on the default process group (or none, in one process).

Every function is a no-op in a single process. Under DDP or FSDP, every rank must call them in the
same order (they are collectives).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch import distributed as dist


def is_distributed() -> bool:
    """A process group with more than one rank exists."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce(tensor: Tensor, op: str = "sum") -> Tensor:
    """A reduced copy (``sum`` or ``max``) of ``tensor`` over all ranks, on ``tensor``'s device."""
    if not is_distributed():
        return tensor.clone()
    work = tensor.detach().to(_device(), copy=True)
    dist.all_reduce(work, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return work.to(tensor.device)


def all_reduce_max(value: int) -> int:
    """The largest ``value`` over all ranks."""
    return int(all_reduce(torch.tensor([value], dtype=torch.long), op="max")[0])


def all_gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (pickled; for small state, not tensors of a step)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
