"""RunHealthMonitor: notice when a run has stopped learning, say why once, and what to try.

It watches signals the module already logs — the step's :class:`~real_lightning.step.output.StepOutput`
(``metrics``: global values, every rank sees the same keys and numbers; ``grad_norm``) and the validation
Pass@1 (read from ``trainer.callback_metrics`` as Lightning's ``EarlyStopping`` reads a monitored value: already
reduced over ranks by :class:`~real_lightning.callbacks.pass_at_k.PassAtKLogger`, so no second collective) —
and turns a condition that holds for ``patience`` steps (or a single spike) into a *finding*: logged as
``health/<name>`` (1 while it holds, else 0) and ``health/<name>_value``, printed once with its step range,
numbers, likely cause and what to try, listed in a summary at the end of ``fit`` and in
``<log dir>/health.json``. Findings named in ``stop_on`` end the run with a checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import re
import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from typing_extensions import override

from real_lightning.callbacks.health_advice import explain, graded_total
from real_lightning.callbacks.log_folder import local_log_folder
from real_lightning.callbacks.periodic import logger_step
from real_lightning.callbacks.stopping import stop_checkpoint_path
from real_lightning.callbacks.watchdog import WatchdogHooks
from real_lightning.step.output import step_output

log = logging.getLogger(__name__)

SUSTAINED = (
    "no_learning_signal", "truncation", "entropy_collapse", "entropy_explosion", "trainer_starved", "producer_idle"
)  # fmt: skip
EVENTS = ("reward_hacking", "nonfinite_loss", "grad_norm_spike", "ppo_kl_spike", "mismatch_spike", "verifier_failures")
FINDINGS = SUSTAINED + EVENTS
_LOW = ("no_learning_signal", "entropy_collapse")  # findings whose value is worse when lower
IDLE = ("time/wait_for_rollouts_s", "time/trainer_busy_s", "producer/idle_s", "time/rollout_s")
"""What a rollout batch sampled by a producer reports of the trainer's and the producer's waits and busy times."""
_PASS_AT_1 = re.compile(r"^val/(.+)/pass@1$")


@dataclass
class Finding:
    """One finding: the steps it held (first..last), how many steps or events, the triggering and worst value."""

    name: str
    first_step: int
    reported_step: int
    last_step: int
    count: int
    value: float
    worst: float
    message: str
    episodes: int = 1
    said: bool = False  # printed (once per run, a resumed one included)

    def line(self) -> str:
        unit = "steps" if self.name in SUSTAINED else "events"
        again = f", {self.episodes} episodes" if self.episodes > 1 else ""
        return (
            f"{self.name:<19} steps {self.first_step}–{self.last_step} ({self.count} {unit}{again}): "
            f"value {self.value:.4g}, worst {self.worst:.4g}"
        )

    def update(self, step: int, value: float) -> None:
        """The condition held again at ``step`` with ``value``."""
        self.last_step, self.count = step, self.count + 1
        self.worst = min(self.worst, value) if self.name in _LOW else max(self.worst, value)


# sustained condition → (the option holding its bound, direction): it holds while (mean − bound) · direction ≥ 0
_SUSTAINED_BOUNDS: dict[str, tuple[str, int]] = {
    "no_learning_signal": ("contrast_floor", -1),
    "truncation": ("truncation_ceiling", 1),
    "entropy_collapse": ("entropy_collapse", -1),
    "entropy_explosion": ("entropy_explosion", 1),
    "trainer_starved": ("starved_fraction", 1),
    "producer_idle": ("producer_idle_fraction", 1),
}


class RunHealthMonitor(WatchdogHooks):
    """Say when a run has stopped learning, why, and what to try (see the module docstring).

    A *sustained* finding starts when the mean of its value over the last ``patience`` steps is past its bound
    (a single good step in a dead stretch does not reset it; its step range starts with that window) and lasts
    while it stays there; an *event* is one step's value (or one validation's) and starts at every occurrence.
    Non-finite values are left out. Findings (``health/<name>``; in brackets ``health/<name>_value``):

    - ``no_learning_signal`` [train/contrast_fraction]: ≤ ``contrast_floor`` — (almost) no group has a label
      contrast: all rewards equal, so the loss and its gradient are 0. The message says which: all 0 (truncated,
      no answer found, or too hard) or all 1 (too easy), or equal within groups only. Under dynamic sampling
      this is the share among the groups kept (0 when none is kept);
    - ``truncation`` [rollout/truncation_rate]: ≥ ``truncation_ceiling``, with the share of the cut responses that
      held a correct answer (``verifier/truncated_zeroed``, where ``truncated_is_wrong`` zeroed them);
    - ``entropy_collapse`` / ``entropy_explosion`` [train/entropy ÷ its mean over the first
      ``entropy_baseline_steps`` steps]: ≤ ``entropy_collapse`` / ≥ ``entropy_explosion``;
    - ``trainer_starved`` [the trainer's idle share]: with a rollout producer (``data.schedule.max_staleness`` > 0),
      ``time/wait_for_rollouts_s`` ÷ (that + ``time/trainer_busy_s``) ≥ ``starved_fraction`` — the trainer spends
      that share of its time waiting for rollouts: sampling is the bottleneck even with batches in flight;
    - ``producer_idle`` [the producer's idle share]: ``producer/idle_s`` ÷ (that + ``time/rollout_s``) ≥
      ``producer_idle_fraction`` — the producer waits for the trainer's weights most of the time: sampling is so much
      faster than training that S, or the split of the machine between them, is wrong;
    - ``reward_hacking`` [Pass@1 below its best] (event, at a validation): Pass@1 (``val/average`` or the only
      set) ≥ ``pass_drop`` below its best earlier value while the training reward (mean of the last
      ``reward_window`` rollout batches) rose ≥ ``reward_rise`` since that validation;
    - ``nonfinite_loss`` [skipped updates so far] (event): an update skipped for a non-finite loss;
    - ``grad_norm_spike`` / ``ppo_kl_spike`` / ``mismatch_spike`` [the value] (events): train/grad_norm,
      |train/ppo_kl| (both on updates not skipped) or rollout/mismatch_k3 (on a rollout batch's first step) ≥
      ``spike_factor`` × its median over its last ``spike_window`` values (once 10 are seen; zeros left out: no
      contrast, or π_θ = π_old) and above ``ppo_kl_floor`` / ``mismatch_floor``;
    - ``verifier_failures`` [share] (event): ≥ ``verifier_failure_rate`` of a rollout batch's responses timed out
      or raised in the verifier (they score 0).

    Args:
        patience: steps over which a sustained finding's value is averaged before it is reported (20).
        contrast_floor: ``no_learning_signal`` bound on the share of groups with a contrast (0.02).
        truncation_ceiling: ``truncation`` bound on the share of responses cut at the length limit (0.9).
        entropy_baseline_steps: first steps whose mean entropy is the reference (10).
        entropy_collapse: ``entropy_collapse`` bound, a fraction of the starting entropy (0.05).
        entropy_explosion: ``entropy_explosion`` bound, a multiple of the starting entropy (3.0).
        starved_fraction: ``trainer_starved`` bound on the share of the trainer's time spent waiting for rollouts (0.5).
        producer_idle_fraction: ``producer_idle`` bound on the share of the producer's time spent waiting (0.5).
        reward_window: rollout batches averaged for the training reward in ``reward_hacking`` (5).
        pass_drop: fall of Pass@1 below its best that counts for ``reward_hacking`` (0.05).
        reward_rise: rise of the training reward that counts for ``reward_hacking`` (0.05).
        spike_factor: a spike is this many times the trailing median (10).
        spike_window: values in the trailing median (50: steps; rollout batches for ``mismatch_spike``).
        ppo_kl_floor: a ``ppo_kl_spike`` must also exceed this (0.02 nats per token).
        mismatch_floor: a ``mismatch_spike`` must also exceed this (1e-3).
        verifier_failure_rate: ``verifier_failures`` bound on the share of timeouts and errors (0.05).
        stop_on: findings that end the run when they start, after writing a checkpoint (the ModelCheckpoint's
            ``last.ckpt`` when it keeps one, so ``--ckpt_path last`` continues from there; else
            ``checkpoints/health-stop-step=N.ckpt``). A resumed run does not stop again for a sustained finding
            still on; it stops again when one starts anew or an event recurs.
        log_every_n_steps: log ``health/*`` every this many steps (None: the trainer's ``log_every_n_steps``)
            and at every step a finding starts.
        stall_timeout_s: a rank that finishes no step, validation batch or checkpoint in this many seconds ends the
            run: every rank still running prints its threads' stacks and which rank(s) did not arrive, and exits
            with code 124 (:mod:`~real_lightning.callbacks.watchdog`). Generous for GPU jobs (one step of the
            paper recipe takes minutes); None: off.

    Examples:
        >>> RunHealthMonitor(patience=10, stop_on=["no_learning_signal"])
        RunHealthMonitor(patience=10, stop_on=['no_learning_signal'])
    """

    def __init__(
        self,
        patience: int = 20,
        contrast_floor: float = 0.02,
        truncation_ceiling: float = 0.9,
        entropy_baseline_steps: int = 10,
        entropy_collapse: float = 0.05,
        entropy_explosion: float = 3.0,
        starved_fraction: float = 0.5,
        producer_idle_fraction: float = 0.5,
        reward_window: int = 5,
        pass_drop: float = 0.05,
        reward_rise: float = 0.05,
        spike_factor: float = 10.0,
        spike_window: int = 50,
        ppo_kl_floor: float = 0.02,
        mismatch_floor: float = 1e-3,
        verifier_failure_rate: float = 0.05,
        stop_on: list[str] | None = None,
        log_every_n_steps: int | None = None,
        stall_timeout_s: float | None = 1800.0,
    ) -> None:
        for option, value in (("patience", patience), ("entropy_baseline_steps", entropy_baseline_steps)):
            if value < 1:
                raise ValueError(f"RunHealthMonitor: {option} must be >= 1, got {value}")
        for option, value in (("reward_window", reward_window), ("spike_window", spike_window)):
            if value < 3:
                raise ValueError(f"RunHealthMonitor: {option} must be >= 3, got {value}")
        unknown = sorted(set(stop_on or ()) - set(FINDINGS))
        if unknown:
            raise ValueError(f"RunHealthMonitor: stop_on has unknown findings {unknown}; valid: {', '.join(FINDINGS)}")
        self.patience, self.contrast_floor, self.truncation_ceiling = patience, contrast_floor, truncation_ceiling
        self.entropy_baseline_steps = entropy_baseline_steps
        self.entropy_collapse, self.entropy_explosion = entropy_collapse, entropy_explosion
        self.starved_fraction, self.producer_idle_fraction = starved_fraction, producer_idle_fraction
        self.reward_window, self.pass_drop, self.reward_rise = reward_window, pass_drop, reward_rise
        self.spike_factor, self.spike_window = spike_factor, spike_window
        self.ppo_kl_floor, self.mismatch_floor = ppo_kl_floor, mismatch_floor
        self.verifier_failure_rate = verifier_failure_rate
        self.stop_on = list(stop_on or [])
        self.log_every_n_steps = log_every_n_steps
        if stall_timeout_s is not None and not stall_timeout_s > 0:
            raise ValueError(f"RunHealthMonitor: stall_timeout_s must be > 0 or null, got {stall_timeout_s}")
        self.stall_timeout_s = stall_timeout_s
        self._reset_state()

    def __repr__(self) -> str:
        return f"RunHealthMonitor(patience={self.patience}, stop_on={self.stop_on})"

    def _reset_state(self) -> None:
        self.findings: dict[str, Finding] = {}
        self.recent: dict[str, list[float]] = {}  # sustained condition → its values on the last `patience` steps
        self.active: dict[str, bool] = {}
        self.values: dict[str, float] = {}  # the latest value each finding watches
        self.entropy_start: list[float] = []
        self.windows: dict[str, list[float]] = {"grad_norm": [], "ppo_kl": [], "mismatch": []}
        self.rollout: dict[str, float] = {}  # the latest rollout batch's rollout/* and verifier/* values
        self.idle: dict[str, float] = {}  # with a rollout producer, the latest batch's waits and busy times (IDLE)
        self.rewards: list[tuple[int, float]] = []  # (step, rollout/reward_mean) per rollout batch
        self.validations: list[tuple[int, float]] = []  # (step, Pass@1)
        self.skipped = 0
        self.last_step = 0

    # --- the rules: a stream of logged values in, findings out -----------------------------------------------

    def observe(self, step: int, metrics: Mapping[str, Any], skipped: bool = False) -> list[Finding]:
        """Update with one optimizer step's logged values; return the findings that start here.

        A sustained finding starts once per episode, an event at each occurrence (``stop_on`` acts on both).

        ``metrics`` maps logged names to numbers (``train/*`` of the step, ``rollout/*`` and ``verifier/*`` on the
        first step of a rollout batch, ``train/grad_norm``); ``skipped``: the update was skipped (non-finite loss).
        """
        m = {k: _number(v) for k, v in metrics.items()}
        self.last_step = step
        started: list[Finding] = []
        fresh = "rollout/reward_mean" in m  # the first step of a rollout batch
        if fresh:
            self.rollout = {k: v for k, v in m.items() if k.startswith(("rollout/", "verifier/"))}
            self.idle = {k: m[k] for k in IDLE if k in m} if "time/wait_for_rollouts_s" in m else {}
            self.rewards.append((step, m["rollout/reward_mean"]))
        watched: dict[str, float] = {}  # this step's value of each sustained condition
        if m.get("train/contrast_fraction") is not None:
            watched["no_learning_signal"] = m["train/contrast_fraction"]
        if self.rollout.get("rollout/truncation_rate") is not None:
            watched["truncation"] = self.rollout["rollout/truncation_rate"]
        entropy = m.get("train/entropy")
        if entropy is not None and math.isfinite(entropy):
            if len(self.entropy_start) < self.entropy_baseline_steps:
                self.entropy_start.append(entropy)
            elif (start := statistics.fmean(self.entropy_start)) > 1e-6:
                watched["entropy_collapse"] = watched["entropy_explosion"] = entropy / start
        watched |= _idle_shares(self.idle)
        for name, value in watched.items():
            started += self._sustain(name, step, value)

        if skipped:
            self.skipped += 1
            self.values["nonfinite_loss"] = float(self.skipped)
            started += self._event("nonfinite_loss", step, float(self.skipped))
        grad_norm = m.get("train/grad_norm")
        if not skipped and grad_norm is not None:
            started += self._spike("grad_norm_spike", "grad_norm", step, grad_norm, 0.0)
        if not skipped and m.get("train/ppo_kl") is not None:
            started += self._spike("ppo_kl_spike", "ppo_kl", step, abs(m["train/ppo_kl"]), self.ppo_kl_floor)
        if fresh and m.get("rollout/mismatch_k3") is not None:
            started += self._spike("mismatch_spike", "mismatch", step, m["rollout/mismatch_k3"], self.mismatch_floor)
        if fresh:
            total = graded_total(self.rollout)
            failed = self.rollout.get("verifier/timeout", 0.0) + self.rollout.get("verifier/error", 0.0)
            if total > 0:
                self.values["verifier_failures"] = failed / total
                if failed / total >= self.verifier_failure_rate:
                    started += self._event("verifier_failures", step, failed / total)
        return started

    def observe_validation(self, step: int, pass_at_1: float) -> list[Finding]:
        """Record a validation's Pass@1; return ``reward_hacking`` if it occurs here (it holds until the next)."""
        self.active["reward_hacking"] = False
        previous = list(self.validations)
        self.validations.append((step, pass_at_1))
        if not previous or not self.rewards:
            return []
        best_step, best = max(previous, key=lambda v: v[1])
        drop = best - pass_at_1
        self.values["reward_hacking"] = drop
        rise = self._reward_near(step) - self._reward_near(best_step)
        if drop >= self.pass_drop and rise >= self.reward_rise:
            return self._event("reward_hacking", step, drop, best=(best_step, best), rise=rise)
        return []

    def _reward_near(self, step: int) -> float:
        """Mean training reward of the last ``reward_window`` rollout batches up to ``step`` (or the first ones)."""
        upto = [r for s, r in self.rewards if s <= step][-self.reward_window :]
        return statistics.fmean(upto or [r for _, r in self.rewards[: self.reward_window]])

    def _sustain(self, name: str, step: int, value: float) -> list[Finding]:
        """A sustained condition holds when its mean over the last ``patience`` steps is past its bound."""
        recent = self.recent.setdefault(name, [])
        recent.append(value)
        del recent[: -self.patience]
        mean = statistics.fmean(recent)
        self.values[name] = mean
        option, direction = _SUSTAINED_BOUNDS[name]
        holds = len(recent) == self.patience and (mean - getattr(self, option)) * direction >= 0
        was_active, self.active[name] = self.active.get(name, False), holds
        if not holds:
            return []
        if was_active:
            self.findings[name].update(step, mean)
            return []
        return [self._start(name, step - self.patience + 1, step, mean, count=self.patience)]

    def _event(self, name: str, step: int, value: float, **context: Any) -> list[Finding]:
        """An event starts at every occurrence (``stop_on`` acts on each); its message is written once."""
        self.active[name] = True  # for this step's health/<name>
        if name in self.findings:
            self.findings[name].update(step, value)
            return [self.findings[name]]
        return [self._start(name, step, step, value, count=1, **context)]

    def _spike(self, name: str, window: str, step: int, value: float, floor: float) -> list[Finding]:
        if value == 0 or not math.isfinite(value):  # on-policy (ppo_kl) or no contrast: no information
            return []
        history = self.windows[window]
        median = statistics.median(history) if len(history) >= 10 else None
        history.append(value)
        del history[: -self.spike_window]
        if median is None:
            return []
        ratio = value / median if median > 0 else math.inf
        self.values[name] = value
        if ratio >= self.spike_factor and value > floor:
            return self._event(name, step, value, ratio=ratio, median=median)
        return []

    def _start(self, name: str, first: int, step: int, value: float, count: int, **context: Any) -> Finding:
        finding = self.findings.get(name)
        if finding is None:
            message = explain(self, name, first, step, value, count, context)
            finding = self.findings[name] = Finding(name, first, step, step, count, value, value, message)
        else:  # a sustained condition that cleared and came back
            finding.update(step, value)
            finding.count += count - 1
            finding.episodes += 1
        return finding

    # --- Lightning hooks -----------------------------------------------------------------------------------

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.beat(f"step {trainer.global_step} done")
        output = step_output(outputs)
        skipped = output is not None and output.skipped
        metrics: dict[str, Any] = dict(output.metrics) if output is not None else {}
        if output is not None and output.grad_norm is not None and not skipped:
            metrics["train/grad_norm"] = output.grad_norm
        step = trainer.global_step
        started = self.observe(step, metrics, skipped)
        self._say_new(trainer, started)
        every = self.log_every_n_steps or trainer.log_every_n_steps or 1
        if started or step % every == 0:
            self._log(trainer)
        if started:
            self._write_json(trainer)
        for name in EVENTS:  # an event holds for its own step only (reward_hacking: until the next validation)
            if name != "reward_hacking":
                self.active[name] = False
        stop = any(f.name in self.stop_on for f in started)
        if self.stop_on and trainer.world_size > 1:  # identical inputs on every rank; agree anyway
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:  # after the events cleared: the checkpoint holds what an uninterrupted run has after this step
            self._stop(trainer, [f.name for f in started if f.name in self.stop_on])

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        scores = {m.group(1): v for k, v in trainer.callback_metrics.items() if (m := _PASS_AT_1.match(k))}
        if not scores:
            return
        pass_at_1 = _number(scores.get("average", next(iter(scores.values()))))
        started = self.observe_validation(trainer.global_step, pass_at_1)
        self._say_new(trainer, started)
        if trainer.state.fn == "fit":
            self._log(trainer)
        if started:
            self._write_json(trainer)
        stop = any(f.name in self.stop_on for f in started)
        if stop and trainer.state.fn == "fit":
            self._stop(trainer, ["reward_hacking"])

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        _say(trainer, self.summary())
        self._write_json(trainer)

    def _say_new(self, trainer: Trainer, started: list[Finding]) -> None:
        """Print each finding's message the first time it starts; recurrences show in health/* and the summary."""
        for finding in started:
            if not finding.said:
                _say(trainer, f"Run health — {finding.message}")
                finding.said = True

    def summary(self) -> str:
        """The findings so far, one line each (or that there were none)."""
        if not self.findings:
            return f"Run health: no findings in {self.last_step} steps"
        lines = [f"Run health: {len(self.findings)} finding(s) in {self.last_step} steps"]
        lines += [f"  {f.line()}" for f in sorted(self.findings.values(), key=lambda f: f.first_step)]
        return "\n".join(lines)

    def _log(self, trainer: Trainer) -> None:
        """``health/*`` at Lightning's step of this batch's ``train/*`` (kept by a resume from this step)."""
        metrics = {f"health/{name}": float(self.active.get(name, False)) for name in FINDINGS}
        metrics |= {f"health/{name}_value": v for name, v in self.values.items() if math.isfinite(v)}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=logger_step(trainer))

    def _write_json(self, trainer: Trainer) -> None:
        if not trainer.is_global_zero:
            return
        folder = local_log_folder(trainer)  # rank 0 only: no collective (not trainer.log_dir)
        folder.mkdir(parents=True, exist_ok=True)
        report = {"steps": self.last_step, "findings": [asdict(f) for f in self.findings.values()]}
        (folder / "health.json").write_text(json.dumps(report, indent=2) + "\n")

    def _stop(self, trainer: Trainer, names: list[str]) -> None:
        path = stop_checkpoint_path(trainer, "health-stop")
        trainer.save_checkpoint(path)
        trainer.should_stop = True
        resume = "last" if path.stem == "last" else str(path)
        _say(
            trainer,
            f"Run health — stopping at step {trainer.global_step} ({', '.join(names)} is in stop_on); checkpoint "
            f"written to {path}. Fix the cause, then continue with --ckpt_path {resume}",
        )

    # --- state (under the class name: one monitor per trainer, so a resume with other options keeps it) ------

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "findings": {name: asdict(f) for name, f in self.findings.items()},
            "recent": {k: list(v) for k, v in self.recent.items()},
            "active": dict(self.active),
            "values": dict(self.values),
            "entropy_start": list(self.entropy_start),
            "windows": {k: list(v) for k, v in self.windows.items()},
            "rollout": dict(self.rollout),
            "idle": dict(self.idle),
            "rewards": [list(r) for r in self.rewards],
            "validations": [list(v) for v in self.validations],
            "skipped": self.skipped,
            "last_step": self.last_step,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._reset_state()
        self.findings = {name: Finding(**f) for name, f in state_dict.get("findings", {}).items()}
        self.recent = {k: list(v) for k, v in state_dict.get("recent", {}).items()}
        self.active = dict(state_dict.get("active", {}))
        self.values = dict(state_dict.get("values", {}))
        self.entropy_start = list(state_dict.get("entropy_start", []))
        self.windows |= {k: list(v) for k, v in state_dict.get("windows", {}).items()}
        self.rollout = dict(state_dict.get("rollout", {}))
        self.idle = dict(state_dict.get("idle", {}))
        self.rewards = [(int(s), float(r)) for s, r in state_dict.get("rewards", [])]
        self.validations = [(int(s), float(p)) for s, p in state_dict.get("validations", [])]
        self.skipped = int(state_dict.get("skipped", 0))
        self.last_step = int(state_dict.get("last_step", 0))


def _idle_shares(idle: Mapping[str, float]) -> dict[str, float]:
    """The trainer's and the producer's idle shares over the latest rollout batch, where a producer reported them:
    ``trainer_starved`` = wait ÷ (wait + busy), ``producer_idle`` = idle ÷ (idle + sampling)."""
    shares = {}
    for name, waiting, busy in (
        ("trainer_starved", "time/wait_for_rollouts_s", "time/trainer_busy_s"),
        ("producer_idle", "producer/idle_s", "time/rollout_s"),
    ):
        if waiting in idle and busy in idle and idle[waiting] + idle[busy] > 0:
            shares[name] = idle[waiting] / (idle[waiting] + idle[busy])
    return shares


def _number(value: Any) -> float:
    return float(value.item() if hasattr(value, "item") else value)


def _say(trainer: Trainer, text: str) -> None:
    if trainer.is_global_zero:
        log.warning(text)
