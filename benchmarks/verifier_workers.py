"""Verifier worker start: workers that re-run the program's ``__main__`` (the CLI) against workers that do not.

    python -m benchmarks.verifier_workers              # 2 workers, 5 pool starts per mode
    python -m benchmarks.verifier_workers --workers 4 --repeats 9

This module imports ``real_lightning.cli`` at the top, as the ``real-lightning`` program's main module does. Each
repeat starts a fresh ``WorkerPool`` and grades one math answer per worker (``math_reward``, the paper's verifier):
the seconds until every result is back (the workers' start included) and each worker's resident memory after it.
``with __main__`` forces the behaviour before ``real_lightning.utils.main_module``: every worker re-imports the
program's main module, as ``spawn``/``forkserver`` do by default. Both modes run in one process, alternating; the
fork server is started by a warm-up pool first. Prints a Markdown table (medians).
"""

from __future__ import annotations

import argparse
import statistics
import time

import real_lightning.cli  # noqa: F401  (the program's main module imports the CLI, as `real-lightning` does)
from real_lightning.rewards.math import WORKER_PRELOAD, math_reward
from real_lightning.rewards.timeouts import WorkerPool


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def start_and_grade(workers: int, with_main: bool) -> tuple[float, float]:
    """Seconds from a new pool to ``workers`` graded answers, and the workers' mean RSS in MiB."""
    pool = WorkerPool(workers, WORKER_PRELOAD)
    pool._with_main = with_main  # the old behaviour, for comparison
    try:
        started = time.perf_counter()
        outcomes = pool.map(math_reward, [(r"\boxed{\frac{1}{2}}", "0.5")] * workers, 60.0)
        seconds = time.perf_counter() - started
        assert all(o.status == "ok" and o.value == 1.0 for o in outcomes), outcomes
        rss = statistics.mean(_rss_mib(w.process.pid) for w in pool._workers)
    finally:
        pool.close()
    return seconds, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    start_and_grade(args.workers, with_main=False)  # warm-up: the fork server and its preload
    runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for _ in range(args.repeats):
        for with_main in (True, False):
            runs[with_main].append(start_and_grade(args.workers, with_main))
    print(f"{args.workers} workers, {args.repeats} pool starts per mode (medians)\n")
    print("| verifier workers | seconds to first results | worker RSS MiB |")
    print("|---|---|---|")
    for with_main, label in ((True, "re-run `__main__` (before)"), (False, "skip `__main__` (now)")):
        seconds = statistics.median(s for s, _ in runs[with_main])
        rss = statistics.median(r for _, r in runs[with_main])
        print(f"| {label} | {seconds:.2f} | {rss:.0f} |")
    before = statistics.median(s for s, _ in runs[True])
    now = statistics.median(s for s, _ in runs[False])
    print(f"\nratio now / before: {now / before:.2f}")


if __name__ == "__main__":
    main()
