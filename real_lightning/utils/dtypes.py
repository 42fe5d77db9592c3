"""The one compute-dtype rule shared by the log-probabilities and the losses, and dtype names in configs."""

from __future__ import annotations

import torch

#: dtype names accepted in configs (``model.dtype``, ``model.fsdp.param_dtype``, ...).
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def torch_dtype(name: str | None) -> torch.dtype | None:
    """The torch dtype of a config name (:data:`DTYPES`); None for None or "" (the checkpoint's own dtype)."""
    return DTYPES[name] if name else None


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The math runs in float32 at least: bfloat16/float16 are promoted, float64 is kept.

    Examples:
        >>> compute_dtype(torch.bfloat16), compute_dtype(torch.float64)
        (torch.float32, torch.float64)
    """
    return torch.promote_types(dtype, torch.float32)
