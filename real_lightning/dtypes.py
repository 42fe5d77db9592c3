"""The one compute-dtype rule shared by the log-probabilities and the losses."""

from __future__ import annotations

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The math runs in float32 at least: bfloat16/float16 are promoted, float64 is kept.

    Example:
        >>> compute_dtype(torch.bfloat16), compute_dtype(torch.float64)
        (torch.float32, torch.float64)
    """
    return torch.promote_types(dtype, torch.float32)
