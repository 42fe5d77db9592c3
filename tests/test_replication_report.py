"""experiments/replication_report.py: the report's tables from a summary, checked against numbers worked out by hand,
and its figures written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import replication_report as report


def record(pass1: list[float], pass8: list[float], entropy: float, zero: float, health: list[str] = ()) -> dict:
    steps = [0, 100, 200, 300, 399]
    return {
        "steps": 400,
        "health": [{"name": name} for name in health],
        "curves": {
            "val/held_out/pass@1": [[s, v] for s, v in zip(steps, pass1, strict=True)],
            "val/held_out/pass@8": [[s, v] for s, v in zip(steps, pass8, strict=True)],
            "train/entropy": [[s, entropy] for s in range(4, 400, 5)],
            "rollout/reward_mean": [[s, 0.5] for s in range(4, 400, 5)],
            "rollout/response_length_mean": [[s, 10.0 + (s > 300)] for s in range(4, 400, 5)],
            "weights/domination_mean": [[5, 0.2], [10, 0.4]],
            "weights/pos_zero_fraction": [[5, zero], [10, zero]],
        },
    }


@pytest.fixture
def summary(tmp_path: Path) -> Path:
    data = {
        "lr_sweep": {},
        "main": {
            "grpo": {
                "lr3e-05-seed0": record([0.2, 0.3, 0.30, 0.32, 0.34], [0.5, 0.6, 0.6, 0.6, 0.6], 0.2, 0.1),
                "lr3e-05-seed1": record([0.2, 0.3, 0.36, 0.30, 0.30], [0.5, 0.6, 0.6, 0.6, 0.6], 0.4, 0.3),
            },
            "real": {  # written after grpo: the tables keep the order of LOSSES
                "lr0.0001-seed0": record([0.2, 0.4, 0.40, 0.40, 0.40], [0.5, 0.7, 0.7, 0.7, 0.7], 0.1, 0.0),
                "lr0.0001-seed1": record([0.2, 0.1, 0.30, 0.30, 0.34], [0.5, 0.6, 0.6, 0.6, 0.6], 0.1, 0.0),
                "lr0.0001-seed2": record(
                    [0.2, 0.3, 0.30, 0.30, 0.30], [0.5, 0.6, 0.6, 0.6, 0.6], 0.1, 0.0, ["truncation"]
                ),
            },
        },
    }  # fmt: skip
    path = tmp_path / "replication.json"
    path.write_text(json.dumps(data))
    return path


def test_pass_table_means_and_sds_over_seeds(summary: Path) -> None:
    runs = report.runs_by_loss([json.loads(summary.read_text())])
    assert list(runs) == ["real", "grpo"]
    rows = report.pass_table(runs, late=2).splitlines()
    real = [cell.strip() for cell in rows[2].split("|")[1:-1]]
    # Pass@1 at step 100: 0.4, 0.1, 0.3 → mean 0.267, sd sqrt(((.133)² + (.167)² + (.033)²)/2) = 0.153
    # at the end: 0.40, 0.34, 0.30 → mean 0.347, sd sqrt((.0533² + .0067² + .0467²)/2) = 0.050
    # last 2 validations: 0.40, 0.32, 0.30 → mean 0.340, sd 0.053
    assert real[:6] == ["real", "0.0001", "3", "0.200 ± 0.000", "0.267 ± 0.153", "0.347 ± 0.050"]
    assert real[6] == "**0.340 ± 0.053**"
    # response length: 10 up to step 300, 11 after; the last 20 points (steps 304..399) are all 11
    assert real[9:] == ["0.100 ± 0.000", "11.000 ± 0.000", "truncation"]
    grpo = [cell.strip() for cell in rows[3].split("|")[1:-1]]
    # last 2: 0.33 and 0.30 → mean 0.315, sd 0.03 / √2 = 0.021
    assert grpo[3] == "0.200 ± 0.000" and grpo[6] == "**0.315 ± 0.021**" and grpo[11] == "–"


def test_paired_table_pairs_by_seed(summary: Path) -> None:
    runs = report.runs_by_loss([json.loads(summary.read_text())])
    rows = report.paired_table(runs, late=2).splitlines()
    assert len(rows) == 3  # seed 2 of REAL has no GRPO partner and is left out
    cells = [cell.strip() for cell in rows[2].split("|")[1:-1]]
    # seed 0: 0.40 − 0.33 = +0.07; seed 1: 0.32 − 0.30 = +0.02
    assert cells[:4] == ["real − grpo", "2", "0.045 ± 0.035", "+0.070, +0.020"]
    assert cells[4] == "0.050 ± 0.071"  # pass@8: 0.7 − 0.6 and 0.6 − 0.6


def test_allocation_table_averages_steps_and_seeds(summary: Path) -> None:
    rows = report.allocation_table(report.runs_by_loss([json.loads(summary.read_text())])).splitlines()
    assert rows[2].split("|")[1:4] == [" real ", " 0.300 ", " – "]
    assert rows[3].split(" | ")[3] == "0.200"  # grpo's pos_zero_fraction: 0.1 and 0.3


def test_cli_prints_tables_and_writes_figures(summary: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    report.main([str(summary), "--images", str(tmp_path / "images"), "--late", "2"])
    printed = capsys.readouterr().out
    assert "| real − grpo | 2 |" in printed and "| loss | domination_mean |" in printed
    for name in ("replication_pass_at_k.png", "replication_training.png", "replication_allocation.png"):
        assert (tmp_path / "images" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_second_summary_adds_a_loss_at_another_lr(summary: Path, tmp_path: Path) -> None:
    """An lr ablation in a second summary: REAL at two lrs becomes two labelled run sets, each paired with GRPO."""
    ablation = {"main": {"real": {"lr3e-05-seed0": record([0.2, 0.3, 0.3, 0.33, 0.33], [0.5] * 5, 0.1, 0.0)}}}
    runs = report.runs_by_loss([json.loads(summary.read_text()), ablation])
    assert list(runs) == ["real lr 0.0001", "real lr 3e-05", "grpo"]
    rows = report.paired_table(runs, late=2).splitlines()[2:]
    assert [row.split(" | ")[0] for row in rows] == ["| real lr 0.0001 − grpo", "| real lr 3e-05 − grpo"]
    assert rows[1].split(" | ")[2] == "0.000"  # seed 0 only: 0.33 − 0.33
    path = tmp_path / "ablation.json"
    path.write_text(json.dumps(ablation))
    report.main([str(summary), str(path), "--images", str(tmp_path / "images")])
    assert (tmp_path / "images" / "replication_pass_at_k.png").exists()


def test_no_finished_run_is_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"lr_sweep": {}, "main": {}}))
    with pytest.raises(SystemExit, match="no finished main-stage run"):
        report.main([str(empty)])
