"""Run ``real-lightning`` with every collective recorded: ``python -m tests.pipeline.collective_trace DIR fit ...``.

Before the CLI is imported, the collectives of ``torch.distributed`` (and the functional collectives that DTensor
and FSDP2 use) are wrapped so that each call appends one line to ``DIR/rank<R>.jsonl``: its index, the op, the
shapes and dtypes of its tensors, and where it was called from (the innermost frame in ``real_lightning`` or
``tests``, and the innermost frame outside torch, e.g. Lightning's). Only the outermost call is recorded (an
object collective's inner broadcasts are part of it). Lines are flushed as written, so a hung run's trace is
complete up to the collective it waits in. DDP's gradient all-reduces run inside its C++ reducer and are not
seen here; they follow the backward passes, which the module keeps equal on every rank.

:func:`first_divergence` compares two ranks' traces; :func:`from_sampling` finds collectives issued from inside
the sampling path.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
_OURS = (str(REPO / "real_lightning"), str(REPO / "tests"))
_SELF = str(Path(__file__).resolve())

_C10D = [
    "all_gather",
    "all_gather_coalesced",
    "all_gather_into_tensor",
    "all_gather_object",
    "all_reduce",
    "all_reduce_coalesced",
    "all_to_all",
    "all_to_all_single",
    "barrier",
    "batch_isend_irecv",
    "broadcast",
    "broadcast_object_list",
    "gather",
    "gather_object",
    "irecv",
    "isend",
    "monitored_barrier",
    "recv",
    "recv_object_list",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "scatter",
    "scatter_object_list",
    "send",
    "send_object_list",
]
_FUNCTIONAL = [
    "all_reduce",
    "all_gather_tensor",
    "all_gather_tensor_autograd",
    "reduce_scatter_tensor",
    "reduce_scatter_tensor_autograd",
    "all_to_all_single",
    "all_to_all_single_autograd",
    "broadcast",
    "all_reduce_coalesced",
    "all_gather_into_tensor_coalesced",
    "reduce_scatter_tensor_coalesced",
]

_state = threading.local()


def _describe(value: Any) -> list[str]:
    """Shapes and dtypes of the tensors in ``value`` (nested lists and tuples), e.g. ``["f32[4, 8]"]``."""
    import torch

    if isinstance(value, torch.Tensor):
        return [f"{str(value.dtype).removeprefix('torch.')}{list(value.shape)}"]
    if isinstance(value, list | tuple):
        return [d for item in value for d in _describe(item)]
    return []


def _call_sites() -> tuple[str, str, list[str]]:
    """(innermost frame in our code, innermost frame outside torch and this file, every frame in our code
    innermost first) of the current call."""
    ours = outside = ""
    stack: list[str] = []
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        where = f"{os.path.relpath(name, REPO) if name.startswith(str(REPO)) else name}:{frame.f_lineno} "
        where += frame.f_code.co_name
        if name != _SELF and name.startswith(_OURS):
            ours = ours or where
            stack.append(where)
        if name != _SELF and not outside and f"{os.sep}torch{os.sep}" not in name:
            outside = where
        frame = frame.f_back
    return ours, outside, stack


def _wrap(op: str, fn: Any, sink: Any) -> Any:
    @functools.wraps(fn)
    def traced(*args: Any, **kwargs: Any) -> Any:
        if getattr(_state, "depth", 0):
            return fn(*args, **kwargs)
        ours, outside, stack = _call_sites()
        _state.count = getattr(_state, "count", 0) + 1
        shapes = _describe(list(args) + [v for k, v in kwargs.items() if k not in ("group", "async_op")])
        record = {"i": _state.count, "op": op, "tensors": shapes, "at": ours, "via": outside, "stack": stack}
        sink.write(json.dumps(record) + "\n")
        sink.flush()
        _state.depth = 1
        try:
            return fn(*args, **kwargs)
        finally:
            _state.depth = 0

    return traced


def install(folder: Path, rank: int) -> None:
    """Wrap the collectives; this process's trace goes to ``folder/rank<rank>.jsonl``."""
    import torch.distributed as dist
    import torch.distributed._functional_collectives as funcol
    import torch.distributed.distributed_c10d as c10d

    folder.mkdir(parents=True, exist_ok=True)
    sink = (folder / f"rank{rank}.jsonl").open("w")
    for name in _C10D:
        if hasattr(c10d, name):
            traced = _wrap(name, getattr(c10d, name), sink)
            setattr(c10d, name, traced)
            setattr(dist, name, traced)
    for name in _FUNCTIONAL:
        if hasattr(funcol, name):
            setattr(funcol, name, _wrap(f"functional.{name}", getattr(funcol, name), sink))


