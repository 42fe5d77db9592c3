"""Asynchronous rollouts (``data.schedule.max_staleness``): the staleness rule, weight snapshots, and short fits of
the quickstart config with a producer in a worker process and inline (same rollouts, losses, staleness logged), at
S = 0 (today's run, bit for bit), and with the producer killed mid-run (the run stops naming it)."""

from __future__ import annotations

import copy
import os
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from real_lightning.cli import main
from real_lightning.logprobs.chunked import sequence_logprobs
from real_lightning.rollout.batch import RolloutBatch
from real_lightning.rollout.collector import RolloutCollector
from real_lightning.rollout.hf import HFEngine
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


REFERENCES: dict[str, list[dict[str, Any]]] = {}
"""What :class:`SampleAgainFromSnapshots` found, by its ``key``."""


class SampleAgainFromSnapshots(Callback):
    """The reference for ``fixed`` mode: keep the policy's weights at the start of every rollout batch and the batch
    each one trained on; at the end of training, sample every batch r again *synchronously* — a plain ``HFEngine``
    (shared weights, no producer, no snapshot slots) on a copy of the policy loaded with the weights kept at the start
    of batch max(0, r − S) — and record both in ``REFERENCES[key]``."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.snapshots: dict[int, tuple[int, dict[str, torch.Tensor]]] = {}  # r → (its first step, weights)
        self.requests: dict[int, Any] = {}
        self.trained: dict[int, RolloutBatch] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch.minibatch_index == 0:
            weights = {k: v.detach().clone() for k, v in pl_module.policy.state_dict().items()}
            self.snapshots[batch.rollout_index] = (trainer.global_step, weights)
            self.requests[batch.rollout_index] = batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch.minibatch_index == 0:
            self.trained[batch.rollout_index] = trainer.datamodule.collector.rollouts(batch)

    def on_train_end(self, trainer, pl_module) -> None:
        collector = trainer.datamodule.collector
        schedule = collector.schedule
        policy = copy.deepcopy(pl_module.policy).eval()
        engine = HFEngine(max_new_tokens=collector.engine.max_new_tokens, temperature=collector.engine.temperature)
        engine.setup(policy, pl_module.tokenizer)
        synchronous = RolloutCollector(
            collector.prompts, engine, collector.scorer, replace(schedule, max_staleness=0), collector.order,
            collector.seed,
        )  # fmt: skip
        found = REFERENCES[self.key] = []
        for r, trained in sorted(self.trained.items()):
            version, weights = self.snapshots[max(0, r - schedule.max_staleness)]
            policy.load_state_dict(weights)
            engine.update_weights([], version)
            again = synchronous.collect(self.requests[r])
            with torch.no_grad():
                logprobs, _ = sequence_logprobs(
                    policy, trained.input_ids, trained.attention_mask, trained.prompt_length,
                    temperature=trained.temperature,
                )  # fmt: skip
            found.append({"r": r, "version": version, "trained": trained, "again": again, "logprobs": logprobs})


class SleepEveryThirdStep(Callback):
    """The trainer pauses ``seconds`` before every third step: its producer runs ahead meanwhile."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step % 3 == 2:
            time.sleep(self.seconds)


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


@pytest.mark.parametrize("staleness", [1, 2])
def test_fixed_mode_trains_batch_r_on_what_the_weights_of_batch_r_minus_s_sample_synchronously(
    tmp_path, staleness
) -> None:
    key = f"fixed-{staleness}"
    callback = f"{{class_path: {__name__}.SampleAgainFromSnapshots, init_args: {{key: {key}}}}}"
    _fit(
        tmp_path,
        "--data.schedule.max_staleness", str(staleness),
        "--data.schedule.prompts_per_minibatch", "4",  # two optimizer steps per rollout batch: versions 0, 2, 4, ...
        "--trainer.callbacks+", callback,
        steps=10,
    )  # fmt: skip
    found = REFERENCES.pop(key)
    assert [f["r"] for f in found] == [0, 1, 2, 3, 4]
    assert [f["version"] for f in found] == [2 * max(0, r - staleness) for r in range(5)]
    for f in found:
        trained, again = f["trained"], f["again"]
        assert trained.policy_version == f["version"], f["r"]
        assert trained.rollout_staleness == f["r"] - max(0, f["r"] - staleness)
        for field in ("input_ids", "attention_mask", "response_mask", "rewards", "group_ids", "prompt_ids"):
            assert torch.equal(getattr(trained, field), getattr(again, field)), (f["r"], field)
        # the producer's behaviour log-probs are those of the weights of batch r − S (its own copy of them)
        mask = trained.response_mask
        torch.testing.assert_close(trained.behaviour_logprobs[mask], f["logprobs"][mask], rtol=0, atol=1e-5)
    # the weights moved between the snapshots (the check above could not pass with a stale copy by accident)
    assert not torch.equal(found[-1]["trained"].input_ids, found[-1 - staleness]["again"].input_ids)


