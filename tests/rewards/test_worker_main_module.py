"""Worker processes (verifier workers, rollout producers) do not re-run the program's ``__main__`` (the CLI: Lightning,
torch) unless what they run needs it."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
import types
from multiprocessing import spawn
from pathlib import Path

import pytest

from real_lightning.utils.main_module import refers_to_main, without_main_module
from tests.pipeline.launch import REPO
from tests.rewards_for_tests import first_char_even

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


def test_refers_to_main_finds_what_only_main_can_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """A class, a function or an instance of ``__main__`` anywhere inside an object makes it need ``__main__`` (a
    rollout producer's job: its engine, its reward function); objects plain pickle cannot handle count as needing it."""
    main = types.ModuleType("__main__")

    class Engine:  # a user's engine class, defined in their script
        pass

    def reward(response: str, ground_truth: str) -> float:
        return 1.0

    for obj in (Engine, reward):
        obj.__module__, obj.__qualname__ = "__main__", obj.__name__
        setattr(main, obj.__name__, obj)
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert not refers_to_main({"prompts": [[1, 2, 3]], "reward": first_char_even, "scale": 0.5})
    assert refers_to_main({"job": [1, (2, reward)]})
    assert refers_to_main({"engine": Engine()})
    assert refers_to_main(Engine)
    assert refers_to_main(functools.partial(reward, "x"))  # the partial's own module is functools
    reward.__module__ = "__mp_main__"  # the script's functions, seen in a process started by re-running it
    monkeypatch.setitem(sys.modules, "__mp_main__", main)  # (pickles by reference: no error to fall back on)
    assert refers_to_main(reward)
    assert refers_to_main([lambda: 0])  # cannot pickle: assume it does
