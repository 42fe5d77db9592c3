"""Read a quickstart run's TensorBoard events and check that held-out Pass@1 rose enough and the run was healthy.

    python -m tools.check_quickstart runs/quickstart --min-rise 0.35

Prints the Pass@1 curve (step, value) and the run-health report (``health.json`` of RunHealthMonitor), and
exits non-zero when last − first < --min-rise or when the monitor reported a finding (unless
--allow-health-findings): a healthy run must not raise one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def latest_version(run_dir: Path) -> Path:
    versions = sorted(run_dir.glob("version_*"), key=lambda p: p.stat().st_mtime)
    if not versions:
        raise SystemExit(f"no TensorBoard run under {run_dir}")
    return versions[-1]


def pass_at_1_curve(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    version = latest_version(run_dir)
    events = EventAccumulator(str(version))
    events.Reload()
    if tag not in events.Tags()["scalars"]:
        raise SystemExit(f"{version} has no scalar {tag!r}")
    return [(e.step, e.value) for e in events.Scalars(tag)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="the logger's directory, e.g. runs/quickstart")
    parser.add_argument("--tag", default="val/held_out/pass@1")
    parser.add_argument("--min-rise", type=float, default=0.35)
    parser.add_argument("--allow-health-findings", action="store_true", help="do not fail on run-health findings")
    args = parser.parse_args()
    curve = pass_at_1_curve(args.run_dir, args.tag)
    print(" ".join(f"step {step}: {value:.4f}" for step, value in curve))
    rise = curve[-1][1] - curve[0][1]
    print(f"Pass@1 before: {curve[0][1]:.4f}, after: {curve[-1][1]:.4f}, rise {rise:+.4f} (required {args.min_rise})")
    report_path = latest_version(args.run_dir) / "health.json"
    if not report_path.exists():
        raise SystemExit(f"{report_path} is missing: the run had no RunHealthMonitor (the CLI's --health.*)")
    report = json.loads(report_path.read_text())
    findings = report["findings"]
    print(f"run health: {len(findings)} finding(s) in {report['steps']} steps")
    for finding in findings:
        print(f"  {finding['name']}: steps {finding['first_step']}–{finding['last_step']}\n  {finding['message']}")
    healthy = args.allow_health_findings or not findings
    sys.exit(0 if rise >= args.min_rise and healthy else 1)


if __name__ == "__main__":
    main()
