"""The metrics of one optimizer step: per-micro-batch sums kept on the device, reduced once over the ranks.

:class:`StepMetrics` adds up what each micro-batch contributes (0-dim float64 tensors on the policy's device: no
host sync in the micro-batch loop). :meth:`StepMetrics.reduce` moves them to the host once, packs them with the
rollout batch's scalars into one float64 tensor and all-reduces it (sum), and, when the rollouts carry behaviour
log-probs, all-reduces the largest mismatch (max). Every rank issues the same collectives whatever its number of
micro-batches: the packed names are fixed (a name no micro-batch added counts 0), and the ``has_…`` counts
tell every rank which loss metrics some micro-batch reported. :func:`logged_metrics` names the result.

Examples:
    >>> import torch
    >>> step = StepMetrics(torch.device("cpu"))
    >>> step.add("loss", torch.tensor(0.25))
    >>> step.add("loss", 0.5)
    >>> step.add("tokens", torch.tensor(8))
    >>> total, logged = step.reduce({"rollout/reward_mean": 0.5}, world_size=1, kl_active=False)
    >>> float(total["loss"]), float(logged["train/loss"]), float(logged["rollout/reward_mean"])
    (0.75, 0.75, 0.5)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from real_lightning.losses import LossOutput
from real_lightning.rollout.batch import RolloutBatch
from real_lightning.step.importance import ImportanceTerms, Mismatch
from real_lightning.utils.distributed import all_reduce

PER_ROLLOUT = ("scores", "grad_weights", "labels", "advantages", "clip_high_tokens")
"""[B] metrics of the losses kept per rollout (:attr:`StepResult.loss_output`), when the loss reports them."""
TOKEN_WEIGHTED = (
    "ppo_kl",
    "low_var_kl",
    "clip_fraction",
    "clip_fraction_high",
    "clip_fraction_low",
    "clip_fraction_dual",
)
"""Loss metrics that are token means: averaged over the step weighted by each micro-batch's tokens."""
SUMS = (
    "nonfinite",
    "loss",
    "tokens",
    "entropy",
    *TOKEN_WEIGHTED,
    "groups",
    "contrast_groups",
    "weight_abs_pos",
    "count_pos",
    "weight_abs_neg",
    "count_neg",
    "mismatch_abs",
    "mismatch_k3",
    "mismatch_tokens",
    "is_weight",
    "is_clipped",
    "is_units",
    "kl_ref",
    *(f"has_{n}" for n in TOKEN_WEIGHTED),  # how many micro-batches reported it, over all ranks
)
"""The sums every rank packs for the all-reduce, in order (then the rollout batch's scalars, by name)."""


@dataclass
class StepResult:
    """What one optimizer step produced.

    Attributes:
        skipped: some rank had a non-finite loss; every rank skips the update.
        metrics: scalars to log, already reduced over ranks (``train/…`` and the rollout's ``rollout/…``,
            ``time/…``, ``verifier/…`` on the first step of a rollout batch, averaged over ranks).
        loss_output: this rank's per-rollout metrics (``scores``, ``grad_weights``, ``labels``, …) of all its
            micro-batches, rows in the order of ``rollouts``; None when the rank had no rollout.
        rollouts: this rank's micro-batches, concatenated (CPU).
    """

    skipped: bool
    metrics: dict[str, Tensor] = field(default_factory=dict)
    loss_output: LossOutput | None = None
    rollouts: RolloutBatch | None = None


