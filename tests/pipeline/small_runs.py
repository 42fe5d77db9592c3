"""The small ``real-lightning fit`` runs the multi-process tests launch: the quickstart config shrunk to 4 steps
of 4 prompts × 4 rollouts, with a step recorder (``tests.pipeline.callbacks_for_tests.StepRecorder``)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.pipeline.launch import REPO

SCRIPTED = {"class_path": "tests.pipeline.scripted_engine.ScriptedEngine", "init_args": {"max_new_tokens": 6}}


def overlay(root: Path, extra_callbacks: list[dict]) -> Path:
    """A config file adding the step recorder (writing ``root/steps.jsonl``) and ``extra_callbacks``."""
    recorder = {
        "class_path": "tests.pipeline.callbacks_for_tests.StepRecorder",
        "init_args": {"path": str(root / "steps.jsonl")},
    }
    path = root / "overlay.yaml"
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": [recorder, *extra_callbacks]}}))
    return path


def fit_args(
    policy_dir: str, root: Path, world_size: int, *, loss: str, extra_callbacks: list[dict] = (), fsdp: bool = False
) -> list[str]:
    """``real-lightning`` arguments of a 4-step fit in ``root`` on ``world_size`` CPU ranks (DDP, or FSDP2
    through ``configs/fsdp.yaml``), validating 9 held-out prompts before and after; append more to override."""
    root.mkdir(parents=True, exist_ok=True)
    args = [
        "fit",
        "-c", str(REPO / "configs" / "quickstart.yaml"),
        "-c", str(overlay(root, list(extra_callbacks))),
        "--model.pretrained", policy_dir,
        "--model.loss", loss,
        "--model.loss_kwargs", "{}",
        "--model.lr", "0.01",
        "--model.export_dir", str(root / "hf"),
        "--trainer.max_steps", "4",
        "--trainer.val_check_interval", "4",
        "--trainer.log_every_n_steps", "1",
        "--trainer.enable_checkpointing", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(root),
        "--trainer.logger.init_args.save_dir", str(root),
        "--trainer.accelerator", "cpu",
        "--trainer.devices", str(world_size),
        "--data.schedule.prompts_per_rollout", "4",
        "--data.schedule.rollouts_per_prompt", "4",
        "--data.schedule.ppo_epochs", "2",
        "--data.schedule.max_sequences_per_micro_batch", "4",
        "--data.verifier.reward", "tests.rewards_for_tests:first_char_even",
        "--data.verifier.truncated_is_wrong", "false",
        "--data.val.held_out.limit", "9",
        "--data.validation.prompts_per_batch", "4",
        "--data.validation.samples", "4",
        "--pass_at_k.ks", "[1]",
    ]  # fmt: skip
    if fsdp:
        args[3:3] = ["-c", str(REPO / "configs" / "fsdp.yaml")]
    elif world_size > 1:
        args += ["--trainer.strategy", "ddp"]
    return args


def step_records(path: Path) -> dict[int, dict]:
    """The step recorder's lines by optimizer step."""
    return {r["step"]: r for r in map(json.loads, path.read_text().splitlines())}
