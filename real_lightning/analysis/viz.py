"""Plots from run logs: ``real-lightning plot RUN_DIR [RUN_DIR ...] --out DIR``.

Writes PNGs:

- ``pass_at_1.png``: validation Pass@1 against step, every run (and every validation set) on one
  figure — REAL and its baselines side by side;
- ``entropy.png``: mean token entropy of the policy against step;
- ``weights_vs_score.png``: per-rollout gradient weight against score s, by label, from the
  :class:`~real_lightning.callbacks.GradientWeightMonitor` records (one panel per run that has them).

A run directory is a logger version directory (``runs/quickstart/version_0``) or any folder above
one; the newest version below it is used.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

_SCALARS_ONLY = {"scalars": 0, "histograms": 1, "tensors": 1}


def find_run(path: Path) -> Path:
    """The directory holding the event files of ``path`` (itself, or its newest ``version_*``)."""
    if any(path.glob("events.out.tfevents.*")):
        return path
    candidates = sorted((p.parent for p in path.rglob("events.out.tfevents.*")), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise FileNotFoundError(f"no TensorBoard event files under {path}")
    return candidates[-1]


def load_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """All scalar series of a run: tag → [(step, value), ...]."""
    events = EventAccumulator(str(run), size_guidance=_SCALARS_ONLY)
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def run_label(run: Path) -> str:
    """``quickstart/version_0`` → ``quickstart``; keeps the version when it is not 0."""
    name, version = run.parent.name, run.name
    return name if version in ("version_0", "") else f"{name}/{version}"


def _line_plot(series: dict[str, list[tuple[int, float]]], title: str, ylabel: str, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in series.items():
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, marker="o" if len(points) < 30 else None, label=label)
    ax.set(title=title, xlabel="optimizer step", ylabel=ylabel)
    ax.grid(alpha=0.3)
    if series:
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_pass_at_1(runs: Sequence[Path], out: Path) -> Path:
    series = {}
    for run in runs:
        for tag, points in load_scalars(run).items():
            if tag.startswith("val/") and tag.endswith("/pass@1"):
                dataset = tag.removeprefix("val/").removesuffix("/pass@1")
                series[f"{run_label(run)} · {dataset}"] = points
    if not series:
        raise ValueError(f"no val/<set>/pass@1 scalars in {', '.join(map(str, runs))}")
    return _line_plot(series, "Validation Pass@1", "Pass@1", out)


def plot_entropy(runs: Sequence[Path], out: Path) -> Path:
    series = {run_label(run): load_scalars(run).get("train/entropy", []) for run in runs}
    return _line_plot({k: v for k, v in series.items() if v}, "Policy entropy", "mean token entropy (nats)", out)


def plot_weights_vs_score(runs: Sequence[Path], out: Path, records_dir: str = "gradient_weights") -> Path | None:
    import pandas as pd

    tables = {run_label(run): run / records_dir for run in runs if (run / records_dir).is_dir()}
    if not tables:
        return None
    fig, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 4.5), squeeze=False)
    for ax, (label, folder) in zip(axes[0], tables.items(), strict=True):
        frame = pd.read_parquet(folder)
        for value, name, color in ((1, "positive", "tab:green"), (0, "negative", "tab:red")):
            part = frame[frame["label"] == value]
            ax.scatter(part["score"], part["weight"], s=6, alpha=0.4, color=color, label=name)
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set(title=f"{label}: ∂L/∂s by label", xlabel="score s (mean token log-ratio)", ylabel="gradient weight")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_runs(paths: Sequence[Path], out_dir: Path) -> list[Path]:
    """Write every plot that the runs' logs support; returns the PNG paths."""
    runs = [find_run(Path(p)) for p in paths]
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [plot_pass_at_1(runs, out_dir / "pass_at_1.png"), plot_entropy(runs, out_dir / "entropy.png")]
    scatter = plot_weights_vs_score(runs, out_dir / "weights_vs_score.png")
    return written + ([scatter] if scatter else [])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="real-lightning plot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (or folders above them)")
    parser.add_argument("--out", type=Path, default=Path("plots"), help="folder for the PNGs")
    args = parser.parse_args(argv)
    for path in plot_runs(args.runs, args.out):
        print(path)
