"""What a user reads when a run-health finding starts: what happened (with numbers), the likely cause, what to try."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any, Protocol

from real_lightning.rewards.math import STATUSES


class HealthState(Protocol):
    """What the advice reads of the monitor (:class:`~real_lightning.callbacks.run_health.RunHealthMonitor`):
    its thresholds and the history it keeps."""

    rollout: Mapping[str, float]  # the latest rollout batch's rollout/* and verifier/* values
    idle: Mapping[str, float]  # with a rollout producer: the latest batch's waits and busy times
    rewards: list[tuple[int, float]]  # (step, rollout/reward_mean) per rollout batch
    entropy_start: list[float]
    contrast_floor: float
    truncation_ceiling: float
    entropy_collapse: float
    entropy_explosion: float
    starved_fraction: float
    producer_idle_fraction: float
    spike_window: int


def explain(
    monitor: HealthState, name: str, first: int, step: int, value: float, count: int, context: dict[str, Any]
) -> str:
    """What a user reads when ``name`` starts: what happened (with numbers), the likely cause, what to try."""
    rollout = monitor.rollout
    reward = rollout.get("rollout/reward_mean", math.nan)
    truncation = rollout.get("rollout/truncation_rate", math.nan)
    span = f"steps {first}–{step}" if first != step else f"step {step}"
    if name == "no_learning_signal":
        what = (
            f"no learning signal ({span}): {value:.0%} of the groups had a label contrast (mean of "
            f"train/contrast_fraction over {count} steps ≤ {monitor.contrast_floor}): the loss and its gradient are 0."
        )
        if reward <= 0.02:
            no_answer = _share(rollout, "no_answer")
            facts = f"every reward is {reward:.3f} ({truncation:.0%} of the latest responses hit the length limit, "
            facts += f"the verifier found no answer in {no_answer:.0%})"
            earlier = [(s, r) for s, r in monitor.rewards if s < first]
            peak_step, peak = max(earlier, key=lambda sr: sr[1]) if earlier else (0, 0.0)
            if peak >= 0.1:
                cause = f"{facts}, after a reward of {peak:.3f} at step {peak_step}: updates too large broke the policy"
                advice = (
                    "lower model.lr or take fewer optimizer steps per rollout batch (data.schedule) and restart, "
                    f"from a checkpoint saved before step {first} if one was kept (export it, then --model.pretrained)"
                )
            elif truncation >= 0.5:
                cause = f"{facts}: responses are cut before their answer and score 0"
                advice = "raise data.engine.init_args.max_new_tokens (see the truncation finding)"
            elif no_answer >= 0.5:
                cause = f"{facts}: the answers are not in the format the verifier parses"
                advice = (
                    "check the answer format against data.verifier.grader (and answer_after_think) on a few samples"
                )
            else:
                cause = f"{facts}: the task is too hard for the policy"
                advice = "start from a stronger or warm-started policy, or use easier prompts first"
        elif reward >= 0.98:
            cause = f"every reward is {reward:.3f}: the task is too easy (or the reward function always returns 1)"
            advice = "use harder prompts, or drop prompts the policy always solves"
        else:
            cause = f"rewards ({reward:.3f} on average) differ between prompts but not within a group"
            advice = "raise data.schedule.rollouts_per_prompt or the sampling temperature"
    elif name == "truncation":
        zeroed = rollout.get("verifier/truncated_zeroed")
        total = graded_total(rollout)
        correct = ""
        if zeroed is not None and total > 0 and truncation > 0:
            correct = f", {zeroed / (truncation * total):.0%} of them with a correct answer that scored 0"
        what = (
            f"responses hit the length limit ({span}): {value:.0%} stopped at max_new_tokens without EOS (mean of "
            f"rollout/truncation_rate over {count} steps ≥ {monitor.truncation_ceiling}; the latest rollout batch: "
            f"{truncation:.0%}{correct})."
        )
        cause = "the policy stopped emitting EOS (often after updates that were too large), or the limit is too short"
        advice = (
            "raise data.engine.init_args.max_new_tokens if answers need more tokens; otherwise lower model.lr "
            "or take fewer optimizer steps per rollout batch (RolloutSampleLogger shows the responses)"
        )
    elif name in ("entropy_collapse", "entropy_explosion"):
        start = statistics.fmean(monitor.entropy_start)
        bound = monitor.entropy_collapse if name == "entropy_collapse" else monitor.entropy_explosion
        what = (
            f"entropy {'collapse' if name == 'entropy_collapse' else 'explosion'} ({span}): the token entropy is "
            f"{value:.3g}× its starting value (mean over {count} steps; {start:.4g} → {value * start:.4g} nats, "
            f"bound {bound}×)."
        )
        if name == "entropy_collapse":
            cause = "the policy samples (almost) one response per prompt, so groups lose their contrast"
            if reward >= 0.9:
                cause += f" (the reward is {reward:.3f}: a policy that solves its task may rightly be this sure)"
            advice = "lower model.lr, raise the sampling temperature, or add a KL term (model.kl_coef)"
        else:
            cause = "the policy drifts towards random text: updates too large, or negatives' weights dominating"
            advice = "lower model.lr, keep trainer.gradient_clip_val, and read a few samples (RolloutSampleLogger)"
    elif name in ("trainer_starved", "producer_idle"):
        times = monitor.idle
        wait, busy = times.get("time/wait_for_rollouts_s", math.nan), times.get("time/trainer_busy_s", math.nan)
        idle, sampling = times.get("producer/idle_s", math.nan), times.get("time/rollout_s", math.nan)
        latest = (
            f"the latest rollout batch: the trainer waited {wait:.3g} s and trained {busy:.3g} s, the producer "
            f"waited {idle:.3g} s and sampled {sampling:.3g} s"
        )
        if name == "trainer_starved":
            what = (
                f"trainer starved by its rollout producer ({span}): it waited for rollouts {value:.0%} of its time "
                f"(mean over {count} steps ≥ {monitor.starved_fraction}; {latest})."
            )
            cause = (
                "sampling a rollout batch takes longer than training on one, even with batches in flight: the "
                "producer is the bottleneck, and a larger data.schedule.max_staleness only helps when its slowness "
                "comes in bursts"
            )
            advice = (
                "give the producer more of the machine (data.producer.threads; on GPUs a faster engine, "
                "real_lightning.rollout.VLLMEngine), shorten responses (max_new_tokens), or train more per rollout "
                "batch (data.schedule.prompts_per_minibatch, ppo_epochs)"
            )
        else:
            what = (
                f"rollout producer idle ({span}): it waited for the trainer's weights {value:.0%} of its time "
                f"(mean over {count} steps ≥ {monitor.producer_idle_fraction}; {latest})."
            )
            cause = (
                "sampling is much faster than training: the producer finishes the batches the staleness bound "
                "allows and waits; rollouts are older than the speed needs"
            )
            advice = (
                "lower data.schedule.max_staleness (with S ≥ 2, S = 1 keeps the same speed with fresher rollouts), "
                "or move cores or GPUs from the producer (data.producer.threads) to the trainer"
            )
    elif name == "reward_hacking":
        best_step, best = context["best"]
        what = (
            f"reward rising while validation falls (step {step}): Pass@1 {best:.3f} (step {best_step}) → "
            f"{best - value:.3f}, while the training reward rose {context['rise']:+.3f}."
        )
        cause = "the policy learns what the training reward pays for but the held-out task does not"
        advice = "read high-reward samples for a loophole, make the verifier stricter, keep the best-Pass@1 checkpoint"
    elif name == "nonfinite_loss":
        what = f"non-finite loss (step {step}): the update was skipped on every rank ({value:.0f} so far)."
        cause = "overflow in low precision, extreme log-ratios (π_θ far from π_old), or NaN weights"
        advice = "lower model.lr; prefer bf16 or float32 to float16; a run that keeps skipping does not learn"
    elif name in ("grad_norm_spike", "ppo_kl_spike", "mismatch_spike"):
        key = {"grad_norm_spike": "train/grad_norm", "ppo_kl_spike": "train/ppo_kl"}.get(name, "rollout/mismatch_k3")
        what = (
            f"{key} spike (step {step}): {value:.4g}, {context['ratio']:.3g}× its median over the last "
            f"{monitor.spike_window} steps ({context['median']:.4g})."
        )
        cause, advice = {
            "grad_norm_spike": (
                "an outlier batch or an unstable update",
                "keep trainer.gradient_clip_val; lower model.lr if it recurs",
            ),
            "ppo_kl_spike": (
                "π_θ moved far from π_old within a rollout batch",
                "lower model.lr or take fewer optimizer steps per rollout batch (data.schedule)",
            ),
            "mismatch_spike": (
                "the sampler's distribution differs from the trainer's (precision, kernels, or stale weights)",
                "check the engine's dtype and weight sync; model.importance_sampling: token corrects small gaps",
            ),
        }[name]
    else:  # verifier_failures
        timeouts, errors = rollout.get("verifier/timeout", 0.0), rollout.get("verifier/error", 0.0)
        what = (
            f"verifier failures (step {step}): {value:.0%} of the rollout batch's responses were not graded "
            f"({timeouts:.3g} timeouts, {errors:.3g} errors per rank, averaged over ranks); they score 0."
        )
        cause = "a reward function that is slow or raises on some responses"
        advice = "raise data.verifier.timeout_s or data.verifier.workers; the log names the first error"
    return f"{what}\n  Likely cause: {cause}.\n  Try: {advice}."


def graded_total(rollout: Mapping[str, float]) -> float:
    """Responses the verifier graded in a rollout batch: the sum of its ``verifier/<status>`` counts."""
    return sum(rollout.get(f"verifier/{status}", 0.0) for status in STATUSES)


def _share(rollout: Mapping[str, float], status: str) -> float:
    """Share of a rollout batch's graded responses with ``status`` (0 when none was graded)."""
    total = graded_total(rollout)
    return rollout.get(f"verifier/{status}", 0.0) / total if total > 0 else 0.0
