"""The ``real-lightning`` CLI: every shipped config parses; fit → checkpoint/export → validate round trips."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from real_lightning.cli import RealLightningCLI, main
from real_lightning.data.datamodule import RolloutDataModule
from real_lightning.module import RealPolicyModule

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ALL_CONFIGS = sorted(CONFIGS.rglob("*.yaml"))
OVERLAYS = {
    "vllm.yaml",
    "vllm_server.yaml",
    "fsdp.yaml",
    "async.yaml",
    "lora.yaml",
}  # for any config: parsed on the quickstart


PAPER = CONFIGS / "paper" / "real_r1_distill_qwen_1.5b.yaml"
PAPER_OVERLAYS = {"grpo.yaml", "dapo.yaml", "gspo.yaml", "real_bce.yaml", "r1_distill_qwen_7b.yaml"}


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_parses(config: Path, capsys) -> None:
    overlay = "baselines" in config.parts or config.name in OVERLAYS
    stack = ["-c", str(CONFIGS / "quickstart.yaml")] if overlay else []
    if "paper" in config.parts and config.name in PAPER_OVERLAYS:
        stack = ["-c", str(PAPER)]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *stack, "-c", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "model:" in printed and "data:" in printed


@pytest.mark.parametrize(
    ("overlay", "expected"),
    [
        ("grpo.yaml", {"loss": "grpo", "kl_coef": 0.001, "kl_estimator": "k3", "kl_clamp": 10.0}),
        ("gspo.yaml", {"loss": "gspo", "loss_kwargs": {"clip_low": 3e-4, "clip_high": 4e-4, "log_ratio_clamp": 10.0}}),
        ("dapo.yaml", {"loss": "dapo", "loss_kwargs": {"clip_low": 0.2, "clip_high": 0.28}}),
        ("real_bce.yaml", {"loss": "real_bce", "loss_kwargs": {"tau": 0.5}}),
        ("r1_distill_qwen_7b.yaml", {"loss": "real", "pretrained": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"}),
    ],
)
def test_paper_recipes_change_only_what_they_state(overlay: str, expected: dict, capsys) -> None:
    """Each paper overlay on the REAL recipe: its loss settings, the recipe's data and optimizer otherwise."""
    import yaml

    with pytest.raises(SystemExit):
        main(["fit", "-c", str(PAPER), "-c", str(CONFIGS / "paper" / overlay), "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    assert {k: config["model"][k] for k in expected} == expected
    assert config["model"]["lr"] == 2e-6 and config["model"]["weight_decay"] == 0.01
    assert config["data"]["verifier"]["grader"] == "strict_boxed"
    assert config["data"]["schedule"]["prompts_per_rollout"] == 128
    assert config["data"]["schedule"]["dynamic_sampling"] is False
    assert config["trainer"]["strategy"]["class_path"] == "real_lightning.fsdp.FSDP2Strategy"


def test_missing_required_value_is_named(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--model.pretrained", "x"])
    assert "data.train" in capsys.readouterr().err


def _run(args: list[str]) -> RealLightningCLI:
    return RealLightningCLI(RealPolicyModule, RolloutDataModule, save_config_kwargs={"overwrite": True}, args=args)


def _tiny_job(policy_dir: str, root: Path) -> list[str]:
    return [
        "-c",
        str(CONFIGS / "quickstart.yaml"),
        "--model.pretrained",
        policy_dir,
        "--model.export_dir",
        str(root / "hf"),
        "--trainer.max_steps",
        "4",
        "--trainer.val_check_interval",
        "2",
        "--trainer.default_root_dir",
        str(root),
        "--trainer.logger.init_args.save_dir",
        str(root),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.log_every_n_steps",
        "1",
        "--data.val.held_out.limit",
        "8",
        "--data.validation.prompts_per_batch",
        "4",
        "--data.schedule.prompts_per_rollout",
        "4",
        "--data.schedule.rollouts_per_prompt",
        "4",
        "--data.engine.init_args.max_new_tokens",
        "6",
        "--data.verifier.reward",
        "tests.rewards_for_tests:contains_seven",
        "--data.verifier.truncated_is_wrong",
        "false",
        "--pass_at_k.ks",
        "[1, 4]",
        "--data.validation.samples",
        "4",
    ]


@pytest.mark.slow
def test_fit_logs_to_tensorboard_then_validate_checkpoint_and_export(policy_dir, tmp_path, capsys) -> None:
    fit = _run(["fit", *_tiny_job(policy_dir, tmp_path)])
    assert fit.trainer.global_step == 4
    history = next(cb for cb in fit.trainer.callbacks if type(cb).__name__ == "PassAtKLogger").history["held_out"]
    assert [step for step, _ in history] == [0, 2, 4]  # before fit, then every 2 steps

    events = EventAccumulator(str(next(tmp_path.rglob("events.out.tfevents.*")).parent))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in (
        "val/held_out/pass@1",
        "val/held_out/pass@4",
        "train/loss",
        "rollout/reward_mean",
        "rollout/contrast_fraction",
        "rollout/response_length_mean",
        "rollout/response_length_max",
        "rollout/truncation_rate",
        "train/entropy",
        "train/ppo_kl",
        "train/grad_norm",
        "train/lr",
        "time/rollout_s",
        "time/update_s",
        "rollout/tokens_per_s",
    ):
        assert tag in tags, tag
    assert len(events.Scalars("val/held_out/pass@1")) == 3

    last_in_fit = history[-1][1]
    checkpoint = next(tmp_path.rglob("*.ckpt"))
    validate = _run(["validate", *_tiny_job(policy_dir, tmp_path / "v1"), "--ckpt_path", str(checkpoint)])
    from_ckpt = validate.trainer.callback_metrics["val/held_out/pass@1"].item()
    assert from_ckpt == pytest.approx(last_in_fit, abs=1e-12)

    hf_dir = tmp_path / "hf"
    assert (hf_dir / "tokenizer.json").is_file() and (hf_dir / "config.json").is_file()
    from safetensors.torch import load_file

    from real_lightning.policy.export import export_checkpoint

    on_demand = export_checkpoint(checkpoint, tmp_path / "hf-on-demand")
    at_fit_end, exported_now = load_file(hf_dir / "model.safetensors"), load_file(on_demand / "model.safetensors")
    assert at_fit_end.keys() == exported_now.keys()
    assert all(torch.equal(at_fit_end[k], exported_now[k]) for k in at_fit_end)
    exported = _run(["validate", *_tiny_job(str(hf_dir), tmp_path / "v2")])
    assert exported.trainer.callback_metrics["val/held_out/pass@1"].item() == pytest.approx(last_in_fit, abs=1e-12)


def test_checkpointing_off_drops_the_configs_model_checkpoint(caplog) -> None:
    """``--trainer.enable_checkpointing false`` with the quickstart config (which lists a ModelCheckpoint): the
    trainer is built without one, and says so (Lightning alone refuses: "found ModelCheckpoint in callbacks")."""
    with caplog.at_level(logging.INFO):
        cli = RealLightningCLI(
            RealPolicyModule,
            RolloutDataModule,
            run=False,
            args=["-c", str(CONFIGS / "quickstart.yaml"), "--trainer.enable_checkpointing", "false"],
        )
    assert cli.trainer.checkpoint_callback is None
    assert not any(type(c).__name__ == "ModelCheckpoint" for c in cli.trainer.callbacks)
    assert any(type(c).__name__ == "GradientWeightMonitor" for c in cli.trainer.callbacks)  # the others stay
    assert "ModelCheckpoint callbacks are left out" in caplog.text
