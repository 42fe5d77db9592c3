"""Tables and figures of the replication from its summary (``replicate.py --summary``): what docs/replication.md shows.

    python -m experiments.replication_report experiments/results/replication.json --images docs/images
    python -m experiments.replication_report experiments/results/replication.json \
        experiments/results/replication_real_lr3e-05.json       # with the REAL lr ablation: "real lr 3e-05"

Prints three markdown tables and writes three PNGs:

- held-out Pass@1 and pass@8 per loss, mean ± sample standard deviation over seeds, at the start, after 100
  steps, at the end, and averaged over the last ``--late`` validations of each run (one validation is 256 prompts
  × 8 samples, so a single point moves by ~0.01 from sampling alone; the late average is the comparison);
- REAL minus each baseline on that late average, paired by seed (the same seed draws the same prompts); a loss
  run at several lrs (several summaries) is one row per lr;
- the gradient-allocation statistics of ``GradientWeightMonitor`` per loss, averaged over steps and seeds;
- ``replication_pass_at_k.png`` (Pass@1 and pass@8 against step: mean line, min–max band over seeds),
  ``replication_training.png`` (entropy and training reward, smoothed), ``replication_allocation.png``
  (largest rollout's share of its group's |weight| and the share of positives with weight 0, smoothed).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from experiments.replicate import LOSSES, parse_folder

COLORS = {"real": "tab:blue", "real_bce": "tab:cyan", "grpo": "tab:orange", "dapo": "tab:red", "gspo": "tab:green"}
PASS1, PASS8 = "val/held_out/pass@1", "val/held_out/pass@8"
ALLOCATION = ("domination_mean", "domination_max", "pos_zero_fraction", "rank_corr_pos", "rank_corr_neg")

Curve = list[list[float]]  # [[step, value], ...]


def runs_by_loss(summaries: list[dict]) -> dict[str, dict[str, dict]]:
    """The main stage's finished runs of every summary, ``{label: {run folder: record}}``, in the order of
    :data:`LOSSES`. The label is the loss, or ``"<loss> lr <lr>"`` where the summaries hold it at several lrs."""
    grouped: dict[str, dict[str, dict[str, dict]]] = {}  # loss → lr → runs
    for summary in summaries:
        for loss, runs in summary.get("main", {}).items():
            for run, record in runs.items():
                grouped.setdefault(loss, {}).setdefault(lr_of(run), {})[run] = record
    labelled = {}
    for loss in [name for name in LOSSES if name in grouped]:
        for lr, runs in grouped[loss].items():
            labelled[loss if len(grouped[loss]) == 1 else f"{loss} lr {lr}"] = runs
    return labelled


def loss_of(label: str) -> str:
    """``"real lr 3e-05"`` → ``"real"``."""
    return label.split(" lr ")[0]


def lr_of(run: str) -> str:
    """``lr0.0001-seed2`` → ``"0.0001"`` (as the folder writes it)."""
    return f"{parse_folder(run)[0]:g}"


def seed_of(run: str) -> int:
    """``lr0.0001-seed2`` → 2."""
    return parse_folder(run)[1]


def value_at(curve: Curve, step: int) -> float:
    """The curve's value at the last point with a step ≤ ``step`` (its first point if none)."""
    before = [value for at, value in curve if at <= step]
    return before[-1] if before else curve[0][1]


def late_mean(curve: Curve, late: int) -> float:
    """Mean of the last ``late`` points."""
    return statistics.fmean(value for _, value in curve[-late:])


