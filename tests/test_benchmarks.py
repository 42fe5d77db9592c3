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
