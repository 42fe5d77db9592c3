"""Exact resume: a run SIGKILLed mid rollout batch and resumed with ``--ckpt_path last`` is bit-identical
to the run that was never stopped (losses, rewards, weights, final parameters) and logs into the same folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.pipeline.launch import REPO, run_cli

MAX_STEPS, KILL_AT = 8, 6  # 4 optimizer steps per rollout batch: the kill lands inside the second one


def _overlay(root: Path, kill: str | None) -> Path:
    callbacks = [
        {
            "class_path": "tests.pipeline.callbacks_for_tests.StepRecorder",
            "init_args": {"path": str(root / "steps.jsonl")},
        }
    ]
    if kill == "sigkill":  # after step KILL_AT, before its checkpoint
        callbacks.append(
            {"class_path": "tests.pipeline.callbacks_for_tests.KillAtStep", "init_args": {"step": KILL_AT}}
        )
    elif kill == "sigterm":  # during step KILL_AT
        callbacks.append(
            {"class_path": "tests.pipeline.callbacks_for_tests.SignalAtStep", "init_args": {"step": KILL_AT}}
        )
    elif kill == "sigterm-validation":  # during the first batch of the validation after step KILL_AT
        callbacks.append(
            {"class_path": "tests.pipeline.callbacks_for_tests.SignalInValidation", "init_args": {"step": KILL_AT}}
        )
    callbacks.append(
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"every_n_train_steps": 1, "save_last": True},
        }
    )
    path = root / (f"overlay_{kill}.yaml" if kill else "overlay.yaml")
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    return path


def _fit(
    policy_dir: str,
    root: Path,
    *,
    kill: str | None = None,
    resume: bool = False,
    dynamic: bool = False,
    validate: bool = False,
    stale: bool = False,
    lora: bool = False,
) -> tuple[int, str]:
    args = [
        "fit",
        "-c", str(REPO / "configs" / "quickstart.yaml"),
        "-c", str(_overlay(root, kill)),
        "--model.pretrained", policy_dir,
        "--model.lr", "0.01",
        "--model.export_dir", str(root / "hf"),
        "--validate_before_fit", "false",
        "--trainer.max_steps", str(MAX_STEPS),
        "--trainer.limit_val_batches", "0",
        "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(root),
        "--trainer.logger.init_args.save_dir", str(root),
        "--data.schedule.prompts_per_rollout", "4",
        "--data.schedule.rollouts_per_prompt", "4",
        "--data.schedule.prompts_per_minibatch", "2",
        "--data.schedule.ppo_epochs", "2",
        "--data.schedule.max_sequences_per_micro_batch", "4",
        "--data.engine.init_args.max_new_tokens", "6",
        "--data.verifier.reward", "tests.rewards_for_tests:first_char_even",
        "--data.verifier.truncated_is_wrong", "false",
        "--data.val.held_out.limit", "4",
    ]  # fmt: skip
    if dynamic:
        args += ["--data.schedule.dynamic_sampling", "true", "--data.schedule.max_sampling_rounds", "2"]
    if stale:  # a rollout producer process, S = 2 (fixed), one optimizer step per rollout batch: 8 batches
        args += ["--data.schedule.max_staleness", "2", "--data.schedule.prompts_per_minibatch", "4"]
        args += ["--data.schedule.ppo_epochs", "1", "--model.importance_sampling", "token"]
    if lora:  # adapters only in the optimizer and the checkpoints, π_ref = the policy with its adapters off
        args += ["-c", str(REPO / "configs" / "lora.yaml"), "--model.kl_coef", "0.05"]
    if validate:  # every 2 steps, 2 batches of 2 held-out prompts
        args += ["--trainer.limit_val_batches", "2", "--trainer.val_check_interval", "2"]
        args += ["--data.validation.prompts_per_batch", "2"]
    if resume:
        args += ["--ckpt_path", "last"]
    # forked from the test zygote (the imports done once), one torch thread on both sides of each comparison
    code, output = run_cli(args, root / f"fit_{'resumed' if resume else kill or 'straight'}.log")
    if code not in (0, -9, 143):
        raise AssertionError(f"fit failed ({code}):\n{output[-4000:]}")
    return code, output


def _records(root: Path) -> dict[int, dict]:
    lines = (root / "steps.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines)}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("dynamic", "stop", "stale", "lora"),
    [
        (False, "sigkill", False, False),
        (True, "sigkill", False, False),
        (False, "sigterm", False, False),
        (False, "sigterm-validation", False, False),
        (False, "sigkill", True, False),
        (False, "sigkill", False, True),
    ],
    ids=["plain", "dynamic-sampling", "sigterm", "sigterm-in-validation", "async-staleness-2", "lora-kl"],
)
def test_stop_then_resume_is_bit_identical(policy_dir, tmp_path, dynamic, stop, stale, lora) -> None:
    """SIGKILL after step KILL_AT (the checkpoint of step KILL_AT − 1 is the last), SIGTERM during step KILL_AT
    (the run finishes the step, writes last.ckpt at KILL_AT, exits 143 and says how to resume), or SIGTERM during
    the validation after step KILL_AT (abandoned after its first batch; the same checkpoint)."""
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    straight.mkdir(), broken.mkdir()
    validate = stop == "sigterm-validation"
    options = {"dynamic": dynamic, "validate": validate, "stale": stale, "lora": lora}
    assert _fit(policy_dir, straight, **options)[0] == 0
    code, output = _fit(policy_dir, broken, kill=stop, **options)
    assert code == {"sigkill": -9, "sigterm": 143, "sigterm-validation": 143}[stop], output[-3000:]
    before_kill = _records(broken)
    assert max(before_kill) == KILL_AT and not (broken / "hf").exists()
    if stop.startswith("sigterm"):
        assert f"Stopped by SIGTERM after step {KILL_AT}" in output and "--ckpt_path last" in output, output[-3000:]
    (broken / "steps.jsonl").rename(broken / "steps_killed.jsonl")
    assert _fit(policy_dir, broken, resume=True, **options)[0] == 0
    first_resumed = KILL_AT if stop == "sigkill" else KILL_AT + 1  # the step after the last checkpoint

    expected, resumed = _records(straight), _records(broken)
    assert sorted(expected) == list(range(1, MAX_STEPS + 1))
    assert sorted(resumed) == list(range(first_resumed, MAX_STEPS + 1))
    assert resumed[first_resumed]["request"][0] == first_resumed - 1  # mid rollout batch 1 (steps 5-8), or batch 5
    for step in range(1, KILL_AT + 1):
        assert before_kill[step] == expected[step], f"step {step} before the kill"
    for step in range(first_resumed, MAX_STEPS + 1):
        assert resumed[step] == expected[step], f"step {step} after the resume"
    assert any(r["weights"] and any(w != "0x0.0p+0" for w in r["weights"]) for r in expected.values())

    final, final_resumed = (
        load_file(straight / "hf" / "model.safetensors"),
        load_file(broken / "hf" / "model.safetensors"),
    )
    assert final.keys() == final_resumed.keys()
    assert all((final[k] == final_resumed[k]).all() for k in final)

    # one log folder, each step's scalars once
    versions = sorted(p.name for p in (broken / "quickstart").iterdir())
    assert versions == ["version_0"]
    events = EventAccumulator(str(broken / "quickstart" / "version_0"))
    events.Reload()
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == sorted(set(steps)) and len(steps) == MAX_STEPS
    if stop == "sigterm-validation":  # the abandoned validation (after step KILL_AT) logged nothing, nor ran again
        # (Lightning logs a validation inside fit at the count of steps before the one that triggered it)
        assert [e.step for e in events.Scalars("val/held_out/pass@1")] == [1, 3, 7]
        straight_events = EventAccumulator(str(straight / "quickstart" / "version_0"))
        straight_events.Reload()
        assert [e.step for e in straight_events.Scalars("val/held_out/pass@1")] == [1, 3, 5, 7]
