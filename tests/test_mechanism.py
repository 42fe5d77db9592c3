"""mechanism_stats on hand-computed groups, and MechanismMonitor in a short run (TensorBoard read back)."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from real_lightning.analysis.mechanism import mechanism_stats
from real_lightning.callbacks import MechanismMonitor
from real_lightning.module import RealPolicyModule
from tests.test_training import make_datamodule


def _stats(**overrides):
    # group 0: 3 positives (two share a response), 2 negatives; group 1: 1 positive, 3 negatives;
    # group 2: all wrong (no contrast)
    t = torch.tensor
    batch = {
        "weights": t([-0.5, -0.3, -0.2, 0.4, 0.1, -1.0, 0.6, 0.2, 0.2, 0.0, 0.0], dtype=torch.float64),
        "scores": t([0.1, 0.2, 0.3, -0.4, 0.5, 0.0, -0.1, 0.2, 0.9, 0.3, -0.3], dtype=torch.float64),
        "labels": t([1, 1, 1, 0, 0, 1, 0, 0, 0, -1, -1]),
        "group_ids": t([0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2]),
        "rewards": t([1.0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0]),
        "responses": [(1, 2), (1, 2), (3,), (4,), (5,), (6,), (7,), (8,), (9,), (1,), (2,)],
        "lengths": t([2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1]),
    }
    return mechanism_stats(**{**batch, **overrides})


def test_each_statistic_by_hand() -> None:
    stats = _stats()
    pos = torch.tensor([0.1, 0.2, 0.3, 0.0], dtype=torch.float64)
    assert stats["score_abs_p50_pos"] == pytest.approx(float(pos.quantile(0.5)))
    assert stats["score_abs_p90_pos"] == pytest.approx(float(pos.quantile(0.9)))
    # |s| of the negatives, sorted: 0.1 0.2 0.4 0.5 0.9; the 90th percentile interpolates 0.5 + 0.6·(0.9 − 0.5)
    assert stats["score_abs_p50_neg"] == pytest.approx(0.4) and stats["score_abs_p90_neg"] == pytest.approx(0.74)
    shares = torch.tensor([0.4 / 0.5, 0.6 / 1.0], dtype=torch.float64)  # group 0: 0.4 of 0.5; group 1: 0.6 of 1.0
    assert stats["neg_domination_mean"] == pytest.approx(float(shares.mean()))
    assert stats["neg_domination_p95"] == pytest.approx(float(shares.quantile(0.95)))
    # group 0's positives: |w| 0.5, 0.3, 0.2 against s 0.1, 0.2, 0.3: Spearman −1; group 1 has one positive
    assert stats["rank_corr_pos"] == pytest.approx(-1.0) and stats["rank_corr_pos_defined"] == pytest.approx(0.5)
    assert stats["distinct_correct_mean"] == pytest.approx((2 + 1) / 2)  # (1, 2) twice counts once
    assert stats["multi_correct_share"] == pytest.approx(0.5)
    assert stats["pass_at_n"] == pytest.approx(2 / 3)
    assert "clipped_pos_share" not in stats  # REAL: no clip


def test_clipped_positive_share_counts_positive_advantage_tokens_only() -> None:
    advantages = torch.tensor([0.8, 0.8, 0.8, -1.2, -1.2, 1.5, -0.5, -0.5, -0.5, 0.0, 0.0])
    clipped = torch.tensor([1.0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0])  # clips on negatives do not count
    stats = _stats(clip_high_tokens=clipped, advantages=advantages)
    assert stats["clipped_pos_share"] == pytest.approx(2 / 6)  # 2 clipped of 2 + 2 + 1 + 1 positive tokens


def test_statistics_without_anything_to_measure_are_left_out() -> None:
    stats = mechanism_stats(
        torch.zeros(2),
        torch.tensor([0.1, 0.2]),
        torch.tensor([-1, -1]),
        torch.tensor([0, 0]),
        torch.zeros(2),
        [(1,), (2,)],
        torch.ones(2),
    )
    assert stats == {"pass_at_n": 0.0}
    one_each = _stats(weights=torch.tensor([-0.5, -0.3, -0.2, 0.4, 0.1, -1.0, 0.6, 0.2, 0.2, 0.0, 0.0]) * 0)
    assert "neg_domination_mean" not in one_each  # all weights 0: no share to speak of
    assert math.isfinite(one_each["score_abs_p90_pos"])


def test_monitor_logs_every_step_in_a_short_run(policy_dir, tmp_path) -> None:
    module = RealPolicyModule(pretrained=policy_dir, lr=1e-3, loss="grpo", loss_kwargs={"dual_clip": 3.0})
    trainer = pl.Trainer(
        max_steps=3,
        logger=TensorBoardLogger(tmp_path, name="run", version=0),
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[MechanismMonitor(every_n_steps=1)],
    )
    trainer.fit(module, make_datamodule(prompts_per_minibatch=2, recompute_old_logprobs=True))
    events = EventAccumulator(str(tmp_path / "run" / "version_0"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"mechanism/pass_at_n", "mechanism/score_abs_p90_pos", "mechanism/clipped_pos_share"} <= scalars
    assert [e.step for e in events.Scalars("mechanism/pass_at_n")] == [0, 1, 2]
    assert "train/clip_fraction_dual" in scalars
