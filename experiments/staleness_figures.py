"""The staleness study's figures, drawn from its committed summary (what docs/staleness.md shows).

    python -m experiments.staleness_report experiments/results/staleness.json --images docs/images

- ``staleness_pass_at_1.png``: held-out Pass@1 against the optimizer step, one panel per staleness level S, every
  arm as its mean over seeds (line) and min–max over seeds (band);
- ``staleness_mechanism.png``: per arm, the KL of the policy being trained from the behaviour policy that sampled
  its mini-batch (``train/ppo_kl``, nats per token: at S = 0 the drift of the rollout batch's earlier updates, at
  S = 32 that of the ~128 updates since its sampling), the 90th percentile of |s| over negative rollouts, and the
  token entropy (nats), each smoothed over 10 steps; solid at the highest S, dashed at S = 0. The KL and |s|
  panels are on a log scale, which leaves out the few smoothed points where the sampled KL estimate is ≤ 0.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from experiments.replication_report import band, save_figure
from experiments.staleness import ARMS

COLORS = {
    "real": "tab:blue",
    "grpo": "tab:orange",
    "dapo": "tab:red",
    "grpo_dual_clip": "tab:purple",
    "real_s0": "tab:gray",
}
PASS1 = "val/held_out/pass@1"
MECHANISM_PANELS = [
    ("train/ppo_kl", "KL(behaviour policy ‖ π_θ), nats / token", "log"),
    ("mechanism/score_abs_p90_neg", "p90 |s|, negative rollouts", "log"),
    ("train/entropy", "token entropy (nats)", "linear"),
]
"""(logged tag, panel title, y scale) of ``staleness_mechanism.png``."""


def pass_at_1_figure(runs: dict[str, dict[int, dict[int, dict]]], out: Path) -> Path:
    """One panel per staleness level of ``runs`` (arm → S → seed → record): Pass@1 per arm, mean and band."""
    levels = sorted({s for by_s in runs.values() for s in by_s})
    fig, axes = plt.subplots(1, len(levels), figsize=(6 * len(levels), 4.2), sharey=True, squeeze=False)
    for ax, s in zip(axes[0], levels, strict=True):
        for arm in [a for a in ARMS if s in runs.get(a, {})]:
            seeds = runs[arm][s]
            band(ax, list(seeds.values()), PASS1, COLORS[arm], f"{arm} ({len(seeds)} seeds)")
        ax.set(title=f"held-out Pass@1, S = {s}", xlabel="optimizer step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return save_figure(fig, out)


def mechanism_figure(runs: dict[str, dict[int, dict[int, dict]]], out: Path) -> Path:
    """The panels of ``MECHANISM_PANELS``: every arm at the highest S (solid) and at S = 0 (dashed)."""
    levels = sorted({s for by_s in runs.values() for s in by_s})
    fig, axes = plt.subplots(1, len(MECHANISM_PANELS), figsize=(6 * len(MECHANISM_PANELS), 4.2))
    for ax, (tag, title, scale) in zip(axes, MECHANISM_PANELS, strict=True):
        for arm in [a for a in ARMS if a in runs]:
            for s, style in [(levels[-1], "-"), (0, "--")] if levels[-1] != 0 else [(0, "-")]:
                seeds = runs[arm].get(s, {})
                if seeds:
                    band(ax, list(seeds.values()), tag, COLORS[arm], f"{arm}, S = {s}", window=10, style=style)
        ax.set(title=title, xlabel="optimizer step", yscale=scale)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    return save_figure(fig, out)


def figures(runs: dict[str, dict[int, dict[int, dict]]], images: Path) -> list[Path]:
    """Both PNGs of the study into ``images``."""
    return [
        pass_at_1_figure(runs, images / "staleness_pass_at_1.png"),
        mechanism_figure(runs, images / "staleness_mechanism.png"),
    ]
