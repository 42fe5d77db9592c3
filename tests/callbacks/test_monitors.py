"""GradientWeightMonitor and RolloutSampleLogger in real short runs: values, event files, resume."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pandas as pd
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from real_lightning.callbacks import GradientWeightMonitor, RolloutSampleLogger
from real_lightning.module import RealPolicyModule
from tests.test_training import make_datamodule


def _trainer(root: Path, steps: int, callbacks: list, version: int = 0) -> pl.Trainer:
    return pl.Trainer(
        max_steps=steps,
        logger=TensorBoardLogger(root, name="run", version=version),
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=callbacks,
    )


def _events(root: Path) -> EventAccumulator:
    events = EventAccumulator(str(root / "run" / "version_0"), size_guidance={"histograms": 0, "tensors": 0})
    events.Reload()
    return events


def test_logged_weights_equal_autograd_on_the_same_batch(policy_dir, tmp_path) -> None:
    module = RealPolicyModule(pretrained=policy_dir, lr=1e-3, loss="grpo")
    loss_fn, autograd = module.loss_fn, {}

    def spy(**kwargs):  # ∂loss/∂s via autograd: Σ_t ∂loss/∂logprobs[i, t], times the loss's normaliser
        out = loss_fn(**kwargs)
        (grad,) = torch.autograd.grad(out.loss, kwargs["logprobs"], retain_graph=True)
        mask = kwargs["response_mask"].to(grad.dtype)
        autograd[len(autograd) + 1] = ((grad * mask).sum(-1) * out.metrics["weight_normalizer"]).detach()
        return out

    module.loss_fn = spy
    monitor = GradientWeightMonitor(every_n_steps=1, records_dir="gradient_weights")
    trainer = _trainer(tmp_path, 3, [monitor])
    trainer.fit(module, make_datamodule(prompts_per_minibatch=2, recompute_old_logprobs=True))
    records = pd.read_parquet(tmp_path / "run" / "version_0" / "gradient_weights")
    assert sorted(records["step"].unique()) == [1, 2, 3]
    for step, expected in autograd.items():
        logged = torch.tensor(records[records["step"] == step]["weight"].to_numpy())
        torch.testing.assert_close(logged, expected.double(), rtol=1e-6, atol=1e-9)
    assert (records["weight"] != 0).any()


def test_event_files_hold_histograms_scalars_and_samples(policy_dir, tmp_path) -> None:
    module = RealPolicyModule(pretrained=policy_dir, lr=1e-3)
    callbacks = [GradientWeightMonitor(every_n_steps=1), RolloutSampleLogger(every_n_steps=2, num_samples=3)]
    _trainer(tmp_path, 2, callbacks).fit(module, make_datamodule())
    events = _events(tmp_path)
    histograms = set(events.Tags()["histograms"])
    assert {"weights/positive", "weights/negative", "rollouts/response_length", "rollouts/reward"} <= histograms
    scalars = set(events.Tags()["scalars"])
    for name in (
        "pos_abs_max",
        "pos_abs_mean",
        "neg_abs_max",
        "neg_abs_mean",
        "domination_max",
        "domination_mean",
        "pos_zero_fraction",
        "rank_corr_pos",
        "rank_corr_neg",
    ):
        assert f"weights/{name}" in scalars, name
    assert [e.step for e in events.Scalars("weights/pos_abs_max")] == [0, 1]  # Lightning's step, as train/*
    text = events.Tensors("rollouts/samples/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text.startswith("| prompt | response | ground truth | reward |") and text.count("\n") == 4


def test_resume_keeps_steps_without_duplicates_or_gaps(policy_dir, tmp_path) -> None:
    monitor = GradientWeightMonitor(every_n_steps=1, records_dir="gradient_weights")
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    _trainer(tmp_path, 2, [monitor, checkpoint]).fit(
        RealPolicyModule(pretrained=policy_dir, lr=1e-3), make_datamodule()
    )
    resumed = GradientWeightMonitor(every_n_steps=1, records_dir="gradient_weights")
    _trainer(tmp_path, 4, [resumed]).fit(
        RealPolicyModule(pretrained=policy_dir, lr=1e-3),
        make_datamodule(),
        ckpt_path=str(next((tmp_path / "ckpt").glob("*step=2*.ckpt"))),
    )
    assert resumed.logged_steps == [1, 2, 3, 4]
    files = sorted(p.name for p in (tmp_path / "run" / "version_0" / "gradient_weights").iterdir())
    assert files == [f"step_{s:07d}.parquet" for s in (1, 2, 3, 4)]
    steps = [e.step for e in _events(tmp_path).Scalars("weights/pos_abs_max")]
    assert sorted(set(steps)) == [0, 1, 2, 3] and len(steps) == 4  # optimizer steps 1–4 at Lightning's steps
