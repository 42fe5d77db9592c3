"""Verifier workers do not re-run the program's ``__main__`` (the CLI: Lightning, torch) unless they need it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import types
from multiprocessing import spawn
from pathlib import Path

import pytest

from real_lightning.rewards.main_module import without_main_module
from tests.pipeline.launch import REPO

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("how", ["module", "script"])
def test_workers_import_main_only_for_functions_defined_there(tmp_path: Path, how: str) -> None:
    """Run as ``python -m`` (main by name) and as a script (main by path): the workers that grade an imported function
    never import the program; those started for a function of ``__main__`` do, and run it."""
    imports = tmp_path / "imports.txt"
    program = ["-m", "tests.rewards.main_program"] if how == "module" else [str(REPO / "tests/rewards/main_program.py")]
    env = {**os.environ, "MAIN_PROGRAM_IMPORTS": str(imports), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, *program], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["imported"] == [1.0, 0.0] and result["own"] == [1.0, 0.0]
    lines = [line.split() for line in imports.read_text().splitlines()]
    importers = {int(pid): name for pid, name in lines}
    assert importers[result["parent"]] == "__main__"
    assert not set(result["imported_pids"]) & set(importers), (result, lines)  # never imported the program
    # a worker started for the function of __main__ re-ran the program first (one may not be ready before the pool
    # closes: the other took both calls)
    workers = {pid: name for pid, name in importers.items() if pid != result["parent"]}
    assert workers and set(workers) <= set(result["own_pids"]) and set(workers.values()) == {"__mp_main__"}, lines
    assert not set(result["imported_pids"]) & set(result["own_pids"])  # restarted to load __main__


def test_the_suppression_is_per_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another thread's process starts keep the standard preparation data while one thread is inside the block."""
    main = types.ModuleType("__main__")
    main.__file__ = str(REPO / "tests" / "rewards" / "main_program.py")  # a script (pytest-xdist's has no file)
    monkeypatch.setitem(sys.modules, "__main__", main)
    inside, outside = {}, {}

    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        with without_main_module():
            inside.update(spawn.get_preparation_data("x"))
            entered.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    entered.wait(10)
    outside.update(spawn.get_preparation_data("x"))
    release.set()
    holder.join(10)
    main_keys = {"init_main_from_name", "init_main_from_path"}
    assert not main_keys & set(inside)
    assert outside["init_main_from_path"] == main.__file__
