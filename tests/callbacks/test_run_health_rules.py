"""RunHealthMonitor's rules on streams of logged values built to show (or not show) each finding."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from real_lightning.callbacks import RunHealthMonitor
from real_lightning.callbacks.run_health import EVENTS
from real_lightning.step.output import STEP_KEY, StepOutput


def rollout_values(reward: float = 0.5, truncation: float = 0.01, **verifier: float) -> dict[str, float]:
    """What the first step of a rollout batch logs: rollout/* and verifier/* counts (256 responses)."""
    counts = {"correct": 256 * reward, "incorrect": 256 * (1 - reward), **verifier}
    return {
        "rollout/reward_mean": reward,
        "rollout/truncation_rate": truncation,
        **{f"verifier/{k}": v for k, v in counts.items()},
    }


def healthy(step: int) -> dict[str, float]:
    """A learning run: contrast 0.9 → 0.4, entropy 0.15 → 0.03 (÷5), grad norm 2–12, small ppo_kl."""
    t = step / 600
    values = {
        "train/contrast_fraction": 0.9 - 0.5 * t,
        "train/entropy": 0.15 * (1 - 0.8 * t),
        "train/grad_norm": 2 + 10 * ((step * 7919) % 13) / 13,
        "train/ppo_kl": 1e-3 * ((step * 31) % 5),
    }
    if step % 4 == 1:  # four mini-batches per rollout batch
        values |= rollout_values(reward=0.35 + 0.45 * t) | {"rollout/mismatch_k3": 1e-6 * (1 + step % 3)}
    return values


def feed(monitor: RunHealthMonitor, steps: range, values, skipped=lambda step: False) -> dict[int, list]:
    """{step: names of the findings that started there}."""
    started = {}
    for step in steps:
        found = monitor.observe(step, values(step), skipped(step))
        if found:
            started[step] = [f.name for f in found]
    return started


def test_a_healthy_run_has_no_findings() -> None:
    monitor = RunHealthMonitor()
    assert feed(monitor, range(1, 601), healthy) == {}
    for step, score in ((0, 0.33), (150, 0.5), (300, 0.62), (450, 0.7), (600, 0.8)):
        assert monitor.observe_validation(step, score) == []
    assert monitor.summary() == "Run health: no findings in 600 steps"


def dead_after(step: int, start: int = 100, reward: float = 0.0, truncation: float = 1.0) -> dict[str, float]:
    """Healthy until ``start``; then no group has a contrast, with this reward and truncation rate."""
    values = healthy(step)
    if step >= start:
        values |= {"train/contrast_fraction": 0.0, "train/grad_norm": 0.0}
        if "rollout/reward_mean" in values:
            zeroed = 100.0 if truncation > 0.5 else 0.0
            values |= rollout_values(reward, truncation, truncated_zeroed=zeroed)
    return values


def test_no_learning_signal_from_truncation_is_reported_once_with_its_cause() -> None:
    monitor = RunHealthMonitor(patience=20)
    started = feed(monitor, range(1, 301), dead_after)
    # contrast is 0 from step 100; the truncation rate of 1.0 comes with the rollout batch at step 101 and
    # lifts the mean of the last 20 steps (0.01 before) past 0.9 at step 118
    assert started == {118: ["truncation"], 119: ["no_learning_signal"]}
    signal, truncation = monitor.findings["no_learning_signal"], monitor.findings["truncation"]
    assert (signal.first_step, signal.last_step, signal.count, signal.value) == (100, 300, 201, 0.0)
    assert "every reward is 0.000 (100% of the latest responses hit the length limit" in signal.message
    assert "after a reward of 0.423 at step 97: updates too large broke the policy" in signal.message
    assert "from a checkpoint saved before step 100 if one was kept" in signal.message
    assert (truncation.first_step, truncation.value) == (99, pytest.approx(0.901))
    assert (
        "the latest rollout batch: 100%, 39% of them with a correct answer that scored 0" in truncation.message
    )  # 100 of 256
    assert monitor.active["no_learning_signal"] and monitor.values["no_learning_signal"] == 0.0


def test_no_learning_signal_names_the_cause_from_the_rewards() -> None:
    def cause(reward: float, truncation: float, **verifier: float) -> str:
        """The message of a run without contrast from its first step."""
        monitor = RunHealthMonitor(patience=5)
        feed(
            monitor,
            range(1, 41),
            lambda s: dead_after(s, 1, reward, truncation) | rollout_values(reward, truncation, **verifier),
        )
        return monitor.findings["no_learning_signal"].message

    assert "every reward is 1.000: the task is too easy" in cause(1.0, 0.0)
    assert "the task is too hard for the policy" in cause(0.0, 0.0)
    assert "responses are cut before their answer" in cause(0.0, 0.8) and "raise data.engine" in cause(0.0, 0.8)
    unparsed = cause(0.0, 0.0, no_answer=200.0, incorrect=56.0)
    assert "the verifier found no answer in 78%)" in unparsed and "not in the format the verifier parses" in unparsed
    assert "differ between prompts but not within a group" in cause(0.5, 0.0)


def test_a_short_dip_is_not_a_finding_and_a_recurrence_is_a_second_episode() -> None:
    monitor = RunHealthMonitor(patience=10)

    def dips(step: int) -> dict[str, float]:
        dead = 50 <= step < 55 or 100 <= step < 120 or 200 <= step < 215
        return dead_after(step, start=0, truncation=0.0) if dead else healthy(step)

    started = feed(monitor, range(1, 301), dips)
    assert started == {109: ["no_learning_signal"], 209: ["no_learning_signal"]}
    finding = monitor.findings["no_learning_signal"]
    assert (finding.first_step, finding.last_step, finding.count, finding.episodes) == (100, 214, 35, 2)
    assert not monitor.active["no_learning_signal"]


def test_entropy_collapse_and_explosion_relative_to_the_start() -> None:
    collapse = RunHealthMonitor(patience=5, entropy_baseline_steps=10)
    started = feed(collapse, range(1, 101), lambda s: healthy(s) | {"train/entropy": 0.2 if s <= 50 else 0.005})
    assert started == {55: ["entropy_collapse"]}
    assert collapse.findings["entropy_collapse"].value == pytest.approx(0.025)
    assert "0.2 → 0.005 nats" in collapse.findings["entropy_collapse"].message
    explosion = RunHealthMonitor(patience=5)
    started = feed(explosion, range(1, 101), lambda s: healthy(s) | {"train/entropy": 0.2 if s <= 50 else 0.7})
    assert started == {55: ["entropy_explosion"]}
    assert explosion.findings["entropy_explosion"].value == pytest.approx(3.5)


def test_reward_hacking_needs_a_rising_reward_and_a_falling_pass_at_1() -> None:
    monitor = RunHealthMonitor(reward_window=3)
    reward = {1: 0.3, 5: 0.3, 9: 0.3, 13: 0.6, 17: 0.7, 21: 0.8}
    for step in range(1, 25):
        monitor.observe(step, healthy(step) | ({"rollout/reward_mean": reward[step]} if step in reward else {}))
        if step == 10:
            assert monitor.observe_validation(10, 0.5) == []
        if step == 16:
            assert monitor.observe_validation(16, 0.52) == []  # better: nothing to say
    (finding,) = monitor.observe_validation(24, 0.40)
    assert finding.name == "reward_hacking" and finding.value == pytest.approx(0.12)
    assert (
        "Pass@1 0.520 (step 16) → 0.400" in finding.message and "rose +0.300" in finding.message
    )  # 0.4 → 0.7 over 3 batches
    steady = RunHealthMonitor(reward_window=3)
    for step in range(1, 25):
        steady.observe(step, healthy(step) | ({"rollout/reward_mean": 0.3} if step in reward else {}))
    steady.observe_validation(10, 0.5)
    assert steady.observe_validation(24, 0.3) == []  # Pass@1 fell but the reward did not rise: not hacking


def test_skipped_updates_and_spikes_are_events() -> None:
    monitor = RunHealthMonitor()

    def spiky(step: int) -> dict[str, float]:
        values = healthy(step)
        if step == 70:
            values["train/grad_norm"] = 500.0
        if step == 90:
            values["train/ppo_kl"] = 0.5
        if step == 101:
            values["rollout/mismatch_k3"] = 0.05
        return values

    started = feed(monitor, range(1, 151), spiky, skipped=lambda s: s in (30, 31))
    assert started == {
        30: ["nonfinite_loss"],
        31: ["nonfinite_loss"],  # an event starts at every occurrence (stop_on acts on each)
        70: ["grad_norm_spike"],
        90: ["ppo_kl_spike"],
        101: ["mismatch_spike"],
    }
    assert monitor.findings["nonfinite_loss"].count == 2 and monitor.findings["nonfinite_loss"].worst == 2
    assert monitor.findings["grad_norm_spike"].value == 500.0
    assert "train/grad_norm spike (step 70): 500" in monitor.findings["grad_norm_spike"].message


def test_zero_gradient_norms_and_small_kl_are_not_spikes() -> None:
    monitor = RunHealthMonitor()
    # grad norm 0 on steps without contrast does not drag the median to 0; ppo_kl 10× its median but < floor

    def values(s: int) -> dict[str, float]:
        return healthy(s) | {"train/grad_norm": 0.0 if s % 2 else 3.0, "train/ppo_kl": 1e-4 * (10 if s == 80 else 1)}

    assert feed(monitor, range(1, 121), values) == {}


def test_non_finite_values_do_not_enter_the_medians() -> None:
    """A NaN or inf grad norm / ppo_kl / mismatch (and a skipped update's ppo_kl) is left out: no finding on the
    healthy steps after it (a NaN in the median made every later value an infinite-ratio spike)."""
    monitor = RunHealthMonitor()

    def values(step: int) -> dict[str, float]:
        bad = {40: {"train/grad_norm": math.nan}, 41: {"train/ppo_kl": math.inf}, 45: {"train/ppo_kl": math.nan}}
        return healthy(step) | bad.get(step, {}) | ({"rollout/mismatch_k3": math.nan} if step == 49 else {})

    assert feed(monitor, range(1, 121), values, skipped=lambda s: s == 45) == {45: ["nonfinite_loss"]}
    assert all(math.isfinite(v) for window in monitor.windows.values() for v in window)


def test_verifier_failures() -> None:
    monitor = RunHealthMonitor()
    values = lambda s: healthy(s) | (rollout_values(timeout=20.0, error=5.0) if s == 41 else {})  # noqa: E731
    assert feed(monitor, range(1, 61), values) == {41: ["verifier_failures"]}
    assert "20 timeouts, 5 errors" in monitor.findings["verifier_failures"].message
    below = RunHealthMonitor()  # 12 of 256 = 4.7 % < 5 %
    assert feed(below, range(1, 61), lambda s: healthy(s) | (rollout_values(timeout=12.0) if s == 41 else {})) == {}
    assert below.values["verifier_failures"] == 0.0  # the latest rollout batch (step 57) had none


def with_producer(step: int, wait: float, busy: float, idle: float, sampling: float) -> dict[str, float]:
    """A healthy step of a run with a rollout producer; its rollout batches report these seconds (the first one
    has no ``time/trainer_busy_s``: nothing was trained before it)."""
    values = healthy(step)
    if "rollout/reward_mean" in values:
        values |= {"time/wait_for_rollouts_s": wait, "producer/idle_s": idle, "time/rollout_s": sampling}
        if step > 1:
            values["time/trainer_busy_s"] = busy
    return values


def test_a_starved_trainer_and_an_idle_producer_are_sustained_findings(caplog) -> None:
    balanced = RunHealthMonitor(patience=20)  # each waits a little: overlap working as meant
    assert feed(balanced, range(1, 201), lambda s: with_producer(s, 0.1, 1.0, 0.2, 0.9)) == {}
    assert balanced.values["trainer_starved"] == pytest.approx(0.1 / 1.1)
    assert balanced.values["producer_idle"] == pytest.approx(0.2 / 1.1)

    starved = RunHealthMonitor(patience=20)  # sampling 3 s, training 1 s: the trainer waits 2 of every 3 s
    slow_after = lambda s: with_producer(s, *((2.0, 1.0, 0.0, 3.0) if s >= 100 else (0.1, 1.0, 0.1, 1.0)))  # noqa: E731
    # the mean share of the last 20 steps passes 0.5 with 15 slow steps (101–115): (5 · 1/11 + 15 · 2/3) / 20 = 0.523
    assert feed(starved, range(1, 201), slow_after) == {115: ["trainer_starved"]}
    finding = starved.findings["trainer_starved"]
    assert (finding.first_step, finding.last_step) == (96, 200)
    assert (finding.value, finding.worst) == (pytest.approx(0.5227, abs=1e-4), pytest.approx(2 / 3))
    assert "waited for rollouts 52% of its time" in finding.message
    assert "the trainer waited 2 s and trained 1 s, the producer waited 0 s and sampled 3 s" in finding.message
    assert "data.producer.threads" in finding.message

    idle = RunHealthMonitor(patience=20)  # sampling 0.2 s, training 2 s
    assert feed(idle, range(1, 101), lambda s: with_producer(s, 0.0, 2.0, 1.8, 0.2)) == {20: ["producer_idle"]}
    assert "waited for the trainer's weights 90% of its time" in idle.findings["producer_idle"].message
    assert "lower data.schedule.max_staleness" in idle.findings["producer_idle"].message

    synchronous = RunHealthMonitor(patience=20)  # no producer: neither is watched
    feed(synchronous, range(1, 101), healthy)
    assert "trainer_starved" not in synchronous.values and "producer_idle" not in synchronous.values


def test_state_round_trip_continues_the_stream_exactly() -> None:
    whole, first = RunHealthMonitor(patience=20), RunHealthMonitor(patience=20)
    expected = feed(whole, range(1, 301), dead_after)
    before = feed(first, range(1, 111), dead_after)
    resumed = RunHealthMonitor(patience=20)
    resumed.load_state_dict(first.state_dict())
    after = feed(resumed, range(111, 301), dead_after)
    assert before | after == expected
    assert resumed.state_dict() == whole.state_dict()


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match=r"stop_on has unknown findings \['no_signal'\]; valid: no_learning_signal"):
        RunHealthMonitor(stop_on=["no_signal"])
    with pytest.raises(ValueError, match="patience must be >= 1"):
        RunHealthMonitor(patience=0)
    with pytest.raises(ValueError, match="spike_window must be >= 3, got 2"):
        RunHealthMonitor(spike_window=2)


class FakeTrainer(SimpleNamespace):
    """What the monitor's hooks read from a Trainer (one rank, no logger); save_checkpoint keeps the state."""

    def __init__(self, root: Path, monitor: RunHealthMonitor) -> None:
        super().__init__(
            callback_metrics={}, global_step=0, log_every_n_steps=1, loggers=[], logger=None, log_dir=None,
            world_size=1, default_root_dir=str(root), is_global_zero=True, checkpoint_callback=None, should_stop=False,
            sanity_checking=False, state=SimpleNamespace(fn="fit"), saved={}, monitor=monitor,
        )  # fmt: skip

    def save_checkpoint(self, path: Path) -> None:
        self.saved[self.global_step] = copy.deepcopy(self.monitor.state_dict())

    def train_step(self, step: int, values: dict[str, float]) -> None:
        self.global_step, self.should_stop = step, False
        grad_norm = values.get("train/grad_norm")
        metrics = {k: v for k, v in values.items() if k != "train/grad_norm"}
        output = StepOutput(
            skipped=False,
            metrics=metrics,
            grad_norm=None if grad_norm is None else torch.tensor(grad_norm, dtype=torch.float64),
        )
        self.monitor.on_train_batch_end(self, None, {"loss": torch.zeros(()), STEP_KEY: output}, None, 0)

    def validate(self, pass_at_1: float) -> None:
        self.callback_metrics = {"val/average/pass@1": pass_at_1}
        self.monitor.on_validation_end(self, None)


def test_every_event_stops_the_run_its_message_is_said_once_and_the_checkpoint_is_exact(tmp_path, caplog) -> None:
    """stop_on acts on each grad-norm spike (a resumed run stops at the next one); the message is printed once;
    the state saved at a stop is the state of a run that went on (no event flag still set)."""

    def spiky(step: int) -> dict[str, float]:
        return healthy(step) | ({"train/grad_norm": 500.0} if step in (70, 120) else {})

    stopping = FakeTrainer(tmp_path, RunHealthMonitor(stop_on=["grad_norm_spike"]))
    going_on = FakeTrainer(tmp_path, RunHealthMonitor())
    reference, stops = {}, []
    with caplog.at_level("WARNING", logger="real_lightning.callbacks.run_health"):
        for step in range(1, 151):
            stopping.train_step(step, spiky(step))
            going_on.train_step(step, spiky(step))
            reference[step] = going_on.monitor.state_dict()
            if stopping.should_stop:
                stops.append(step)
    assert stops == [70, 120] and sorted(stopping.saved) == [70, 120]
    for step in stops:
        assert stopping.saved[step] == reference[step]
        assert not any(stopping.saved[step]["active"].get(name, False) for name in EVENTS)
    said = [r.getMessage() for r in caplog.records if "grad_norm spike" in r.getMessage()]
    assert len(said) == 2 and "(step 70)" in said[0] == said[1]  # once per monitor (two monitors here)
    assert "stopping at step 120 (grad_norm_spike is in stop_on)" in caplog.text
    assert going_on.monitor.findings["grad_norm_spike"].count == 2


def test_reward_hacking_holds_until_the_next_validation_each_time_it_occurs(tmp_path) -> None:
    fake = FakeTrainer(tmp_path, RunHealthMonitor(reward_window=3))
    active = []
    for step in range(1, 41):
        reward = 0.3 if step < 13 else 0.3 + 0.02 * step  # rising from step 13
        fake.train_step(step, healthy(step) | ({"rollout/reward_mean": reward} if step % 4 == 1 else {}))
        if step % 8 == 0:  # Pass@1 0.5 at step 8, then falling; then back up at 40
            fake.validate(0.5 if step == 8 else 0.6 if step == 40 else 0.5 - 0.03 * step / 8)
            active.append((step, fake.monitor.active["reward_hacking"]))
    # drop below the best (0.5): 0.06 at 16, 0.09 at 24, 0.12 at 32; none at 40
    assert active == [(8, False), (16, True), (24, True), (32, True), (40, False)]
    assert fake.monitor.findings["reward_hacking"].count == 3


def test_the_state_key_does_not_depend_on_the_options() -> None:
    """A resume with another patience (or any option) still finds the monitor's state in the checkpoint."""
    assert RunHealthMonitor(patience=5).state_key == RunHealthMonitor(patience=20, stop_on=["truncation"]).state_key
