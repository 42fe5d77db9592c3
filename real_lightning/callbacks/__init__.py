"""Callbacks: Pass@k on validation sets, gradient-weight allocation, the staleness mechanism, rollout samples,
run health."""

from real_lightning.callbacks.gradient_weights import GradientWeightMonitor
from real_lightning.callbacks.mechanism import MechanismMonitor
from real_lightning.callbacks.pass_at_k import PassAtKLogger
from real_lightning.callbacks.rollout_samples import RolloutSampleLogger
from real_lightning.callbacks.run_health import RunHealthMonitor

__all__ = ["GradientWeightMonitor", "MechanismMonitor", "PassAtKLogger", "RolloutSampleLogger", "RunHealthMonitor"]
