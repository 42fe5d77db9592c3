"""The staleness study's report, computed from its committed summary: the grid's held-out Pass@1 (mean ± sd and
per seed), the weight statistics per arm and staleness, the check of the pilot's KL match on the grid's S = 0
runs, and the verdict under the decision rule of docs/staleness.md, as written there.

    python -m experiments.staleness_report experiments/results/staleness.json
    python -m experiments.staleness_report experiments/results/staleness.json --images docs/images   # + figures

The rule, operationally (committed before the grid's first result): a run's score is the mean of its last 3
held-out Pass@1 validations; Δ(A − B, S, seed) = score(A) − score(B); growth(X, seed) = Δ(REAL − X, S_high, seed)
− Δ(REAL − X, 0, seed).

- **supports**: for X = GRPO and X = DAPO, mean growth ≥ 0.03 and growth > 0 in every seed; GRPO's
  ``clipped_pos_share`` and ``neg_domination_mean`` (means over steps and seeds) higher at S_high than at 0; and
  REAL ≠ ``real_s0`` at S_high: |mean Δ(REAL − real_s0, S_high)| ≥ 0.03 with every seed's Δ of its sign;
- **refutes**: G3 passed and REAL's drop score(0) − score(S_high) ≥ GRPO's in at least 2 of 3 seeds;
- **inert mechanism**: REAL ≈ ``real_s0`` at every S (not "≠" as defined above);
- **tie**: anything else. The first that holds, in this order, is the verdict; all conditions are reported.

The verdict needs the 3 seeds of every arm at both staleness levels; before that it says "incomplete".

After the verdict, and outside the rule, it prints REAL at the ``matched_lr`` stage's lr (``experiments.staleness
--stages matched_lr``) beside the grid, when the summary holds such runs (``matched_lr_table``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from experiments.staleness import ARMS, mean_of
from experiments.staleness_figures import figures

THRESHOLD = 0.03
"""The rule's smallest Pass@1 difference that counts."""
KL_BAND = 0.25
"""The pilot's match: a loss's mean per-step KL within ±25 % of REAL's."""
SEEDS_NEEDED = 3
MECHANISM = [
    ("mechanism/score_abs_p90_pos", "p90 \\|s\\| +"),
    ("mechanism/score_abs_p90_neg", "p90 \\|s\\| −"),
    ("mechanism/clipped_pos_share", "clipped +"),
    ("mechanism/neg_domination_mean", "domination − mean"),
    ("mechanism/neg_domination_p95", "domination − p95"),
    ("mechanism/rank_corr_pos", "rank corr. w ~ s, +"),
    ("mechanism/rank_corr_pos_defined", "share defined"),
    ("mechanism/distinct_correct_mean", "distinct correct"),
    ("train/entropy", "entropy"),
    ("train/ppo_kl", "KL(π_b ‖ π_θ)"),
]
"""The per-step statistics of the mechanism table: (logged tag, column). ``train/ppo_kl`` is the KL of the policy
being trained from the behaviour policy π_b that sampled its mini-batch (π_old = π_b in this study), nats per token:
the drift since sampling, which at S = 32 spans ~128 optimizer steps, not one."""


def score(record: dict, last: int = 3) -> float:
    """The rule's score of a run: the mean of its last ``last`` held-out Pass@1 validations (NaN without any)."""
    values = [v for _, v in record["curves"].get("val/held_out/pass@1", [])]
    return statistics.fmean(values[-last:]) if values else math.nan


def grid(summary: dict, stage: str = "grid") -> dict[str, dict[int, dict[int, dict]]]:
    """A stage's finished runs (the grid's by default): arm → S → seed → record."""
    out: dict[str, dict[int, dict[int, dict]]] = {}
    for arm, runs in summary.get("runs", {}).get(stage, {}).items():
        for name, record in runs.items():
            staleness, seed = (int(part) for part in name.split("-S")[1].split("-seed"))
            out.setdefault(arm, {}).setdefault(staleness, {})[seed] = record
    return out


