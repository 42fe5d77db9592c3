"""Checkpoints: reading them without running code from them, and resuming that tells the truth."""
