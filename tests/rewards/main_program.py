"""A program for ``test_worker_main_module.py``: run as ``python -m tests.rewards.main_program`` or as a script.

Each import of this module (as ``__main__`` or re-run as ``__mp_main__`` in a worker) appends ``pid name`` to the
file ``$MAIN_PROGRAM_IMPORTS``. As the main program it maps an imported function, then one of its own, over a
two-worker pool (the latter through ``functools.partial``), and prints both results and the pool's worker pids as JSON.
"""

from __future__ import annotations

import functools
import json
import os

from real_lightning.rewards.timeouts import WorkerPool
from tests.rewards_for_tests import first_char_even

if "MAIN_PROGRAM_IMPORTS" in os.environ:  # (pytest's --doctest-modules imports this module too)
    with open(os.environ["MAIN_PROGRAM_IMPORTS"], "a") as imports:
        imports.write(f"{os.getpid()} {__name__}\n")


def defined_in_main(response: str, ground_truth: str) -> float:
    """Needs ``__main__`` in the worker that runs it."""
    return float(response == ground_truth)


if __name__ == "__main__":
    pool = WorkerPool(2)
    try:
        imported = pool.map(first_char_even, [("b", ""), ("a", "")], 10.0)
        imported_pids = sorted(w.process.pid for w in pool._workers)
        # through functools.partial: what refers to __main__ counts, not only the function's own module
        own = pool.map(functools.partial(defined_in_main), [("x", "x"), ("x", "y")], 10.0)
        own_pids = sorted(w.process.pid for w in pool._workers)
    finally:
        pool.close()
    result = {
        "imported": [o.value for o in imported],
        "own": [o.value for o in own],
        "imported_pids": imported_pids,
        "own_pids": own_pids,
        "parent": os.getpid(),
    }
    print(json.dumps(result))
