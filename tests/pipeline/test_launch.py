"""The test launcher's single-process path (``run_cli``): a run forked from the zygote reports its exit code and
output as a fresh ``python -m real_lightning.cli`` would, and a hung one is killed with its process group."""

from __future__ import annotations

import os

import pytest

from tests.pipeline.launch import run_cli


@pytest.mark.parametrize("zygote", ["1", "0"], ids=["zygote", "fresh"])
def test_a_hung_run_is_killed_and_named_at_the_timeout(tmp_path, monkeypatch, zygote) -> None:
    """``fit -c FIFO`` blocks opening a FIFO no one writes to: the run never ends by itself."""
    monkeypatch.setenv("REAL_LIGHTNING_TEST_ZYGOTE", zygote)
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    with pytest.raises(AssertionError, match=r"real-lightning fit still running after 3 s \(a hang\)"):
        run_cli(["fit", "-c", str(fifo)], tmp_path / "fit.log", timeout_s=3)


def test_exit_codes_and_output_are_those_of_the_cli(tmp_path) -> None:
    code, output = run_cli(["fit", "--trainer.max_steps", "oops"], tmp_path / "bad.log", timeout_s=120)
    assert code == 2 and "trainer.max_steps" in output, output[-2000:]
    code, output = run_cli(["--help"], tmp_path / "help.log", timeout_s=120)
    assert code == 0 and "fit" in output and "validate" in output, output[-2000:]