class StepMetrics:
    """What the micro-batches of one step add up to, on ``device`` (nothing leaves it until :meth:`reduce`).

    Args:
        device: the policy's device, where the micro-batches' tensors live.

    Attributes:
        sums: name (one of :data:`SUMS`) → [] float64 running sum.
        mismatch_max: [] float64 largest |log π_old − log π_behaviour| so far (0 before any).
        per_rollout: each micro-batch's [B] loss metrics (:data:`PER_ROLLOUT` and the [] ``weight_normalizer``).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, Tensor] = {}
        self.mismatch_max = torch.zeros((), dtype=torch.float64, device=device)
        self.per_rollout: list[dict[str, Tensor]] = []

    def _zero(self) -> Tensor:
        return torch.zeros((), dtype=torch.float64, device=self.device)

    def add(self, name: str, value: Tensor | float) -> None:
        """Add ``value`` (a 0-dim tensor of any dtype, or a Python number) to the float64 sum ``name``."""
        if isinstance(value, Tensor):
            value = value.detach().to(device=self.device, dtype=torch.float64)
        self.sums[name] = self.sums.get(name, self._zero()) + value

    def add_importance(self, terms: ImportanceTerms) -> None:
        """The truncated importance weights' sum, truncations and units (``rollout/is_…``)."""
        self.add("is_weight", terms.weight_sum)
        self.add("is_clipped", terms.clipped)
        self.add("is_units", terms.units)

    def add_mismatch(self, gap: Mismatch) -> None:
        """The engine-vs-trainer gap of a micro-batch (``rollout/mismatch_…``); the max is kept as a running max."""
        self.add("mismatch_abs", gap.abs_sum)
        self.add("mismatch_k3", gap.k3_sum)
        self.add("mismatch_tokens", gap.tokens)
        largest = gap.abs_max.detach().to(device=self.device, dtype=torch.float64)
        # as Python's max(running, value): NaN never replaces the running max
        self.mismatch_max = torch.where(largest > self.mismatch_max, largest, self.mismatch_max)

    def add_loss(self, out: LossOutput, response_mask: Tensor, entropy: Tensor | None, finite: Tensor) -> None:
        """One micro-batch's loss, its metrics and its per-rollout outputs.

        Args:
            out: the loss's output on the micro-batch (``metrics`` as :class:`~real_lightning.losses.LossOutput`).
            response_mask: [B, T] bool; its token count weighs the token-mean metrics.
            entropy: [B, T] entropy of the policy per position (nats), or None.
            finite: [] bool, whether the loss back-propagated was finite (``train/…`` counts the others).
        """
        tokens = response_mask.sum()
        self.add("nonfinite", (~finite).to(torch.float64))
        self.add("loss", out.loss.detach())
        self.add("tokens", tokens)
        self.add("entropy", (entropy * response_mask).sum() if entropy is not None else 0.0)
        metrics = out.metrics
        for name in TOKEN_WEIGHTED:
            if name in metrics:
                self.add(name, metrics[name] * tokens)
                self.add(f"has_{name}", 1.0)  # summed over ranks: a rank without micro-batches logs the same keys
        labels, weights = metrics["labels"], metrics["grad_weights"].abs()
        self.add("groups", metrics["num_groups"])
        self.add("contrast_groups", metrics["contrast_fraction"] * metrics["num_groups"])
        for side, label in (("pos", 1), ("neg", 0)):
            self.add(f"weight_abs_{side}", weights[labels == label].sum())
            self.add(f"count_{side}", (labels == label).sum())
        keep = (*PER_ROLLOUT, "weight_normalizer")
        self.per_rollout.append({k: metrics[k].detach() for k in keep if k in metrics})

    def reduce(
        self, rollout_stats: dict[str, float] | None, world_size: int, kl_active: bool
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The step's sums over all ranks, and the metrics to log (:func:`logged_metrics`): one device→host copy.

        Collectives (the same on every rank): one all-reduce (sum) of :data:`SUMS` and ``rollout_stats`` packed
        in one float64 tensor, then, when some rank's rollouts carry behaviour log-probs, one all-reduce (max).

        Returns:
            ``total``: name → [] float64 on the host, summed over ranks (the rollout stats under their own names);
            ``logged``: as :func:`logged_metrics`, float64.
        """
        host = torch.stack([self.sums.get(n, self._zero()) for n in SUMS] + [self.mismatch_max]).cpu()
        stats = dict(sorted((rollout_stats or {}).items()))
        packed = torch.cat([host[: len(SUMS)], torch.tensor([float(v) for v in stats.values()], dtype=torch.float64)])
        total = dict(zip([*SUMS, *stats], all_reduce(packed).unbind(), strict=True))
        mismatch_max = None
        if float(total["mismatch_tokens"]) > 0:  # the engine reports behaviour log-probs (every rank's does)
            mismatch_max = all_reduce(host[len(SUMS) :], "max")[0]
        return total, logged_metrics(total, list(stats), world_size, kl_active, mismatch_max)

    def loss_output(self, loss: Tensor) -> LossOutput | None:
        """This rank's per-rollout loss metrics of all its micro-batches, concatenated on the host (rows in
        micro-batch order), with the step's ``loss``; None when the rank ran no micro-batch of its own."""
        if not self.per_rollout:
            return None
        first = self.per_rollout[0]
        per_rollout = {k: torch.cat([o[k] for o in self.per_rollout]).cpu() for k in PER_ROLLOUT if k in first}
        return LossOutput(loss, per_rollout | {"weight_normalizer": first["weight_normalizer"].cpu()})

    def result(
        self, rollouts: RolloutBatch, rollout_stats: dict[str, float] | None, world_size: int, kl_active: bool
    ) -> StepResult:
        """:meth:`reduce` and the :class:`StepResult` (metrics as float32) of a step that ran ``rollouts``."""
        total, logged = self.reduce(rollout_stats, world_size, kl_active)
        return StepResult(
            bool(total["nonfinite"] > 0),
            {k: v.float() for k, v in logged.items()},
            self.loss_output(total["loss"]),
            rollouts,
        )


