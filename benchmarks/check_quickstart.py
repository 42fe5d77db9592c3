"""Read a quickstart run's TensorBoard events and check that held-out Pass@1 rose enough.

    python benchmarks/check_quickstart.py runs/quickstart --min-rise 0.35

Prints the Pass@1 curve (step, value) and exits non-zero when last − first < --min-rise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def pass_at_1_curve(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    versions = sorted(run_dir.glob("version_*"), key=lambda p: p.stat().st_mtime)
    if not versions:
        raise SystemExit(f"no TensorBoard run under {run_dir}")
    events = EventAccumulator(str(versions[-1]))
    events.Reload()
    if tag not in events.Tags()["scalars"]:
        raise SystemExit(f"{versions[-1]} has no scalar {tag!r}")
    return [(e.step, e.value) for e in events.Scalars(tag)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="the logger's directory, e.g. runs/quickstart")
    parser.add_argument("--tag", default="val/held_out/pass@1")
    parser.add_argument("--min-rise", type=float, default=0.35)
    args = parser.parse_args()
    curve = pass_at_1_curve(args.run_dir, args.tag)
    print(" ".join(f"step {step}: {value:.4f}" for step, value in curve))
    rise = curve[-1][1] - curve[0][1]
    print(f"Pass@1 before: {curve[0][1]:.4f}, after: {curve[-1][1]:.4f}, rise {rise:+.4f} (required {args.min_rise})")
    sys.exit(0 if rise >= args.min_rise else 1)


if __name__ == "__main__":
    main()
