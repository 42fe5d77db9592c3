"""real-lightning: REAL (Rewards as Labels) and GRPO-family RLVR on PyTorch Lightning.

Where things live (each package's docstring says more):

- :mod:`real_lightning.cli` — the ``real-lightning`` command; :mod:`real_lightning.module` — ``RealPolicyModule``,
  which owns the policy, runs one optimizer step per ``training_step`` and pushes weights to the engines;
- :mod:`real_lightning.step` — the step itself (micro-batches of whole groups, importance sampling, KL, metrics)
  and the :class:`~real_lightning.step.output.StepOutput` callbacks read;
- :mod:`real_lightning.losses` — REAL and the GRPO/DAPO/GSPO baselines as pure functions;
- :mod:`real_lightning.rollout` — rollout records, the engine protocol and engines, the collector, the rollout
  producer of asynchronous rollouts (``rollout.producer``);
- :mod:`real_lightning.rewards` — verifiable rewards and their time-bounded, parallel grading;
- :mod:`real_lightning.data` — datasets, prompts and the ``RolloutDataModule``;
- :mod:`real_lightning.policy` — loading, sharding (FSDP2), the reference policy, weights for engines, export;
- :mod:`real_lightning.logprobs` — per-token log-probs without [B, T, V] temporaries;
- :mod:`real_lightning.checkpoints` — resume that tells the truth, checkpoint directories read safely;
- :mod:`real_lightning.callbacks` — Pass@k, gradient allocation, samples, run health, stops, the stall watchdog;
- :mod:`real_lightning.analysis` — reading runs: allocation statistics, evaluation tables, plots;
- :mod:`real_lightning.utils` — collectives, dtypes, registries, group operations.
"""

__version__ = "0.1.0"
