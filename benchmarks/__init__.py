"""Measurements: speed and memory of real-lightning's losses, log-probs, updates, generation and training steps.

Each script is run as a module from the repository root (``python -m benchmarks.step_time``, ...); the method
and the recorded results are in ``benchmarks/README.md``. Not part of the installed package.
"""