def read_trace(path: Path) -> list[dict]:
    """The records of one rank's trace file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _signature(record: dict) -> tuple[str, tuple[str, ...]]:
    return record["op"], tuple(record["tensors"])


def first_divergence(traces: dict[int, list[dict]]) -> str | None:
    """None when every rank issued the same collectives (op, tensor shapes and dtypes) in the same order; else a
    description of the first place where they differ, naming each rank's call and where it came from."""
    ranks = sorted(traces)
    longest = max(len(t) for t in traces.values())
    for i in range(longest):
        here = {r: traces[r][i] if i < len(traces[r]) else None for r in ranks}
        signatures = {r: _signature(rec) if rec else None for r, rec in here.items()}
        if len(set(signatures.values())) > 1:
            lines = [f"the ranks' collectives differ at call #{i + 1}:"]
            for r, rec in here.items():
                if rec is None:
                    lines.append(f"  rank {r}: no call #{i + 1} (it issued {len(traces[r])} in all)")
                else:
                    lines.append(f"  rank {r}: {rec['op']}{rec['tensors']} at {rec['at'] or '?'} (via {rec['via']})")
            previous = traces[ranks[0]][i - 1] if i else None
            if previous:
                lines.append(f"  the last common call: {previous['op']} at {previous['at'] or '?'}")
            return "\n".join(lines)
    return None


def main() -> None:
    folder, args = Path(sys.argv[1]), sys.argv[2:]
    install(folder, int(os.environ.get("RANK", "0")))
    from real_lightning.cli import entry

    entry(args)


if __name__ == "__main__":
    main()


# where sampling runs: a collective issued with one of these frames on the stack came from inside it
SAMPLING_FRAMES = ("real_lightning/rollout/", "real_lightning/rewards/")
CHECKPOINT_FRAMES = ("real_lightning/rollout/collector.py", "state_dict")  # the data position a checkpoint saves
PUBLISH_FRAMES = ("real_lightning/rollout/producer/base.py", "publish")  # weights to a producer, at the boundary


def from_sampling(trace: list[dict], engine_may_gather: bool) -> list[dict]:
    """The collectives of ``trace`` issued from inside sampling or grading — none should be: decisions that need
    every rank are taken at the step boundary. Excepted: the collector's ``state_dict`` (a checkpoint, between
    steps), a rollout producer's ``publish`` (the full weights gathered at a rollout batch's start, every rank at
    once), and with ``engine_may_gather`` the engine's own forward passes (the HF engine sampling with the shared,
    sharded training module gathers its shards: inherent to that mode)."""
    found = []
    for record in trace:
        frames = [f for f in record.get("stack", []) if f.startswith(SAMPLING_FRAMES)]
        if not frames or any(
            marks[0] in f and f.endswith(marks[1]) for f in frames for marks in (CHECKPOINT_FRAMES, PUBLISH_FRAMES)
        ):
            continue
        if engine_may_gather and frames[0].startswith(
            ("real_lightning/rollout/hf.py", "real_lightning/rollout/decode.py")
        ):
            continue
        found.append(record)
    return found