def _mean_sd(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else math.nan
    return f"{statistics.fmean(values):.3f} ± {spread:.3f}"


def grid_table(summary: dict) -> str:
    """Markdown: per arm and staleness, the rule's held-out Pass@1 (mean ± sd over seeds, and per seed)."""
    runs = grid(summary)
    lines = ["| arm | S | Pass@1, last 3 validations: mean ± sd | per seed |", "|---|---|---|---|"]
    for arm in [a for a in ARMS if a in runs]:
        for s, seeds in sorted(runs[arm].items()):
            values = {k: score(seeds[k]) for k in sorted(seeds)}
            per_seed = ", ".join(f"{k}: {v:.3f}" for k, v in values.items())
            lines.append(f"| {arm} | {s} | {_mean_sd(list(values.values()))} | {per_seed} |")
    return "\n".join(lines)


def mechanism_table(summary: dict) -> str:
    """Markdown: per arm and staleness, each statistic's mean over steps, then over seeds."""
    runs = grid(summary)
    lines = ["| arm | S | seeds | " + " | ".join(c for _, c in MECHANISM) + " |"]
    lines.append("|---|---|---|" + "---|" * len(MECHANISM))
    for arm in [a for a in ARMS if a in runs]:
        for s, seeds in sorted(runs[arm].items()):
            cells = []
            for tag, _ in MECHANISM:
                values = [m for m in (mean_of(r, tag) for r in seeds.values()) if not math.isnan(m)]
                cells.append(f"{statistics.fmean(values):.3g}" if values else "–")
            lines.append(f"| {arm} | {s} | {len(seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_kl(arm_runs: dict[int, dict[int, dict]], staleness: int) -> float:
    """An arm's mean ``train/ppo_kl`` (over steps, then its runs) at one staleness; NaN without runs there."""
    values = [mean_of(r, "train/ppo_kl") for r in arm_runs.get(staleness, {}).values()]
    return statistics.fmean(values) if values else math.nan


def kl_check(summary: dict) -> dict[str, float]:
    """Each arm's mean ``train/ppo_kl`` over its S = 0 grid runs ÷ REAL's (the pilot's match, on 9× the data)."""
    runs = grid(summary)
    means = {arm: mean_kl(runs[arm], 0) for arm in runs}
    reference = means.get("real", math.nan)
    return {arm: means[arm] / reference for arm in ARMS if arm in means}


def matched_lr_table(summary: dict) -> str:
    """Markdown, outside the rule: REAL at the ``matched_lr`` stage's lr beside the grid, per seed that has both S.

    Columns: its score at S = 0 and S_high and its drop (score(0) − score(S_high)), the drops of the grid's REAL,
    GRPO and DAPO in the same seed, and Δ(REAL at the matched lr − GRPO) at S_high; then its KL from π_b at S = 0
    and at S_high against GRPO's and the grid REAL's (means over runs). Empty without such runs."""
    matched, runs = grid(summary, "matched_lr").get("real", {}), grid(summary)
    if not matched:
        return ""
    high = max(matched)
    seeds = sorted(set(matched.get(0, {})) & set(matched.get(high, {})))
    name = next(iter(summary["runs"]["matched_lr"]["real"]))
    lr = name.removeprefix("lr").split("-S")[0]

    def drop(arm_runs: dict, k: int) -> str:
        has = k in arm_runs.get(0, {}) and k in arm_runs.get(high, {})
        return f"{score(arm_runs[0][k]) - score(arm_runs[high][k]):.3f}" if has else "–"

    lines = [
        f"| seed | REAL {lr}: S = 0 | S = {high} | drop | drop, REAL (grid) | drop, GRPO | drop, DAPO "
        f"| Δ(REAL {lr} − GRPO), S = {high} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k in seeds:
        zero, stale = score(matched[0][k]), score(matched[high][k])
        grpo = runs.get("grpo", {}).get(high, {}).get(k)
        versus = f"{stale - score(grpo):+.3f}" if grpo else "–"
        row = [f"{zero:.3f}", f"{stale:.3f}", f"{zero - stale:.3f}"]
        row += [drop(runs.get(arm, {}), k) for arm in ("real", "grpo", "dapo")] + [versus]
        lines.append(f"| {k} | " + " | ".join(row) + " |")

    lines.append("")
    for s in (0, high):
        kl = mean_kl(matched, s)
        lines.append(
            f"KL(π_b ‖ π_θ) at S = {s} over {len(matched.get(s, {}))} seeds: {kl:.3g}, "
            f"{kl / mean_kl(runs.get('grpo', {}), s):.2f}× GRPO's, {kl / mean_kl(runs.get('real', {}), s):.2f}× the "
            "grid REAL's"
        )
    return "\n".join(lines)


def _paired(runs: dict, a: str, b: str, s: int, seeds: list[int]) -> list[float]:
    return [score(runs[a][s][k]) - score(runs[b][s][k]) for k in seeds]


def _distinct(differences: list[float]) -> bool:
    """|mean| ≥ the threshold and every seed's difference of the mean's sign."""
    mean = statistics.fmean(differences)
    return abs(mean) >= THRESHOLD and all(d * mean > 0 for d in differences)


def verdict(summary: dict) -> dict:
    """The rule's conditions and its verdict (see the module's docstring); "incomplete" until every arm has the same
    ``SEEDS_NEEDED`` seeds at S = 0 and at S_high."""
    runs = grid(summary)
    levels = sorted({s for arm in runs.values() for s in arm})
    high = max(levels) if levels else None
    seeds = sorted(
        set.intersection(*[set(runs.get(arm, {}).get(s, {})) for arm in ARMS for s in (0, high)])
        if high not in (None, 0)
        else set()
    )
    result: dict = {"S_high": high, "seeds": seeds, "kl_ratio_at_S0": kl_check(summary)}
    result["lr_not_matched"] = sorted(a for a, r in result["kl_ratio_at_S0"].items() if not abs(r - 1) <= KL_BAND)
    if len(seeds) < SEEDS_NEEDED:
        result["verdict"] = f"incomplete ({len(seeds)} of {SEEDS_NEEDED} seeds finished for every arm and S)"
        return result
    growth = {}
    for other in ("grpo", "dapo"):
        at_high, at_zero = _paired(runs, "real", other, high, seeds), _paired(runs, "real", other, 0, seeds)
        growth[other] = [h - z for h, z in zip(at_high, at_zero, strict=True)]
    result["growth"] = growth
    grows = all(statistics.fmean(g) >= THRESHOLD and all(x > 0 for x in g) for g in growth.values())

    def mechanism(arm: str, tag: str, s: int) -> float:
        return statistics.fmean(mean_of(runs[arm][s][k], tag) for k in seeds)

    rises = {
        tag: [mechanism("grpo", tag, 0), mechanism("grpo", tag, high)]
        for tag in ("mechanism/clipped_pos_share", "mechanism/neg_domination_mean")
    }
    result["grpo_mechanism_at_0_and_high"] = rises
    result["real_domination_at_0_and_high"] = [mechanism("real", "mechanism/neg_domination_mean", s) for s in (0, high)]
    versus_s0 = {s: _paired(runs, "real", "real_s0", s, seeds) for s in (0, high)}
    result["real_minus_real_s0"] = versus_s0
    drops = {arm: [score(runs[arm][0][k]) - score(runs[arm][high][k]) for k in seeds] for arm in ("real", "grpo")}
    result["drop"] = drops
    g3 = bool(summary.get("gates", {}).get("G3", {}).get("pass", False))
    conditions = {
        "pass_at_1_gap_grows": grows,
        "grpo_clip_and_domination_rise": all(b > a for a, b in rises.values()),
        "real_differs_from_real_s0_at_high": _distinct(versus_s0[high]),
        "g3_passed": g3,
        "real_loses_at_least_as_much_in_2_of_3": sum(r >= g for r, g in zip(*drops.values(), strict=True)) >= 2,
        "real_like_real_s0_at_every_s": not any(_distinct(d) for d in versus_s0.values()),
    }
    result["conditions"] = conditions
    if grows and conditions["grpo_clip_and_domination_rise"] and conditions["real_differs_from_real_s0_at_high"]:
        result["verdict"] = "supports"
    elif g3 and conditions["real_loses_at_least_as_much_in_2_of_3"]:
        result["verdict"] = "refutes"
    elif conditions["real_like_real_s0_at_every_s"]:
        result["verdict"] = "inert mechanism"
    else:
        result["verdict"] = "tie"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("summary", type=Path, nargs="?", default=Path("experiments/results/staleness.json"))
    parser.add_argument("--images", type=Path, help="also write the PNGs of experiments/staleness_figures.py here")
    args = parser.parse_args()
    summary = json.loads(args.summary.read_text())
    print("## Held-out Pass@1\n\n" + grid_table(summary))
    print("\n## Weight statistics (means over steps, then seeds)\n\n" + mechanism_table(summary))
    print("\n## Verdict under the rule\n\n" + json.dumps(verdict(summary), indent=1))
    matched = matched_lr_table(summary)
    if matched:
        print("\n## Post hoc, outside the rule: REAL at a matched lr\n\n" + matched)
    if args.images:
        for path in figures(grid(summary), args.images):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
