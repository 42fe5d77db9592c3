"""RunHealthMonitor in real short runs: what it finds, logs and prints, ``stop_on``, and silence when healthy."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from real_lightning.callbacks import RunHealthMonitor
from real_lightning.data.config import ValidationConfig, VerifierConfig
from real_lightning.data.datamodule import RolloutDataModule
from real_lightning.data.sources import DatasetSpec
from real_lightning.module import RealPolicyModule
from real_lightning.policy.loading import BUILTIN
from real_lightning.rollout.hf import HFEngine
from real_lightning.rollout.schedule import RolloutSchedule

HEALTH_LOG = "real_lightning.callbacks.run_health"


def datamodule(max_new_tokens: int, reward: str = "math", truncated_is_wrong: bool = True) -> RolloutDataModule:
    """The built-in task, 4 prompts × 4 rollouts, one update per rollout batch."""
    return RolloutDataModule(
        train=DatasetSpec(source="builtin:arithmetic"),
        val={"held_out": DatasetSpec(source="builtin:arithmetic", split="test", limit=8)},
        engine=HFEngine(max_new_tokens=max_new_tokens),
        schedule=RolloutSchedule(prompts_per_rollout=4, rollouts_per_prompt=4),
        verifier=VerifierConfig(reward=reward, workers=1, truncated_is_wrong=truncated_is_wrong),
        validation=ValidationConfig(samples=4, prompts_per_batch=4),
        tokenizer_from=BUILTIN,  # the character tokenizer every test policy shares
    )


def trainer(root: Path, steps: int, callbacks: list) -> pl.Trainer:
    return pl.Trainer(
        max_steps=steps,
        logger=TensorBoardLogger(root, name="run", version=0),
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=callbacks,
    )


def scalars(root: Path, tag: str) -> dict[int, float]:
    events = EventAccumulator(str(root / "run" / "version_0"))
    events.Reload()
    return {e.step: e.value for e in events.Scalars(tag)}


def test_too_few_new_tokens_for_any_answer(policy_dir, tmp_path, caplog) -> None:
    """max_new_tokens 1: every response is cut, scores 0, no group has a contrast, the gradient is 0."""
    monitor = RunHealthMonitor(patience=3)
    with caplog.at_level(logging.WARNING, logger=HEALTH_LOG):
        trainer(tmp_path, 6, [monitor]).fit(RealPolicyModule(pretrained=policy_dir, lr=1e-3), datamodule(1))
    assert set(monitor.findings) == {"no_learning_signal", "truncation"}
    signal = monitor.findings["no_learning_signal"]
    assert (signal.first_step, signal.reported_step, signal.last_step) == (1, 3, 6)
    assert "every reward is 0.000" in signal.message and "hit the length limit" in signal.message
    assert monitor.findings["truncation"].value >= 0.9
    said = [r.getMessage() for r in caplog.records if r.name == HEALTH_LOG]
    assert sum("Run health — no learning signal (steps 1–3)" in s for s in said) == 1  # once
    assert sum("Run health — responses hit the length limit" in s for s in said) == 1
    assert said[-1].startswith("Run health: 2 finding(s) in 6 steps")  # the summary at the end of fit
    assert "no_learning_signal  steps 1–6 (6 steps)" in said[-1]
    logged = scalars(tmp_path, "health/no_learning_signal")
    assert logged == {0: 0.0, 1: 0.0, 2: 1.0, 3: 1.0, 4: 1.0, 5: 1.0}  # steps 1–6 at Lightning's steps, as train/*
    assert scalars(tmp_path, "health/no_learning_signal_value")[5] == 0.0
    assert sorted(scalars(tmp_path, "train/contrast_fraction")) == sorted(logged)
    assert set(scalars(tmp_path, "health/entropy_collapse").values()) == {0.0}
    report = json.loads((tmp_path / "run" / "version_0" / "health.json").read_text())
    assert report["steps"] == 6 and {f["name"] for f in report["findings"]} == set(monitor.findings)


def test_a_reward_that_is_always_one(policy_dir, tmp_path) -> None:
    monitor = RunHealthMonitor(patience=3)
    data = datamodule(4, reward="tests.rewards_for_tests:always_one", truncated_is_wrong=False)
    trainer(tmp_path, 4, [monitor]).fit(RealPolicyModule(pretrained=policy_dir, lr=1e-3), data)
    assert "no_learning_signal" in monitor.findings
    assert "every reward is 1.000: the task is too easy" in monitor.findings["no_learning_signal"].message


def test_silent_on_the_shipped_policy_learning_the_quickstart_task(tmp_path) -> None:
    monitor = RunHealthMonitor(patience=3, entropy_baseline_steps=3)
    data = RolloutDataModule(
        train=DatasetSpec(source="builtin:arithmetic"),
        val={"held_out": DatasetSpec(source="builtin:arithmetic", split="test", limit=8)},
        engine=HFEngine(max_new_tokens=12),
        schedule=RolloutSchedule(prompts_per_rollout=8, rollouts_per_prompt=8),
        verifier=VerifierConfig(workers=1),
        validation=ValidationConfig(samples=4, prompts_per_batch=8),
        tokenizer_from=BUILTIN,
    )
    trainer(tmp_path, 12, [monitor]).fit(RealPolicyModule(pretrained=BUILTIN, lr=3e-4), data)
    assert monitor.findings == {} and monitor.last_step == 12
    assert set(scalars(tmp_path, "health/no_learning_signal").values()) == {0.0}
    assert 0.3 < monitor.values["no_learning_signal"] <= 1.0  # it did watch: groups had contrast


def _parameters(module: RealPolicyModule) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.policy.parameters()])


def test_stop_on_ends_the_run_with_a_checkpoint_that_resumes_exactly(policy_dir, tmp_path, caplog) -> None:
    """A random policy's 6-token responses are all cut (truncation) while the reward still has contrast, so the
    policy learns: the run stopped at the finding and resumed equals the run that never stopped."""
    reward = "tests.rewards_for_tests:contains_seven"

    def run(root: Path, steps: int, stop_on: list[str], ckpt_path: str | None = None) -> tuple:
        torch.manual_seed(0)
        module = RealPolicyModule(pretrained=policy_dir, lr=1e-2)
        checkpoint = ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=100, save_last=True)
        monitor = RunHealthMonitor(patience=3, stop_on=stop_on)
        fit = trainer(root, steps, [monitor, checkpoint])
        fit.fit(module, datamodule(6, reward=reward, truncated_is_wrong=False), ckpt_path=ckpt_path)
        return fit, module, monitor

    with caplog.at_level(logging.WARNING, logger=HEALTH_LOG):
        stopped, _, monitor = run(tmp_path / "stopped", 10, ["truncation"])
    finding = monitor.findings["truncation"]
    stop = stopped.global_step
    assert stop == finding.reported_step == finding.first_step + 2 < 10  # patience 3
    last = tmp_path / "stopped" / "ckpt" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == stop
    assert any(f"stopping at step {stop} (truncation is in stop_on); checkpoint written to {last}" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    resumed, resumed_module, resumed_monitor = run(tmp_path / "stopped", 10, ["truncation"], ckpt_path=str(last))
    assert resumed.global_step == 10  # the finding is already known: the resumed run does not stop again
    assert resumed_monitor.findings["truncation"].last_step == 10
    whole, whole_module, whole_monitor = run(tmp_path / "whole", 10, [])
    assert whole.global_step == 10
    resumed_state, whole_state = resumed_monitor.state_dict(), whole_monitor.state_dict()
    for state in (resumed_state, whole_state):  # a wall-clock rate: the one value that differs between runs
        assert state["rollout"].pop("rollout/tokens_per_s") > 0
    assert resumed_state == whole_state  # the monitor resumed exactly, too
    assert not torch.equal(_parameters(whole_module), _parameters(RealPolicyModule(pretrained=policy_dir)))
    torch.testing.assert_close(_parameters(resumed_module), _parameters(whole_module), rtol=0, atol=0)


@pytest.mark.parametrize("option", ["patience", "entropy_baseline_steps"])
def test_bad_options_name_themselves(option) -> None:
    with pytest.raises(ValueError, match=f"RunHealthMonitor: {option} must be >= 1"):
        RunHealthMonitor(**{option: 0})
