"""The paper's evaluation: tables laid out like its Table 1, and configs/paper/eval.yaml end to end on CPU."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from real_lightning.analysis.evaluation import BenchmarkResult, average, csv_table, markdown_table, write_tables
from real_lightning.cli import RealLightningCLI
from real_lightning.data.datamodule import RolloutDataModule
from real_lightning.module import RealPolicyModule
from tests.test_docs import PAPER_CPU_EVAL, documented_command

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = ["aime24", "aime25", "math500", "amc23", "minerva", "olympiad_bench"]


def _result(name: str, p1: float, p4: float, length: float = 10.0, truncated: float = 0.0, prompts: int = 2):
    return BenchmarkResult(name, prompts=prompts, samples=4, pass_at={1: p1, 4: p4}, length=length, truncated=truncated)


def test_average_is_unweighted_over_benchmarks() -> None:
    """The paper's "Avg." is the mean of the benchmarks' scores, not of their problems."""
    small, large = _result("aime24", 0.1, 0.3, prompts=30), _result("math500", 0.9, 1.0, length=30.0, prompts=500)
    mean = average([small, large])
    assert mean.pass_at == pytest.approx({1: 0.5, 4: 0.65}) and mean.length == 20.0 and mean.prompts == 530


def test_tables_in_markdown_and_csv(tmp_path) -> None:
    results = [_result("aime24", 0.125, 0.5, truncated=0.25), _result("math500", 0.75, 1.0)]
    lines = markdown_table(results, "my model").splitlines()
    assert lines[0] == "| model | aime24 | math500 | avg. |"
    assert lines[2] == "| my model | 12.5 | 75.0 | 43.8 |"  # avg@n in percent, one decimal, as in the paper
    assert "| aime24 | 2 | 4 | 12.50 | 50.00 | 10.0 | 25.00% |" in lines
    rows = list(csv.DictReader(csv_table(results).splitlines()))
    assert [r["benchmark"] for r in rows] == ["aime24", "math500", "average"]
    assert float(rows[2]["pass@1"]) == pytest.approx(0.4375) and float(rows[0]["truncation_rate"]) == 0.25
    path = write_tables(results, tmp_path / "evaluation", step=7, label="x")
    assert path.name == "step_7.md" and (tmp_path / "evaluation" / "latest.csv").read_text() == csv_table(results)


def test_paper_eval_config_runs_on_the_tiny_policy_from_another_directory_as_documented(tmp_path, monkeypatch) -> None:
    """docs/guides/paper.md's CPU run of configs/paper/eval.yaml (the shipped tiny policy, HF engine, 2 problems of
    each benchmark, 4 samples), as written there, started outside the repository: the six benchmarks shipped in the
    package load, are sampled and graded; the table has all six and their average."""
    args = [str(REPO / a) if a.startswith("configs/") else a for a in documented_command(PAPER_CPU_EVAL)]
    monkeypatch.chdir(tmp_path)  # nothing is read relative to the repository
    args += ["--trainer.enable_progress_bar", "false", "--data.verifier.workers", "1"]
    cli = RealLightningCLI(RealPolicyModule, RolloutDataModule, save_config_kwargs={"overwrite": True}, args=args)
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    table = next(tmp_path.rglob("evaluation/latest.md")).read_text().splitlines()
    assert table[0] == "| model | " + " | ".join(BENCHMARKS) + " | avg. |"
    assert table[2].startswith("| builtin:tiny (step 0) |")
    rows = {r["benchmark"]: r for r in csv.DictReader(next(tmp_path.rglob("evaluation/latest.csv")).open())}
    assert list(rows) == [*BENCHMARKS, "average"]
    for name in BENCHMARKS:
        assert int(rows[name]["prompts"]) == 2 and int(rows[name]["samples"]) == 4
        assert float(rows[name]["pass@1"]) == pytest.approx(metrics[f"val/{name}/pass@1"])
    assert metrics["val/average/pass@1"] == pytest.approx(sum(metrics[f"val/{n}/pass@1"] for n in BENCHMARKS) / 6)
    assert (tmp_path / "runs" / "eval").is_dir()
    hparams = (next(tmp_path.rglob("hparams.yaml"))).read_text()
    assert "grader: strict_boxed" in hparams and os.path.exists(next(tmp_path.rglob("config.yaml")))
