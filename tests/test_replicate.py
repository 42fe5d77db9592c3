"""experiments/replicate.py: the paper's loss settings, the lr choice, a killed sweep that continues exactly,
and the summary the report and the notebook read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from experiments import replicate

REPO = Path(__file__).resolve().parents[1]

# a tiny version of the regime: 4 prompts × 4 rollouts, 2 mini-batches per rollout batch, 8 held-out prompts
SMALL = [
    "--data.schedule.prompts_per_rollout", "4",
    "--data.schedule.rollouts_per_prompt", "4",
    "--data.schedule.prompts_per_minibatch", "2",
    "--data.engine.init_args.max_new_tokens", "12",
    "--data.val.held_out.limit", "8",
    "--data.validation.prompts_per_batch", "8",
    "--data.validation.samples", "4",
    "--pass_at_k.ks", "[1, 4]",
    "--trainer.val_check_interval", "30",
]  # fmt: skip


def sweep(out: Path, *args: str, extra: list[str] = (), check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "experiments.replicate", "--out", str(out), "--policy", "builtin:tiny"]
    command += ["--digits", "2", *args, "--", *SMALL, *extra]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_loss_settings_are_the_paper_recipes() -> None:
    assert replicate.loss_arguments("real") == ["--model.loss", "real", "--model.loss_kwargs", '{"tau": 0.5}']
    grpo = replicate.loss_arguments("grpo")
    assert grpo[:4] == ["--model.loss", "grpo", "--model.loss_kwargs", '{"clip_low": 0.2, "clip_high": 0.2}']
    assert grpo[4:] == ["--model.kl_coef", "0.001", "--model.kl_estimator", "k3", "--model.kl_clamp", "10.0"]
    assert json.loads(replicate.loss_arguments("dapo")[3]) == {"clip_low": 0.2, "clip_high": 0.28}
    assert json.loads(replicate.loss_arguments("gspo")[3])["log_ratio_clamp"] == 10.0
    config = yaml.safe_load((REPO / "configs" / "replication.yaml").read_text())
    assert config["data"]["schedule"]["prompts_per_rollout"] == 4 * config["data"]["schedule"]["prompts_per_minibatch"]


def test_the_lr_with_the_best_late_training_reward_is_chosen(tmp_path) -> None:
    rewards = {("real", 1e-4): 0.5, ("real", 3e-4): 0.7, ("grpo", 1e-4): 0.6, ("grpo", 3e-4): 0.6}
    for (loss, lr), reward in rewards.items():
        folder = replicate.Run("lr", loss, lr, 0, 10).folder(tmp_path)
        folder.mkdir(parents=True)
        (folder / "done.json").write_text(json.dumps({"steps": 10, "final_reward": reward}))
    assert replicate.choose_lrs(tmp_path, ["real", "grpo"], [1e-4, 3e-4], 10) == {"real": 3e-4, "grpo": 1e-4}
    record = {"final_reward": 0.5, "curves": {"val/held_out/pass@1": [[0, 0.25], [199, 0.5]]}, "health": []}
    table = replicate.lr_sweep_table(
        {"real": {"lr3e-05-seed0": record, "lr0.0001-seed0": {**record, "final_reward": 0.6}}}
    )
    assert table.splitlines()[2:] == [
        "| real | 3e-05 | 0.500 | 0.250 → 0.500 | – |",
        "| real | 0.0001 | **0.600** | 0.250 → 0.500 | – |",
    ]
    with pytest.raises(SystemExit, match=r"has not finished real lr 0\.001 seed 0"):
        replicate.choose_lrs(tmp_path, ["real"], [1e-3], 10)


def test_a_killed_sweep_continues_exactly_and_summarizes(tmp_path) -> None:
    """The first main run is SIGKILLed at step 55 (after its checkpoint at 50); the sweep started again continues
    it from there and runs the rest. Its curves equal those of a sweep that was never stopped (the killed loss's:
    the other loss's main run starts after the kill and is never stopped)."""
    common = ["--seeds", "0", "--lrs", "1e-3", "--lr-steps", "2", "--steps", "60"]
    kill = ["--trainer.callbacks+=tests.pipeline.callbacks_for_tests.KillAtStep", "--trainer.callbacks.step=55"]
    killed = sweep(
        tmp_path / "a", "--stages", "lr", "main", "--losses", "real", "grpo", *common, extra=kill, check=False
    )
    assert killed.returncode != 0 and "real-lightning fit exited with -9" in killed.stdout + killed.stderr
    assert "[2/2] lr grpo lr 0.001 seed 0: 2 steps" in killed.stdout
    assert "main-stage lr per loss: real 0.001, grpo 0.001" in killed.stdout
    again = sweep(tmp_path / "a", "--stages", "lr", "main", "--losses", "real", "grpo", *common)
    assert "[2/2] lr grpo lr 0.001 seed 0: done (2 steps)" in again.stdout
    assert "[1/2] main real lr 0.001 seed 0: continuing from its last checkpoint" in again.stdout
    assert "[2/2] main grpo lr 0.001 seed 0: 60 steps" in again.stdout
    straight = sweep(tmp_path / "b", "--stages", "main", "--lr", "1e-3", "--losses", "real", *common)
    assert "continuing" not in straight.stdout
    resumed_runs = list((tmp_path / "a" / "main" / "real").glob("*"))
    assert len(resumed_runs) == 1, resumed_runs
    for folder in resumed_runs:
        resumed = json.loads((folder / "done.json").read_text())["curves"]
        expected = json.loads((tmp_path / "b" / folder.relative_to(tmp_path / "a") / "done.json").read_text())
        assert resumed == expected["curves"], folder
        assert [s for s, _ in resumed["train/entropy"]] == list(range(4, 60, 5))  # no step twice or missing
        assert [s for s, _ in resumed["val/held_out/pass@1"]] == [0, 29, 59]  # before fit, every 30 steps
    summary = tmp_path / "summary.json"
    subprocess.run(
        [sys.executable, "-m", "experiments.replicate", "--out", str(tmp_path / "a"), "--seeds", "0",
         "--summary", str(summary)], check=True, cwd=REPO,
    )  # fmt: skip
    data = json.loads(summary.read_text())
    assert set(data["lr_sweep"]) == set(data["main"]) == {"real", "grpo"}
    assert len(data["lr_sweep"]["real"]) == len(data["main"]["grpo"]) == 1
    weights = data["weights"]["real"]
    assert 2 <= len(set(weights["step"])) <= 6 and len(weights["weight"]) == len(weights["score"]) > 0
    for step in set(weights["step"]):  # only off-policy steps: some score is not 0
        assert any(sc != 0 for st, sc in zip(weights["step"], weights["score"], strict=True) if st == step)


def test_weight_samples_spread_over_the_off_policy_steps(tmp_path) -> None:
    """Records of steps 5..60; steps 5, 15, 25, ... are on-policy (every score 0) and never sampled."""
    import pandas as pd

    records = tmp_path / "main" / "real" / "lr0.0001-seed0" / "tb" / "version_0" / "gradient_weights"
    records.mkdir(parents=True)
    for step in range(5, 61, 5):
        score = 0.0 if step % 10 == 5 else step / 1000
        table = {"step": [step] * 2, "group": [0, 0], "label": [1, 0], "score": [score, -score], "weight": [-1.0, 1.0]}
        pd.DataFrame(table).to_parquet(records / f"step_{step:07d}.parquet")
    samples = replicate.sample_weights(tmp_path, seed=0, picks=3)
    assert sorted(set(samples["real"]["step"])) == [10, 30, 60]  # first, middle and last of 10, 20, ..., 60
    assert samples["real"]["score"][:2] == [0.01, -0.01] and samples["real"]["group"][:2] == [0, 0]
    assert replicate.sample_weights(tmp_path, seed=1) == {}


def test_summary_floats_keep_six_significant_digits() -> None:
    value = {"a": [[4, 0.123456789], [5, 1.0]], "b": 12345.678901, "c": "text"}
    assert replicate.rounded(value) == {"a": [[4, 0.123457], [5, 1.0]], "b": 12345.7, "c": "text"}
