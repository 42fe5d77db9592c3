"""tools/compare_runs.py: exact step-by-step comparison of two runs' TensorBoard scalars."""

from __future__ import annotations

from torch.utils.tensorboard import SummaryWriter

from tools.compare_runs import main


def _run(path, losses) -> str:
    with SummaryWriter(str(path)) as writer:
        for step, loss in enumerate(losses):
            writer.add_scalar("train/loss", loss, step)
    return str(path)


def test_identical_runs_pass_and_a_difference_is_located(tmp_path, capsys) -> None:
    a = _run(tmp_path / "a", [2.0, 1.5, 1.25])
    b = _run(tmp_path / "b", [2.0, 1.5, 1.25])
    c = _run(tmp_path / "c", [2.0, 1.5, 1.2500001])
    assert main([a, b]) == 0
    assert "train/loss: 3 and 3 steps, identical" in capsys.readouterr().out
    assert main([a, c, "--tags", "train/loss", "val/x"]) == 1
    out = capsys.readouterr().out
    assert "first difference at step 2: 1.25 vs step 2: 1.25" in out and "val/x: 0 and 0 steps, missing" in out
