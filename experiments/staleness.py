"""Does REAL hold up where GRPO breaks? The staleness study (docs/staleness.md): REAL, GRPO, DAPO, GRPO with
dual-clip and the control ``real_s0`` on countdown, at staleness 0 and high, paired seeds, read by the decision
rule written in docs/staleness.md before the grid ran.

    python -m experiments.staleness --out runs/staleness                    # every stage (resumable)
    python -m experiments.staleness --out runs/staleness --stages policy pilot gates
    python -m experiments.staleness --out runs/staleness --summary experiments/results/staleness.json
    python -m experiments.staleness --tables experiments/results/staleness.json     # the report's tables

Stages:

- ``policy``: warm-start a fresh ~3 M-parameter Qwen2 on countdown to dev Pass@1 0.3 (once);
- ``pilot``: S = 0, seed 0, ``--pilot-steps`` steps per (loss, lr) of ``--lrs``; REAL runs at ``--real-lr``, and
  each other loss gets the lr whose mean ``train/ppo_kl`` is nearest REAL's (in log ratio), reported with the
  ratio (the rule asks for ±25 %);
- ``gates``: G1 (held-out Pass@1 at the start in [0.2, 0.5]), G2 (≥ 50 % of contrast groups with ≥ 2 distinct
  correct responses, REAL's pilot), G3 (at ``--high-staleness``: GRPO's p90 |s| of positives and of negatives
  ≥ 0.25 and ≥ 5 % of its positive-advantage tokens clipped, means over a ``--pilot-steps`` run), printed
  whatever they say;
- ``grid``: every loss at its pilot lr × S ∈ {0, ``--high-staleness``} × ``--seeds``, ``--steps`` each.

Every run is ``real-lightning fit -c configs/staleness.yaml`` in its own folder; a finished one writes
``done.json`` with its curves, an unfinished one with a checkpoint continues with ``--ckpt_path last``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from experiments.replicate import done_steps, rounded, run_fit

REPO = Path(__file__).resolve().parent.parent
ARMS = {
    "real": ("real", {"tau": 0.5}),
    "grpo": ("grpo", {"clip_low": 0.2, "clip_high": 0.2}),
    "dapo": ("dapo", {"clip_low": 0.2, "clip_high": 0.28}),
    "grpo_dual_clip": ("grpo", {"clip_low": 0.2, "clip_high": 0.2, "dual_clip": 3.0}),
    "real_s0": ("real_s0", {"tau": 0.5}),
}
"""Each arm of the grid: the loss and its hyper-parameters."""
CURVE_PREFIXES = ("val/held_out/", "mechanism/", "train/entropy", "train/ppo_kl", "rollout/reward_mean")
CURVE_PREFIXES += ("rollout/staleness_batches_mean", "train/clip_fraction", "rollout/response_length_mean")
POLICY_ARGS = ["--task", "countdown", "--hidden-size", "256", "--intermediate-size", "768"]
POLICY_ARGS += ["--max-positions", "128", "--max-new-tokens", "48", "--batch-size", "128", "--eval-every", "25"]
POLICY_ARGS += ["--lr", "1e-3"]  # 3e-3 (the arithmetic policy's) stalls at loss ~1.2 on countdown at this size


@dataclass(frozen=True)
class Run:
    """One ``fit``: an arm at an lr, staleness and seed, ``steps`` optimizer steps, in ``stage``'s folder."""

    stage: str
    arm: str
    lr: float
    staleness: int
    seed: int
    steps: int

    def folder(self, out: Path) -> Path:
        return out / self.stage / self.arm / f"lr{self.lr:g}-S{self.staleness}-seed{self.seed}"

    def arguments(self, out: Path, policy: str) -> list[str]:
        loss, options = ARMS[self.arm]
        folder = self.folder(out)
        return [
            "fit",
            "-c", str(REPO / "configs" / "staleness.yaml"),
            "--model.loss", loss,
            "--model.loss_kwargs", json.dumps(options),
            "--model.pretrained", policy,
            "--model.lr", repr(self.lr),
            "--data.schedule.max_staleness", str(self.staleness),
            "--seed_everything", str(self.seed),
            "--data.seed", str(self.seed),
            "--trainer.max_steps", str(self.steps),
            "--trainer.default_root_dir", str(folder),
            "--trainer.logger.init_args.save_dir", str(folder),
            "--trainer.logger.init_args.name", "tb",
        ]  # fmt: skip


