"""Rollouts: typed batches, the engine protocol, Hugging Face generation, the rollout stream."""

from real_lightning.rollout.batch import RolloutBatch, ValidationRollouts
from real_lightning.rollout.engine import Generation, RolloutEngine
from real_lightning.rollout.hf import HFEngine

__all__ = ["Generation", "HFEngine", "RolloutBatch", "RolloutEngine", "ValidationRollouts"]
