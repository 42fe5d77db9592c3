"""real-lightning: REAL (Rewards as Labels) and GRPO-family RLVR on PyTorch Lightning."""

__version__ = "0.1.0"