def execute(run: Run, out: Path, policy: str, extra: list[str], label: str) -> dict:
    """Run (or continue) one fit; returns its ``done.json`` record."""
    folder = run.folder(out)
    if done_steps(folder) >= run.steps:
        return json.loads((folder / "done.json").read_text())
    seconds = run_fit(folder, [*run.arguments(out, policy), *extra], f"{label} ({folder})")
    record = {"steps": run.steps, "seconds": seconds, "curves": curves(folder)}
    (folder / "done.json").write_text(json.dumps(rounded(record), indent=1) + "\n")
    pass1 = record["curves"].get("val/held_out/pass@1", [])
    change = f"Pass@1 {pass1[0][1]:.3f} → {pass1[-1][1]:.3f}" if pass1 else "no validation"
    print(f"{label}: {run.steps} steps, {change}, {record['seconds'] / 60:.1f} min", flush=True)
    return record


def curves(folder: Path) -> dict[str, list[list[float]]]:
    """The run's logged scalars whose tags start with one of :data:`CURVE_PREFIXES`, as [step, value] pairs."""
    from real_lightning.analysis.viz import load_scalars

    scalars = load_scalars(folder / "tb" / "version_0")
    chosen = sorted(tag for tag in scalars if tag.startswith(CURVE_PREFIXES))
    return {tag: [[int(s), float(v)] for s, v in scalars[tag]] for tag in chosen}


def mean_of(record: dict, tag: str, first: int | None = None) -> float:
    """Mean of a curve (its first ``first`` points only, if given); NaN when it was never logged."""
    values = [v for _, v in record["curves"].get(tag, [])][:first]
    return statistics.fmean(values) if values else math.nan


def final_pass_at_1(record: dict, last: int = 3) -> float:
    """The decision rule's score: the mean of the run's last ``last`` held-out Pass@1 validations."""
    values = [v for _, v in record["curves"].get("val/held_out/pass@1", [])]
    return statistics.fmean(values[-last:]) if values else math.nan


def warm_start_policy(out: Path) -> str:
    policy = out / "policy"
    if not (policy / "warmstart.json").exists():
        print(f"policy: warm-starting countdown into {policy}", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        with (out / "warmstart.log").open("a") as log:
            args = [sys.executable, "-m", "real_lightning.policy.warmstart", "--out", str(policy), *POLICY_ARGS]
            if subprocess.call(args, stdout=log, stderr=log, cwd=REPO) != 0:
                raise SystemExit(f"warm start failed; see {out / 'warmstart.log'}")
    info = json.loads((policy / "warmstart.json").read_text())
    print(f"policy: {policy}, held-out Pass@1 {info['held_out_pass_at_1']:.3f} after {info['sft_steps']} steps")
    return str(policy)


def pilot(out: Path, policy: str, args: argparse.Namespace, extra: list[str]) -> dict[str, dict]:
    """Per arm: the chosen lr, its mean ``train/ppo_kl`` and the ratio to REAL's (written to ``pilot.json``)."""
    real = execute(Run("pilot", "real", args.real_lr, 0, 0, args.pilot_steps), out, policy, extra, "pilot real")
    target = mean_of(real, "train/ppo_kl")
    if not target > 0:
        raise SystemExit(f"pilot: REAL's mean train/ppo_kl is {target}: the policy did not move (no reward contrast?)")
    chosen = {"real": {"lr": args.real_lr, "ppo_kl": target, "ratio": 1.0}}
    for arm in [a for a in args.arms if a != "real"]:
        kls = {}
        for lr in args.lrs:
            record = execute(Run("pilot", arm, lr, 0, 0, args.pilot_steps), out, policy, extra, f"pilot {arm}")
            kls[lr] = mean_of(record, "train/ppo_kl")
        lr = min(kls, key=lambda x: abs(math.log(kls[x] / target)) if kls[x] > 0 else math.inf)
        chosen[arm] = {"lr": lr, "ppo_kl": kls[lr], "ratio": kls[lr] / target, "sweep": kls}
    (out / "pilot.json").write_text(json.dumps(chosen, indent=1) + "\n")
    for arm, c in chosen.items():
        flag = "" if 0.75 <= c["ratio"] <= 1.25 else "  (outside ±25 %)"
        print(f"pilot: {arm} lr {c['lr']:g}, mean ppo_kl {c['ppo_kl']:.3g}, {c['ratio']:.2f}× REAL's{flag}")
    return chosen


def gates(out: Path, policy: str, args: argparse.Namespace, extra: list[str], lrs: dict[str, dict]) -> dict:
    """G1–G3 as docs/staleness.md states them; written to ``gates.json`` and printed, pass or fail."""
    real_pilot = Run("pilot", "real", args.real_lr, 0, 0, args.pilot_steps).folder(out)
    real = json.loads((real_pilot / "done.json").read_text())
    start = [v for _, v in real["curves"].get("val/held_out/pass@1", [])][:1]
    grpo = Run("gates", "grpo", lrs["grpo"]["lr"], args.high_staleness, 0, args.pilot_steps)
    stale = execute(grpo, out, policy, extra, f"gate G3 grpo S={args.high_staleness}")
    p90 = [mean_of(stale, f"mechanism/score_abs_p90_{side}") for side in ("pos", "neg")]
    clipped = mean_of(stale, "mechanism/clipped_pos_share")
    result = {
        "G1": {"held_out_pass_at_1": start[0] if start else math.nan},
        "G2": {"multi_correct_share": mean_of(real, "mechanism/multi_correct_share", first=20)},
        "G3": {"staleness": args.high_staleness, "p90_abs_s_pos": p90[0], "p90_abs_s_neg": p90[1]},
    }
    result["G1"]["pass"] = 0.2 <= result["G1"]["held_out_pass_at_1"] <= 0.5
    result["G2"]["pass"] = result["G2"]["multi_correct_share"] >= 0.5
    result["G3"] |= {"clipped_pos_share": clipped, "pass": min(p90) >= 0.25 and clipped >= 0.05}
    (out / "gates.json").write_text(json.dumps(rounded(result), indent=1) + "\n")
    for name, gate in result.items():
        values = ", ".join(f"{k} {v:.3g}" for k, v in gate.items() if k != "pass")
        print(f"{name}: {'pass' if gate['pass'] else 'FAIL'} ({values})", flush=True)
    return result


def collect(out: Path, path: Path) -> None:
    """Every finished run's record, the pilot's choice and the gates, in one committed JSON file."""
    summary: dict = {"runs": {}}
    for marker in sorted(out.glob("*/*/*/done.json")):
        stage, arm, name = marker.parts[-4:-1]
        summary["runs"].setdefault(stage, {}).setdefault(arm, {})[name] = json.loads(marker.read_text())
    for name in ("pilot", "gates"):
        if (out / f"{name}.json").exists():
            summary[name] = json.loads((out / f"{name}.json").read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rounded(summary), separators=(",", ":")) + "\n")
    print(f"summary: {path} ({path.stat().st_size / 1024:.0f} KiB)")


