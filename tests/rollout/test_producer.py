"""Asynchronous rollouts (``data.schedule.max_staleness``): the staleness rule, weight snapshots, and short fits of
the quickstart config with a producer in a worker process and inline (same rollouts, losses, staleness logged), at
S = 0 (today's run, bit for bit), and with the producer killed mid-run (the run stops naming it)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from real_lightning.cli import main
from real_lightning.rollout.producer.slots import WeightSlots, layout
from real_lightning.rollout.producer.versions import Published, choose_weights, slot_of

REPO = Path(__file__).resolve().parents[2]


# --- the rule -------------------------------------------------------------------------------------------------------


def test_fixed_mode_samples_batch_r_with_the_weights_of_batch_r_minus_s() -> None:
    book = {q: Published(q, 10 * q, slot_of(q, 2)) for q in range(4)}
    for r in range(7):
        chosen = choose_weights(r, book, 2, "fixed")
        if r - 2 <= 3:
            assert chosen == book[max(0, r - 2)], r
        else:
            assert chosen is None, r  # batch r − 2's weights are not published yet: wait


def test_bounded_mode_takes_the_newest_weights_never_older_than_s() -> None:
    book = {q: Published(q, q, slot_of(q, 2)) for q in range(3)}
    assert choose_weights(1, book, 2, "bounded").index == 2
    assert choose_weights(4, book, 2, "bounded").index == 2
    assert choose_weights(5, book, 2, "bounded") is None  # newest is batch 2 < 5 − 2


def test_after_a_resume_without_the_old_weights_fixed_mode_takes_the_oldest_later_ones() -> None:
    book = {5: Published(5, 50, slot_of(5, 2))}  # a resumed run published batch 5's only
    assert choose_weights(6, book, 2, "fixed").index == 5


def test_a_slot_is_reused_only_after_every_batch_its_weights_may_sample() -> None:
    s = 3
    for q in range(20):  # publishing batch q overwrites batch q − S − 1's slot; that one may sample batches < q
        assert slot_of(q, s) == slot_of(q - s - 1, s) if q > s else True
        users = [r for r in range(q + s + 1) if max(0, r - s) == q - s - 1]
        assert all(r < q for r in users)


def test_weight_slots_round_trip_and_refuse_a_changed_layout() -> None:
    weights = [("a", torch.randn(3, 5)), ("b", torch.arange(7, dtype=torch.int64)), ("c", torch.randn(2).bfloat16())]
    entries, size = layout(weights)
    slots = WeightSlots.allocate(entries, size, 2, shared=True)
    slots.write(1, weights)
    for (name, tensor), (got_name, got) in zip(weights, slots.named(1), strict=True):
        assert name == got_name and got.dtype == tensor.dtype and torch.equal(got, tensor)
    with pytest.raises(ValueError, match="does not match the layout"):
        slots.write(0, [("a", torch.randn(4, 5))])
    with pytest.raises(ValueError, match="no tensor for"):
        slots.write(0, weights[:1])


# --- short fits -----------------------------------------------------------------------------------------------------


class KillProducerAtStep(Callback):
    """SIGKILL this rank's producer process before training step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(trainer.datamodule.collector.producer.process.pid, signal.SIGKILL)


def _fit(root: Path, *extra: str, steps: int = 6) -> dict[str, list[float]]:
    main(
        [
            "fit",
            "-c", str(REPO / "configs" / "quickstart.yaml"),
            "--trainer.max_steps", str(steps),
            "--trainer.limit_val_batches", "0",
            "--validate_before_fit", "false",
            "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false",
            "--trainer.log_every_n_steps", "1",
            "--model.export_dir", "null",
            "--trainer.default_root_dir", str(root),
            "--trainer.logger.init_args.save_dir", str(root),
            "--data.schedule.prompts_per_rollout", "8",
            *extra,
        ]
    )  # fmt: skip
    events = EventAccumulator(str(next(root.rglob("events.out*")).parent))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.fixture(scope="module")
def sync_run(tmp_path_factory) -> dict[str, list[float]]:
    return _fit(tmp_path_factory.mktemp("sync"))


def test_max_staleness_0_is_todays_run_bit_for_bit(sync_run, tmp_path) -> None:
    explicit = _fit(tmp_path, "--data.schedule.max_staleness", "0", "--data.producer.placement", "process")
    for tag in ("train/loss", "rollout/reward_mean", "train/grad_norm"):
        assert explicit[tag] == sync_run[tag], tag
    assert not any(tag.startswith(("rollout/staleness", "producer/")) for tag in explicit)


@pytest.mark.parametrize("mode", ["fixed", "bounded"])
def test_a_worker_process_and_inline_give_the_same_run_and_log_the_staleness(sync_run, tmp_path, mode) -> None:
    options = ("--data.schedule.max_staleness", "2", "--data.schedule.staleness_mode", mode)
    process = _fit(tmp_path / "process", *options, "--data.producer.placement", "process")
    assert process["rollout/staleness_batches_max"] == [0, 1, 2, 2, 2, 2] or mode == "bounded"
    assert max(process["rollout/staleness_batches_max"]) <= 2 and max(process["rollout/staleness_max"]) <= 2
    assert process["rollout/stale_dropped"] == [0.0] * 6
    assert process["train/loss"][0] == sync_run["train/loss"][0]  # batch 0 is sampled by the initial weights
    assert process["train/loss"][1:] != sync_run["train/loss"][1:]  # the others by older weights than in sync
    assert len(process["time/wait_for_rollouts_s"]) == 6 and len(process["producer/idle_s"]) == 6
    if mode == "fixed":  # deterministic whatever the timing: inline samples the same batches from the same snapshots
        inline = _fit(tmp_path / "inline", *options, "--data.producer.placement", "inline")
        for tag in ("train/loss", "rollout/reward_mean", "train/grad_norm", "rollout/staleness_max"):
            assert inline[tag] == process[tag], tag


def test_a_killed_producer_stops_the_run_naming_it(tmp_path) -> None:
    callback = f"{__name__}.KillProducerAtStep"
    with pytest.raises(RuntimeError, match=r"rollout producer of rank 0 \(process \d+\).*killed by SIGKILL"):
        _fit(
            tmp_path,
            "--data.schedule.max_staleness", "1",
            "--trainer.callbacks+", f"{{class_path: {callback}, init_args: {{step: 3}}}}",
            steps=8,
        )  # fmt: skip
