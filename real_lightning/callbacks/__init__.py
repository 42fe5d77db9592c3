"""Callbacks: Pass@k on validation sets."""

from real_lightning.callbacks.pass_at_k import PassAtKLogger

__all__ = ["PassAtKLogger"]