def test_bounded_mode_never_trains_on_older_weights_whatever_the_timing(tmp_path) -> None:
    """A slowed producer (4 ms per reward) and a trainer that pauses every third step: the producer runs ahead, then
    falls behind; batches are still never sampled more than S = 2 rollout batches ago."""
    scalars = _fit(
        tmp_path,
        "--data.schedule.max_staleness", "2",
        "--data.schedule.staleness_mode", "bounded",
        "--data.verifier.reward", "tests.rewards_for_tests:slow_first_char_even",
        "--data.verifier.workers", "1",
        "--data.verifier.truncated_is_wrong", "false",
        "--trainer.callbacks+", f"{{class_path: {__name__}.SleepEveryThirdStep, init_args: {{seconds: 1.0}}}}",
        steps=12,
    )  # fmt: skip
    staleness = scalars["rollout/staleness_batches_max"]
    assert len(staleness) == 12 and staleness[0] == 0 and max(staleness) <= 2, staleness
    assert {1.0, 2.0} <= set(staleness[1:]), staleness  # both regimes happened: behind (1) and ahead (2)
    assert max(scalars["rollout/staleness_max"]) <= 2  # one optimizer step per rollout batch here
    assert scalars["rollout/stale_dropped"] == [0.0] * 12
    assert max(scalars["time/wait_for_rollouts_s"]) > 0.05  # the trainer did wait for the slowed producer


class _ProducerOf(list):
    """A stand-in producer that hands out the batches it holds."""

    def take(self, index: int) -> tuple[RolloutBatch, float]:
        return self.pop(0), 0.25


def test_the_backstop_drops_a_batch_older_than_the_bound_and_counts_it() -> None:
    from real_lightning.rollout.requests import RolloutRequest
    from real_lightning.rollout.schedule import RolloutSchedule

    def batch(staleness: int) -> RolloutBatch:
        return RolloutBatch(
            input_ids=torch.ones(4, 3, dtype=torch.long), attention_mask=torch.ones(4, 3, dtype=torch.long),
            response_mask=torch.ones(4, 1, dtype=torch.bool), prompt_length=2, rewards=torch.tensor([0.0, 1, 0, 1]),
            group_ids=torch.tensor([0, 0, 1, 1]), prompt_ids=torch.tensor([5, 5, 6, 6]),
            truncated=torch.zeros(4, dtype=torch.bool), temperature=1.0, rollout_staleness=staleness,
        )  # fmt: skip

    schedule = RolloutSchedule(prompts_per_rollout=2, rollouts_per_prompt=2, max_staleness=1)
    collector = RolloutCollector([], None, None, schedule, None)
    collector.attach_producer(_ProducerOf([batch(1), batch(2)]))
    request = RolloutRequest(step=0, rollout_index=0, minibatch_index=0, prompt_indices=(0, 1), seed=0)
    kept = collector.receive_rollout_batch(request)
    assert len(kept) == 4 and kept.stats == {"time/wait_for_rollouts_s": 0.25, "rollout/stale_dropped": 0.0}
    dropped = collector.receive_rollout_batch(request._replace(rollout_index=1))
    assert len(dropped) == 0 and dropped.stats["rollout/stale_dropped"] == 1.0


def test_a_killed_producer_stops_the_run_naming_it(tmp_path) -> None:
    callback = f"{__name__}.KillProducerAtStep"
    with pytest.raises(RuntimeError, match=r"rollout producer of rank 0 \(process \d+\).*killed by SIGKILL"):
        _fit(
            tmp_path,
            "--data.schedule.max_staleness", "1",
            "--trainer.callbacks+", f"{{class_path: {callback}, init_args: {{step: 3}}}}",
            steps=8,
        )  # fmt: skip