def grid_table(summary: dict) -> str:
    """Markdown: per arm and staleness, the rule's held-out Pass@1 (mean ± sd over seeds, and per seed)."""
    grid = summary.get("runs", {}).get("grid", {})
    lines = ["| arm | S | Pass@1, last 3 validations: mean ± sd | per seed |", "|---|---|---|---|"]
    for arm in [a for a in ARMS if a in grid]:
        by_s: dict[int, dict[int, float]] = {}
        for name, record in grid[arm].items():
            s, seed = (int(part) for part in name.split("-S")[1].split("-seed"))
            by_s.setdefault(s, {})[seed] = final_pass_at_1(record)
        for s, seeds in sorted(by_s.items()):
            values = [seeds[k] for k in sorted(seeds)]
            spread = statistics.stdev(values) if len(values) > 1 else math.nan
            per_seed = ", ".join(f"{k}: {seeds[k]:.3f}" for k in sorted(seeds))
            lines.append(f"| {arm} | {s} | {statistics.fmean(values):.3f} ± {spread:.3f} | {per_seed} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "staleness")
    stages = ["policy", "pilot", "gates", "grid"]
    parser.add_argument("--stages", nargs="+", default=stages, choices=stages)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps of each grid run")
    parser.add_argument("--pilot-steps", type=int, default=40, help="optimizer steps of each pilot and gate run")
    parser.add_argument("--real-lr", type=float, default=1e-4, help="REAL's lr: the others are matched to it")
    parser.add_argument("--lrs", nargs="+", type=float, default=[3e-5, 1e-4, 3e-4], help="the other arms' sweep")
    parser.add_argument("--high-staleness", type=int, default=4, help="S_high, in rollout batches")
    parser.add_argument("--policy", help="start every run from this policy instead of the warm-started one")
    parser.add_argument("--summary", type=Path, help="write the summary of every finished run here and exit")
    parser.add_argument("--tables", type=Path, help="print the report's tables from this summary and exit")
    parser.add_argument("extra", nargs="*", help="more real-lightning arguments for every run (after --)")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.tables:
        print(grid_table(json.loads(args.tables.read_text())))
        return
    if args.summary:
        collect(args.out, args.summary)
        return
    policy = args.policy or warm_start_policy(args.out)
    if "grpo" not in args.arms or "real" not in args.arms:
        raise SystemExit("--arms must include real (the pilot's reference) and grpo (gate G3)")
    if "pilot" in args.stages or "gates" in args.stages or "grid" in args.stages:
        lrs = pilot(args.out, policy, args, args.extra)
        if "gates" in args.stages or "grid" in args.stages:
            gates(args.out, policy, args, args.extra, lrs)
        if "grid" in args.stages:
            runs = [
                Run("grid", arm, lrs[arm]["lr"], s, seed, args.steps)
                for seed in args.seeds
                for s in (0, args.high_staleness)
                for arm in args.arms
            ]
            for i, run in enumerate(runs, 1):
                execute(run, args.out, policy, args.extra, f"[{i}/{len(runs)}] grid {run.arm} S={run.staleness}")


if __name__ == "__main__":
    main()