def mean_sd(values: list[float]) -> str:
    """``0.372 ± 0.008`` (sample sd over seeds; no ± for one seed)."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def pass_table(runs: dict[str, dict[str, dict]], late: int) -> str:
    """Markdown: held-out Pass@1 and pass@8 per loss, mean ± sd over seeds."""
    lines = [
        f"| loss | lr | seeds | Pass@1 step 0 | Pass@1 step 100 | Pass@1 end | Pass@1 last {late} | pass@8 end | "
        f"pass@8 last {late} | entropy last 100 steps | response tokens last 100 steps | health findings |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for loss, records in runs.items():
        p1 = [r["curves"][PASS1] for r in records.values()]
        p8 = [r["curves"][PASS8] for r in records.values()]
        entropy = [late_mean(r["curves"]["train/entropy"], 20) for r in records.values()]  # logged every 5 steps
        length = [late_mean(r["curves"]["rollout/response_length_mean"], 20) for r in records.values()]
        findings = sorted({f["name"] for r in records.values() for f in r["health"]})
        lr = {lr_of(run) for run in records}
        lines.append(
            f"| {loss} | {', '.join(sorted(lr))} | {len(records)} | {mean_sd([c[0][1] for c in p1])} | "
            f"{mean_sd([value_at(c, 100) for c in p1])} | {mean_sd([c[-1][1] for c in p1])} | "
            f"**{mean_sd([late_mean(c, late) for c in p1])}** | {mean_sd([c[-1][1] for c in p8])} | "
            f"{mean_sd([late_mean(c, late) for c in p8])} | {mean_sd(entropy)} | {mean_sd(length)} | "
            f"{', '.join(findings) or '–'} |"
        )
    return "\n".join(lines)


def paired_table(runs: dict[str, dict[str, dict]], late: int, reference: str = "real") -> str:
    """Markdown: each run set of the ``reference`` loss minus each other loss's, on the late Pass@1 and pass@8,
    paired by seed."""
    references = [label for label in runs if loss_of(label) == reference]
    if not references:
        return ""
    lines = [
        f"| comparison | seeds paired | Δ Pass@1 last {late} (mean ± sd) | per seed | Δ pass@8 last {late} |",
        "|---|---|---|---|---|",
    ]
    for ref_label in references:
        ref = {seed_of(run): r for run, r in runs[ref_label].items()}
        for label, records in runs.items():
            if loss_of(label) == reference:
                continue
            other = {seed_of(run): r for run, r in records.items()}
            seeds = sorted(ref.keys() & other.keys())
            if not seeds:
                continue
            d1 = [late_mean(ref[s]["curves"][PASS1], late) - late_mean(other[s]["curves"][PASS1], late) for s in seeds]
            d8 = [late_mean(ref[s]["curves"][PASS8], late) - late_mean(other[s]["curves"][PASS8], late) for s in seeds]
            per_seed = ", ".join(f"{d:+.3f}" for d in d1)
            lines.append(f"| {ref_label} − {label} | {len(seeds)} | {mean_sd(d1)} | {per_seed} | {mean_sd(d8)} |")
    return "\n".join(lines)


def allocation_table(runs: dict[str, dict[str, dict]]) -> str:
    """Markdown: the gradient-allocation statistics per loss, mean over every recorded step and seed."""
    lines = ["| loss | " + " | ".join(ALLOCATION) + " |", "|---|" + "---|" * len(ALLOCATION)]
    for loss, records in runs.items():
        cells = []
        for stat in ALLOCATION:
            values = [v for r in records.values() for _, v in r["curves"].get(f"weights/{stat}", [])]
            cells.append(f"{statistics.fmean(values):.3f}" if values else "–")
        lines.append(f"| {loss} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def band(
    ax: plt.Axes, records: Iterable[dict], key: str, color: str, label: str, window: int = 1, style: str = "-"
) -> None:
    """Mean over seeds as a line, min–max over seeds as a band, at the steps every seed logged (a resumed run can
    lack one validation, so the seeds' curves are aligned by step, not by position), each seed's curve first
    smoothed by a trailing mean over ``window`` points."""
    curves = [dict(r["curves"][key]) for r in records if r["curves"].get(key)]
    if not curves:
        return
    steps = sorted(set.intersection(*(set(curve) for curve in curves)))
    smoothed = []
    for curve in curves:
        values = [curve[at] for at in steps]
        smoothed.append([statistics.fmean(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))])
    columns = list(zip(*smoothed, strict=True))
    ax.plot(steps, [statistics.fmean(c) for c in columns], color=color, label=label, linestyle=style)
    if len(curves) > 1:
        ax.fill_between(steps, [min(c) for c in columns], [max(c) for c in columns], color=color, alpha=0.15)


def save_figure(fig: plt.Figure, out: Path) -> Path:
    """Lay out, write at 110 dpi (creating ``out``'s folder) and close ``fig``; returns ``out``."""
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def figure(runs: dict[str, dict[str, dict]], panels: list[tuple[str, str, int]], out: Path) -> Path:
    """One row of panels ``(metric key, title, smoothing window)``, every loss on each."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2))
    for ax, (key, title, window) in zip(axes, panels, strict=True):
        seen: set[str] = set()
        for label, records in runs.items():
            style = "--" if loss_of(label) in seen else "-"  # a loss's second lr: dashed
            seen.add(loss_of(label))
            band(ax, records.values(), key, COLORS[loss_of(label)], f"{label} ({len(records)} seeds)", window, style)
        ax.set(title=title, xlabel="optimizer step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return save_figure(fig, out)


def figures(runs: dict[str, dict[str, dict]], images: Path) -> list[Path]:
    """The three PNGs of the report."""
    pass_at_k = [(PASS1, "held-out Pass@1", 1), (PASS8, "held-out pass@8", 1)]
    training = [
        ("train/entropy", "token entropy (nats, 10-point mean)", 10),
        ("rollout/reward_mean", "training reward (10-point mean)", 10),
    ]
    allocation = [
        ("weights/domination_mean", "largest rollout's share of its group's |weight|", 10),
        ("weights/pos_zero_fraction", "share of positive rollouts with weight 0", 10),
    ]
    return [
        figure(runs, pass_at_k, images / "replication_pass_at_k.png"),
        figure(runs, training, images / "replication_training.png"),
        figure(runs, allocation, images / "replication_allocation.png"),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "summaries", type=Path, nargs="+", help="replicate.py --summary outputs (the main sweep, an lr ablation)"
    )
    parser.add_argument("--images", type=Path, help="write the PNGs here")
    parser.add_argument("--late", type=int, default=4, help="validations averaged at the end of each run")
    args = parser.parse_args(argv)
    runs = runs_by_loss([json.loads(path.read_text()) for path in args.summaries])
    if not runs:
        raise SystemExit(f"{', '.join(map(str, args.summaries))}: no finished main-stage run")
    print(pass_table(runs, args.late), end="\n\n")
    print(paired_table(runs, args.late), end="\n\n")
    print(allocation_table(runs))
    if args.images:
        for path in figures(runs, args.images):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
