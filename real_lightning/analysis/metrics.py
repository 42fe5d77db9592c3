"""Pass@k with the unbiased estimator of Chen et al. (2021), as a torchmetrics ``Metric``."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


def pass_at_k(correct: Tensor, k: int) -> Tensor:
    """[P] unbiased pass@k of each prompt from its n samples, ``correct`` [P, n] bool.

    pass@k = 1 − C(n − c, k) / C(n, k) with c correct samples, evaluated as
    1 − Π_{i = n − c + 1}^{n} (1 − k / i) for numerical stability; 1 when n − c < k.
    """
    if correct.dim() != 2:
        raise ValueError(f"correct must be [num_prompts, n], got shape {tuple(correct.shape)}")
    n = correct.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n] = [1, {n}], got {k}")
    c = correct.sum(-1, dtype=torch.float64)  # [P]
    i = torch.arange(1, n + 1, dtype=torch.float64, device=correct.device)  # [n]
    factors = torch.where(i[None, :] > (n - c)[:, None], 1 - k / i[None, :], torch.ones((), dtype=torch.float64))
    return torch.where(n - c < k, torch.ones_like(c), 1 - factors.prod(-1))


class PassAtK(Metric):
    """Mean unbiased pass@k over prompts.

    Args:
        k: samples allowed per prompt; every update must bring n ≥ k samples per prompt.

    Examples:
        >>> metric = PassAtK(1)
        >>> metric.update(torch.tensor([[True, False, False, False], [True, True, True, True]]))
        >>> metric.compute()
        tensor(0.6250, dtype=torch.float64)
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, k: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("prompts", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, correct: Tensor) -> None:
        """Add prompts: ``correct`` [num_prompts, n] bool."""
        self.total += pass_at_k(correct.bool(), self.k).sum()
        self.prompts += correct.shape[0]

    def compute(self) -> Tensor:
        return self.total / self.prompts.clamp_min(1)
