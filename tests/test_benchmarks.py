"""``python -m benchmarks.step_time`` runs both workloads end to end at tiny sizes (ours; TRL needs its own venv)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("workload", ["quickstart", "long"])
def test_step_time_workloads_smoke(tmp_path, workload) -> None:
    out = tmp_path / "result.json"
    command = [
        sys.executable, "-m", "benchmarks.step_time", "--workload", workload, "--smoke",
        "--steps", "3", "--skip", "1", "--runs", "1", "--sides", "ours", "--floor",
        "--trl-venv", str(tmp_path / "no-trl"), "--vllm-venv", str(tmp_path / "no-vllm"),
        "--json", str(out), "--log", str(tmp_path / "workers.log"),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO, check=False)
    assert result.returncode == 0, (
        result.stdout[-3000:] + result.stderr[-3000:] + (tmp_path / "workers.log").read_text()[-3000:]
    )
    assert "| real-lightning (HFEngine) |" in result.stdout and "floor / measured" in result.stdout
    data = json.loads(out.read_text())
    run = data["runs"]["ours"][0]
    assert run["steps"] == 3 and data["workload"] == workload
    assert all(g > 0 for g in run["per_step"]["generation"]) and all(u > 0 for u in run["per_step"]["update"])
    tokens = run["per_step"]["generated_tokens"]
    if workload == "long":  # EOS ignored: every response has exactly max_new_tokens tokens
        assert tokens == [2 * 2 * 6] * 3
    assert data["floor"]["generation"] > 0 and data["floor"]["update"] > 0


@pytest.mark.parametrize("measure", ["speed", "accuracy"])
def test_async_rollouts_benchmark_smoke(tmp_path, measure) -> None:
    """``python -m benchmarks.async_rollouts`` at tiny sizes: sync and a producer, both tables printed."""
    out = tmp_path / "result.json"
    modes = ["sync", "fixed-1"] if measure == "speed" else ["sync", "fixed-2"]
    command = [
        sys.executable, "-m", "benchmarks.async_rollouts", measure, "--smoke", "--steps", "4", "--every", "2",
        "--modes", *modes, "--target", "0.0", "--json", str(out), "--log", str(tmp_path / "workers.log"),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO, check=False)
    assert result.returncode == 0, (
        result.stdout[-3000:] + result.stderr[-3000:] + (tmp_path / "workers.log").read_text()[-3000:]
    )
    sync, producer = json.loads(out.read_text())
    assert len(sync["step_wall_s"]) == len(producer["step_wall_s"]) == 4
    assert sync["time/wait_for_rollouts_s"] == [] and len(producer["time/wait_for_rollouts_s"]) == 4
    if measure == "speed":
        assert "| fixed-1 | 1, fixed | 1+1 |" in result.stdout
        assert producer["rollout/staleness_batches_max"] == [0, 1, 1, 1]
    else:
        assert [s[0] for s in producer["saves"]] == [2, 4] and len(producer["pass@1"]) == 2
        assert all(0 <= p <= 1 for p in producer["pass@1"])
        assert "| fixed-2 | 1+1 | 0 | " in result.stdout