def logged_metrics(
    total: dict[str, Tensor],
    stats: list[str],
    world_size: int,
    kl_active: bool,
    mismatch_max: Tensor | None = None,
) -> dict[str, Tensor]:
    """Name the step's metrics from its sums over all ranks (float64, 0-dim, on the host).

    - ``train/loss``: the step's loss (each micro-batch's is already over the step's counts); ``train/entropy``
      (nats), ``train/ppo_kl``, ``train/low_var_kl`` and the clip fractions: means over the step's response tokens
      (a loss metric only when some micro-batch reported it); ``train/contrast_fraction``: over groups;
      ``train/weight_abs_mean_pos`` / ``_neg``: mean |grad weight| over positive / negative rollouts;
      ``train/kl_ref`` with the KL term (already over the step's tokens);
    - the rollout batch's scalars ``stats``, averaged over the ``world_size`` ranks;
    - ``rollout/is_weight_mean`` and ``rollout/is_clipped_fraction`` (per token or rollout) when importance
      sampling weighed some unit; ``rollout/mismatch_abs_mean``, ``_k3`` (nats per token) and
      ``rollout/mismatch_abs_max`` (``mismatch_max``) when the rollouts carry behaviour log-probs.
    """
    tokens = total["tokens"].clamp_min(1)
    logged: dict[str, Tensor] = {
        "train/loss": total["loss"],
        "train/entropy": total["entropy"] / tokens,
        "train/contrast_fraction": total["contrast_groups"] / total["groups"].clamp_min(1),
        "train/weight_abs_mean_pos": total["weight_abs_pos"] / total["count_pos"].clamp_min(1),
        "train/weight_abs_mean_neg": total["weight_abs_neg"] / total["count_neg"].clamp_min(1),
    }
    logged.update({f"train/{n}": total[n] / tokens for n in TOKEN_WEIGHTED if float(total[f"has_{n}"]) > 0})
    if kl_active:
        logged["train/kl_ref"] = total["kl_ref"]  # each micro-batch's share is already over the step's tokens
    logged.update({k: total[k] / world_size for k in stats})
    if float(total["is_units"]) > 0:
        logged["rollout/is_weight_mean"] = total["is_weight"] / total["is_units"]
        logged["rollout/is_clipped_fraction"] = total["is_clipped"] / total["is_units"]
    if float(total["mismatch_tokens"]) > 0:
        mismatch_tokens = total["mismatch_tokens"]
        logged["rollout/mismatch_abs_mean"] = total["mismatch_abs"] / mismatch_tokens
        logged["rollout/mismatch_k3"] = total["mismatch_k3"] / mismatch_tokens
        if mismatch_max is not None:
            logged["rollout/mismatch_abs_max"] = mismatch_max
    return logged
