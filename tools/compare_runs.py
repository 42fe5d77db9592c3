"""Are two runs the same, step by step? Compares TensorBoard scalars of two run folders exactly (float32 as logged).

    python -m tools.compare_runs runs/a/quickstart/version_0 runs/b/quickstart/version_0 \
        --tags train/loss val/held_out/pass@1

Prints, per tag, the number of steps in each run and the first step where they differ (or "identical"), and exits
1 when any tag differs or is missing. Used to show that a refactor leaves the quickstart's per-step loss unchanged
and, later, that an equivalent configuration (e.g. asynchronous rollouts with staleness 0) trains the same run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def scalars(run: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of ``tag`` in the TensorBoard events under ``run``, in step order (all of them)."""
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    if tag not in events.Tags().get("scalars", []):
        return []
    return sorted((e.step, e.value) for e in events.Scalars(tag))


def compare(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> str | None:
    """None when equal, else where they first differ."""
    for (step_a, value_a), (step_b, value_b) in zip(a, b, strict=False):
        if (step_a, value_a) != (step_b, value_b):
            return f"first difference at step {step_a}: {value_a!r} vs step {step_b}: {value_b!r}"
    return None if len(a) == len(b) else f"{len(a)} vs {len(b)} steps"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--tags", nargs="+", default=["train/loss"])
    args = parser.parse_args(argv)
    same = True
    for tag in args.tags:
        a, b = scalars(args.run_a, tag), scalars(args.run_b, tag)
        difference = "missing" if not a or not b else compare(a, b)
        same &= difference is None
        print(f"{tag}: {len(a)} and {len(b)} steps, {difference or 'identical'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
