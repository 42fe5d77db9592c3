"""A resume that tells the truth: ``last`` and a path resume the same way, changed options are listed and
applied (the optimizer really uses a new lr) or refused (the loss, the data), earlier log rows stay, and
``--ckpt_path last`` with nothing to resume says so."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import pytest
import yaml

from real_lightning.checkpoints.resume import (
    NothingToResume,
    OptionChange,
    ResumeRefused,
    check_changes,
    flatten_options,
    option_changes,
)
from real_lightning.cli import main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def _overlay(root: Path) -> Path:
    """A pinned-version CSV logger and a checkpoint after every step (``last.ckpt`` too)."""
    path = root / "overlay.yaml"
    overlay = {
        "trainer": {
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(root), "name": "job", "version": "pinned"},
            },
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"every_n_train_steps": 1, "save_last": True},
                }
            ],
        }
    }
    path.write_text(yaml.safe_dump(overlay))
    return path


def _args(root: Path, *extra: str, before: tuple[str, ...] = ()) -> list[str]:
    """A fit of the shipped tiny policy, 4 prompts × 4 rollouts of 6 tokens a step, no validation."""
    return [
        "fit",
        "-c", str(CONFIGS / "quickstart.yaml"),
        *before,
        "-c", str(_overlay(root)),
        "--model.pretrained", "builtin:tiny",
        "--model.lr", "0.01",
        "--model.export_dir", "null",
        "--validate_before_fit", "false",
        "--trainer.max_steps", "2",
        "--trainer.limit_val_batches", "0",
        "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(root),
        "--data.schedule.prompts_per_rollout", "4",
        "--data.schedule.rollouts_per_prompt", "4",
        "--data.engine.init_args.max_new_tokens", "6",
        "--data.verifier.reward", "tests.rewards_for_tests:first_char_even",
        "--data.verifier.truncated_is_wrong", "false",
        "--pass_at_k.ks", "[1]",
        *extra,
    ]  # fmt: skip


def _rows(root: Path) -> list[dict[str, str]]:
    with (root / "job" / "pinned" / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def _lrs(root: Path) -> dict[int, float]:
    """``train/lr`` by step (logged as float32: rounded to 7 digits)."""
    return {int(r["step"]): round(float(r["train/lr"]), 7) for r in _rows(root) if r.get("train/lr")}


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory) -> Path:
    """A run stopped after 2 steps with lr 0.01: ``job/pinned/checkpoints/last.ckpt`` and its metrics.csv."""
    root = tmp_path_factory.mktemp("run")
    main(_args(root))
    assert (root / "job" / "pinned" / "checkpoints" / "last.ckpt").is_file()
    assert _lrs(root) == {0: 0.01, 1: 0.01}
    return root


@pytest.fixture
def run(two_steps, tmp_path) -> Path:
    """A copy of the 2-step run to resume (at the same path the configuration names)."""
    root = tmp_path / "run"
    shutil.copytree(two_steps, root)
    (root / "overlay.yaml").unlink()  # rewritten with this root by _args
    return root


@pytest.mark.parametrize("how", ["last", "path"])
@pytest.mark.parametrize(
    ("change", "refused"),
    [
        (("--model.loss_kwargs", "{tau: 0.25}"), "model.loss_kwargs"),
        (("--data.schedule.rollouts_per_prompt", "2"), "data.schedule.rollouts_per_prompt"),
        (("--data.train.split", "test"), "data.train"),
    ],
    ids=["loss_kwargs", "rollouts_per_prompt", "train"],
)
def test_a_change_of_what_the_run_is_is_refused_before_training(run, how, change, refused) -> None:
    rows = _rows(run)
    ckpt = "last" if how == "last" else str(run / "job" / "pinned" / "checkpoints" / "last.ckpt")
    with pytest.raises(ResumeRefused) as error:
        main(_args(run, *change, "--trainer.max_steps", "4", "--ckpt_path", ckpt))
    message = str(error.value)
    assert "last.ckpt (step 2) would change what the run is" in message
    assert refused in message and f"--resume_allow_changes '[{refused}]'" in message
    assert "model.lr" not in message  # unchanged
    assert _rows(run) == rows  # nothing logged, nothing dropped


def test_switching_to_a_baseline_config_mid_run_is_refused(run) -> None:
    with pytest.raises(ResumeRefused, match=r"model\.loss: 'real' → 'grpo'"):
        main(_args(run, "--ckpt_path", "last", before=("-c", str(CONFIGS / "baselines" / "grpo.yaml"))))


def test_switching_to_a_typed_loss_mid_run_is_refused(run) -> None:
    """A name → a typed loss (even REAL's own class) changes ``model.loss``: refused like a new name."""
    typed = "{class_path: real_lightning.losses.REAL, init_args: {tau: 0.25}}"
    with pytest.raises(ResumeRefused, match=r"model\.loss: 'real' → \(unset\)") as error:
        main(_args(run, "--model.loss", typed, "--model.loss_kwargs", "{}", "--ckpt_path", "last"))
    assert "model.loss.init_args.tau: (unset) → 0.25" in str(error.value)


def test_new_lr_applied_and_listed_earlier_rows_kept(run, caplog) -> None:
    """``last`` with a new lr, max_steps and (allowed) loss_kwargs: listed, and the optimizer uses the new lr
    from the first resumed step; the pinned CSV logger keeps the rows of steps 0–1."""
    caplog.set_level(logging.INFO)
    changes = [
        "--model.lr", "0.001",
        "--model.loss_kwargs", "{tau: 0.25}",
        "--resume_allow_changes", "[model.loss_kwargs]",
        "--trainer.max_steps", "4",
    ]  # fmt: skip
    main(_args(run, *changes, "--ckpt_path", "last"))
    report = caplog.text
    assert "options changed since the checkpoint, applied:" in report
    for line in ("model.lr: 0.01 → 0.001", "trainer.max_steps: 2 → 4", "model.loss_kwargs.tau: 0.5 → 0.25"):
        assert line in report
    assert _lrs(run) == {0: 0.01, 1: 0.01, 2: 0.001, 3: 0.001}
    assert [int(r["step"]) for r in _rows(run) if r.get("train/loss")] == [0, 1, 2, 3]


def test_an_explicit_path_keeps_the_options_given(run, caplog) -> None:
    """Lightning would replace the model's options with the checkpoint's for a path (not for ``last``)."""
    from real_lightning.cli import RealLightningCLI
    from real_lightning.data.datamodule import RolloutDataModule
    from real_lightning.module import RealPolicyModule

    caplog.set_level(logging.INFO)
    path = run / "job" / "pinned" / "checkpoints" / "last.ckpt"
    cli = RealLightningCLI(
        RealPolicyModule,
        RolloutDataModule,
        save_config_kwargs={"overwrite": True},
        args=_args(run, "--model.lr", "0.001", "--ckpt_path", str(path)),  # max_steps 2: nothing left to train
    )
    assert cli.model.hparams.lr == 0.001 and cli.model.hparams.loss_kwargs == {"tau": 0.5}
    assert "model.lr: 0.01 → 0.001" in caplog.text
    assert cli.trainer.global_step == 2


def test_last_with_nothing_to_resume_is_an_error(tmp_path) -> None:
    with pytest.raises(NothingToResume) as error:
        main(_args(tmp_path, "--ckpt_path", "last"))
    message = str(error.value)
    assert "nothing to resume, no last*.ckpt in" in message
    assert str(tmp_path / "job" / "pinned" / "checkpoints") in message and "drop --ckpt_path" in message
    assert not (tmp_path / "job" / "pinned" / "metrics.csv").exists()


def test_option_changes_groups_and_allowances() -> None:
    old = flatten_options({"model": {"loss": "real", "loss_kwargs": {"tau": 0.5}, "lr": 0.01}, "ckpt_path": "x"})
    new = flatten_options({"model": {"loss": "grpo", "loss_kwargs": {}, "lr": 0.001}, "ckpt_path": "y"})
    changes = option_changes(old, new)
    assert [(c.name, c.refused is not None) for c in changes] == [
        ("model.loss", True),
        ("model.loss_kwargs.tau", True),  # not also model.loss_kwargs: (unset) → {}
        ("model.lr", False),
    ]
    assert all(c.refused is None for c in option_changes(old, new, ["all"]))
    assert [c.name for c in option_changes(old, new, ["model.loss_kwargs"]) if c.refused] == ["model.loss"]
    report = check_changes(Path("x.ckpt"), 3, [OptionChange("model.lr", 0.01, 0.001)])
    assert report.endswith("applied:\n  model.lr: 0.01 → 0.001")


def test_an_option_added_since_the_checkpoint_at_its_off_default_is_no_change() -> None:
    """A checkpoint written before an option existed resumes: the option at an empty default is not a change;
    set to something, it is one (refused under a refused group)."""
    old = flatten_options({"data": {"train": {"source": "a.jsonl"}}})
    for off in ([], None, False, "", {}):
        new = flatten_options({"data": {"train": {"source": "a.jsonl", "reward_fields": off}}})
        assert option_changes(old, new) == [], off
    new = flatten_options({"data": {"train": {"source": "a.jsonl", "reward_fields": ["tolerance"]}}})
    assert [(c.name, c.refused is not None) for c in option_changes(old, new)] == [("data.train.reward_fields", True)]


def test_a_checkpoint_without_run_options_is_compared_by_hyper_parameters(run, caplog) -> None:
    """Checkpoints written before :class:`~real_lightning.checkpoints.resume.RunOptions`: the module's and datamodule's
    hyper-parameters are compared."""
    import torch

    path = run / "job" / "pinned" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["callbacks"]["RunOptions"]
    torch.save(checkpoint, path)
    with pytest.raises(ResumeRefused, match=r"data\.schedule\.rollouts_per_prompt: 4 → 2"):
        main(_args(run, "--data.schedule.rollouts_per_prompt", "2", "--ckpt_path", str(path)))
    caplog.set_level(logging.INFO)
    main(_args(run, "--model.lr", "0.001", "--ckpt_path", str(path)))  # nothing left to train
    assert "holds only hyper-parameters" in caplog.text and "model.lr: 0.01 → 0.001" in caplog.text


def test_a_pinned_tensorboard_folder_is_purged_after_the_checkpoint_only(tmp_path) -> None:
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger

    from real_lightning.checkpoints.resume import keep_logs_before

    (tmp_path / "job" / "pinned").mkdir(parents=True)  # the earlier run's events are in it
    pinned = TensorBoardLogger(tmp_path, name="job", version="pinned")
    fresh = TensorBoardLogger(tmp_path, name="job", version="new")
    trainer = pl.Trainer(logger=[pinned, fresh], enable_progress_bar=False, enable_model_summary=False)
    keep_logs_before(trainer, 5)
    assert pinned._kwargs["purge_step"] == 5  # events at steps >= 5 go, the earlier ones stay
    assert "purge_step" not in fresh._kwargs  # a new folder: nothing to purge


def test_a_failed_step_names_the_newest_checkpoint_and_how_to_continue(tmp_path, caplog) -> None:
    """A fatal error writes no checkpoint (the state may hold half a step) but names the newest one and the flag
    that continues from it."""
    root = tmp_path
    failing = {"class_path": "tests.pipeline.callbacks_for_tests.RaiseAtStep", "init_args": {"step": 4}}
    args = _args(root, "--trainer.max_steps", "5", "--trainer.callbacks+", yaml.dump(failing))
    with caplog.at_level(logging.ERROR), pytest.raises(RuntimeError, match="broken reward service"):
        main(args)
    checkpoints = root / "job" / "pinned" / "checkpoints"
    message = next(r.getMessage() for r in caplog.records if "The run failed" in r.getMessage())
    assert message == (
        "The run failed during step 4 (RuntimeError: broken reward service). The newest checkpoint is "
        f"{checkpoints / 'last.ckpt'}; once the cause is fixed, continue with the same command and --ckpt_path last "
        "(the steps after that checkpoint are done again)."
    )
    assert {int(r["step"]) for r in _rows(root) if r.get("train/loss")} == {0, 1, 2}  # step 3 of 5 done and kept
