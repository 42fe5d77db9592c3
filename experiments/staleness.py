"""Does REAL hold up where GRPO breaks? The staleness study (docs/staleness.md): REAL, GRPO, DAPO, GRPO with
dual-clip and the control ``real_s0`` on countdown, at staleness 0 and high, paired seeds, read by the decision
rule written in docs/staleness.md before the grid ran.

    python -m experiments.staleness --out runs/staleness                    # every stage (resumable)
    python -m experiments.staleness --out runs/staleness --stages policy pilot gates
    python -m experiments.staleness --out runs/staleness --summary experiments/results/staleness.json
    python -m experiments.staleness --tables experiments/results/staleness.json     # tables, verdict (_report)
    python -m experiments.staleness --out runs/staleness --restore experiments/results/staleness.json  # go on

Stages:

- ``policy``: the committed ~3 M-parameter Qwen2 warm-started on countdown to dev Pass@1 0.3
  (``experiments/results/staleness/policy``); ``--rebuild-policy`` builds it again by the recipe (~45 min) and
  says whether the weights are bit-identical;
- ``pilot``: S = 0, seed 0, ``--pilot-steps`` steps per (loss, lr). REAL runs at each of ``--real-lrs`` and keeps
  the largest whose last held-out Pass@1 is no more than 0.03 below the start (REAL at 1e-4 collapsed the policy:
  0.315 → 0.041 in 25 steps); each other loss, swept over ``--lrs``, gets the lr whose mean ``train/ppo_kl`` is
  nearest REAL's (in log ratio), reported with the ratio (the rule asks for ±25 %); when no swept lr is within
  ±25 %, up to ``--refinements`` more runs at the lr interpolated in log KL against log lr;
- ``gates``: G1 (held-out Pass@1 at the start in [0.2, 0.5]), G2 (≥ 50 % of contrast groups with ≥ 2 distinct
  correct responses, REAL's pilot), G3 (at ``--high-staleness``: GRPO's p90 |s| of positives and of negatives
  ≥ 0.25 and ≥ 5 % of its positive-advantage tokens clipped, means over a ``--pilot-steps`` run), printed
  whatever they say;
- ``grid``: every loss at its pilot lr × S ∈ {0, ``--high-staleness``} × ``--seeds``, ``--steps`` each;
- ``matched_lr`` (post hoc, outside the decision rule; not in the default stages): REAL at ``--matched-real-lr``
  × S ∈ {0, ``--high-staleness``} × ``--seeds``, the lr at which REAL's S = 0 drift should match GRPO's (the
  grid found REAL's at the pilot's lr ~1.9× GRPO's), so that its fall under staleness can be read at equal
  step size. Its runs are kept apart from the grid's (``matched_lr/real/...``) and never enter the verdict.

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

from experiments.replicate import done_steps, rounded, run_fit, run_logs

REPO = Path(__file__).resolve().parent.parent
ARMS = {
    "real": ("real", {"tau": 0.5}),
    "grpo": ("grpo", {"clip_low": 0.2, "clip_high": 0.2}),
    "dapo": ("dapo", {"clip_low": 0.2, "clip_high": 0.28}),
    "grpo_dual_clip": ("grpo", {"clip_low": 0.2, "clip_high": 0.2, "dual_clip": 3.0}),
    "real_s0": ("real_s0", {"tau": 0.5}),
}
"""Each arm of the grid: the loss and its hyper-parameters."""
PILOT_DROP = 0.03
"""The largest fall of held-out Pass@1 over a pilot run that REAL's lr may cause (the rule's threshold)."""
CURVE_PREFIXES = ("val/held_out/", "mechanism/", "train/entropy", "train/ppo_kl", "rollout/reward_mean")
CURVE_PREFIXES += ("rollout/staleness_batches_mean", "train/clip_fraction", "rollout/response_length_mean")
POLICY_ARGS = ["--task", "countdown", "--hidden-size", "256", "--intermediate-size", "768"]
POLICY_ARGS += ["--max-positions", "128", "--max-new-tokens", "48", "--batch-size", "128", "--eval-every", "50"]
# 3e-3 (the arithmetic policy's) stalls at loss ~1.2 on countdown at this size; a constant 1e-3 plateaus near 0.2
POLICY_ARGS += ["--lr", "1e-3", "--warmup-steps", "100", "--final-lr-fraction", "0.05", "--max-steps", "2000"]
POLICY_ARGS += ["--threads", "1"]  # bit-identical rebuilds need the same thread count
COMMITTED_POLICY = REPO / "experiments" / "results" / "staleness" / "policy"
"""The study's policy as built by ``POLICY_ARGS`` (12.7 MB): every session's runs start from these very weights."""


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
    last = max((at for curve in record["curves"].values() for at, _ in curve), default=-1)
    if last < run.steps - 1:
        logs = run_logs(folder)
        raise SystemExit(f"{label}: the logs of {logs} end at step {last}, not {run.steps - 1}; nothing recorded")
    (folder / "done.json").write_text(json.dumps(rounded(record), indent=1) + "\n")
    pass1 = record["curves"].get("val/held_out/pass@1", [])
    change = f"Pass@1 {pass1[0][1]:.3f} → {pass1[-1][1]:.3f}" if pass1 else "no validation"
    print(f"{label}: {run.steps} steps, {change}, {record['seconds'] / 60:.1f} min", flush=True)
    return record


def curves(folder: Path) -> dict[str, list[list[float]]]:
    """The run's logged scalars whose tags start with one of :data:`CURVE_PREFIXES`, as [step, value] pairs."""
    from real_lightning.analysis.viz import load_scalars

    scalars = load_scalars(run_logs(folder))
    chosen = sorted(tag for tag in scalars if tag.startswith(CURVE_PREFIXES))
    return {tag: [[int(s), float(v)] for s, v in scalars[tag]] for tag in chosen}


def mean_of(record: dict, tag: str, first: int | None = None) -> float:
    """Mean of a curve (its first ``first`` points only, if given; NaN points skipped); NaN when never logged."""
    values = [v for _, v in record["curves"].get(tag, [])][:first]
    values = [v for v in values if not math.isnan(v)]
    return statistics.fmean(values) if values else math.nan


def study_policy(out: Path, rebuild: bool) -> str:
    """The committed policy; with ``rebuild``, the policy warm-started again under ``out`` by the recipe, its
    weights' hash compared with the committed one's (printed either way)."""
    if not rebuild and (COMMITTED_POLICY / "warmstart.json").exists():
        info = json.loads((COMMITTED_POLICY / "warmstart.json").read_text())
        print(f"policy: {COMMITTED_POLICY}, held-out Pass@1 {info['held_out_pass_at_1']:.3f}", flush=True)
        return str(COMMITTED_POLICY)
    policy = warm_start_policy(out)
    committed = policy_info(str(COMMITTED_POLICY))
    if committed is not None:
        same = committed["weights_sha256"] == policy_info(policy)["weights_sha256"]
        print(f"policy: the rebuild is {'bit-identical to' if same else 'DIFFERENT from'} {COMMITTED_POLICY}")
    return policy


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
    real_lrs = {
        lr: execute(Run("pilot", "real", lr, 0, 0, args.pilot_steps), out, policy, extra, "pilot real")
        for lr in args.real_lrs
    }
    kept = {lr: pass_at_1_change(record) for lr, record in real_lrs.items()}
    stable = [lr for lr, change in kept.items() if change >= -PILOT_DROP]
    real_lr = max(stable) if stable else min(kept)
    if not stable:
        print(f"pilot: REAL lowers held-out Pass@1 by more than {PILOT_DROP} at every lr; keeping the smallest")
    real = real_lrs[real_lr]
    target = mean_of(real, "train/ppo_kl")
    if not target > 0:
        raise SystemExit(f"pilot: REAL's mean train/ppo_kl is {target}: the policy did not move (no reward contrast?)")
    chosen = {"real": {"lr": real_lr, "ppo_kl": target, "ratio": 1.0, "pass_at_1_change": kept}}
    for arm in [a for a in args.arms if a != "real"]:
        kls = {}
        for lr in args.lrs:
            record = execute(Run("pilot", arm, lr, 0, 0, args.pilot_steps), out, policy, extra, f"pilot {arm}")
            kls[lr] = mean_of(record, "train/ppo_kl")
        for _ in range(args.refinements):  # the sweep is coarse: KL grows about as lr², 3× the lr is ~10× the KL
            if any(0.75 <= kls[x] / target <= 1.25 for x in kls if kls[x] > 0):
                break
            lr = interpolated_lr(kls, target)
            if lr is None or lr in kls:
                break
            record = execute(Run("pilot", arm, lr, 0, 0, args.pilot_steps), out, policy, extra, f"pilot {arm}")
            kls[lr] = mean_of(record, "train/ppo_kl")
        lr = min(kls, key=lambda x: abs(math.log(kls[x] / target)) if kls[x] > 0 else math.inf)
        chosen[arm] = {"lr": lr, "ppo_kl": kls[lr], "ratio": kls[lr] / target, "sweep": kls}
    (out / "pilot.json").write_text(json.dumps(chosen, indent=1) + "\n")
    for arm, c in chosen.items():
        flag = "" if 0.75 <= c["ratio"] <= 1.25 else "  (outside ±25 %)"
        print(f"pilot: {arm} lr {c['lr']:g}, mean ppo_kl {c['ppo_kl']:.3g}, {c['ratio']:.2f}× REAL's{flag}")
    return chosen


def interpolated_lr(kls: dict[float, float], target: float) -> float | None:
    """The lr at which the mean KL would be ``target``, by a straight line in log KL against log lr between the two
    swept lrs that bracket it (rounded to two significant digits); None when no pair brackets it.

    >>> interpolated_lr({1e-5: 1e-5, 1e-4: 1e-3}, 1e-4)  # KL ∝ lr² between the two
    3.2e-05
    """
    below = [lr for lr, kl in kls.items() if 0 < kl < target]
    above = [lr for lr, kl in kls.items() if kl > target]
    if not below or not above:
        return None
    low, high = max(below, key=lambda x: kls[x]), min(above, key=lambda x: kls[x])
    slope = math.log(kls[high] / kls[low]) / math.log(high / low)
    lr = low * (target / kls[low]) ** (1 / slope)
    return float(f"{lr:.2g}")


def pass_at_1_change(record: dict) -> float:
    """The run's last held-out Pass@1 minus its first (the validation before fit)."""
    values = [v for _, v in record["curves"].get("val/held_out/pass@1", [])]
    return values[-1] - values[0] if values else math.nan


def gates(out: Path, policy: str, args: argparse.Namespace, extra: list[str], lrs: dict[str, dict]) -> dict:
    """G1–G3 as docs/staleness.md states them; written to ``gates.json`` and printed, pass or fail."""
    real_pilot = Run("pilot", "real", lrs["real"]["lr"], 0, 0, args.pilot_steps).folder(out)
    real = json.loads((real_pilot / "done.json").read_text())
    start = [v for _, v in real["curves"].get("val/held_out/pass@1", [])][:1]
    grpo = Run("gates", "grpo", lrs["grpo"]["lr"], args.high_staleness, 0, args.gate_steps or args.pilot_steps)
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


def policy_info(policy: str) -> dict | None:
    """The policy's ``warmstart.json`` (its recipe, held-out Pass@1 and weights' SHA-256), if it has one."""
    marker = Path(policy) / "warmstart.json"
    return json.loads(marker.read_text()) if marker.exists() else None


def same_policy(summary: dict, policy: str, path: Path) -> None:
    """Refuse to mix runs of two policies: the summary's weights hash must be ``policy``'s."""
    before, now = (summary.get("policy") or {}).get("weights_sha256"), (policy_info(policy) or {}).get("weights_sha256")
    if before and before != now:
        raise SystemExit(
            f"{path}: its runs started from a policy with weights SHA-256 {before[:12]}…, {policy} has "
            f"{(now or 'none')[:12]}…; rebuild the policy with the recipe in the summary (same --threads) or use "
            "another summary file"
        )


def collect(out: Path, path: Path, policy: str | None = None) -> None:
    """Every finished run's record, the pilot's choice, the gates and the policy's ``warmstart.json``, merged into
    the committed JSON file at ``path`` (runs it already holds from earlier sessions stay; a run finished here
    replaces its entry)."""
    summary: dict = json.loads(path.read_text()) if path.exists() else {}
    summary.setdefault("runs", {})
    if policy is not None:
        same_policy(summary, policy, path)
        summary["policy"] = policy_info(policy) or summary.get("policy")
    for marker in sorted(out.glob("*/*/*/done.json")):
        stage, arm, name = marker.parts[-4:-1]
        summary["runs"].setdefault(stage, {}).setdefault(arm, {})[name] = json.loads(marker.read_text())
    for name in ("pilot", "gates"):
        if (out / f"{name}.json").exists():
            summary[name] = json.loads((out / f"{name}.json").read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rounded(summary), separators=(",", ":")) + "\n")
    print(f"summary: {path} ({path.stat().st_size / 1024:.0f} KiB)")


def restore(path: Path, out: Path, policy: str) -> int:
    """Write the finished runs of a committed summary back as ``done.json`` markers under ``out`` (and its
    ``pilot.json`` and ``gates.json``), so a later session skips them; returns how many runs it restored.

    Runs already finished under ``out`` are kept. Refused when the summary's runs started from other weights.
    """
    summary = json.loads(path.read_text())
    same_policy(summary, policy, path)
    restored = 0
    for stage, arms in summary.get("runs", {}).items():
        for arm, runs in arms.items():
            for name, record in runs.items():
                marker = out / stage / arm / name / "done.json"
                if not marker.exists():
                    marker.parent.mkdir(parents=True, exist_ok=True)
                    marker.write_text(json.dumps(record, indent=1) + "\n")
                    restored += 1
    for name in ("pilot", "gates"):
        if name in summary and not (out / f"{name}.json").exists():
            (out / f"{name}.json").write_text(json.dumps(summary[name], indent=1) + "\n")
    print(f"restore: {restored} finished runs from {path}", flush=True)
    return restored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "staleness")
    stages = ["policy", "pilot", "gates", "grid"]
    parser.add_argument("--stages", nargs="+", default=stages, choices=[*stages, "matched_lr"])
    parser.add_argument(
        "--matched-real-lr", type=float, default=2.2e-5,
        help="REAL's lr in the matched_lr stage (2.2e-5: 3e-5 × 0.52^(1/2.07), GRPO's S = 0 KL ÷ REAL's on the grid, "
        "2.07 the slope of log KL against log lr in REAL's pilot)",
    )  # fmt: skip
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps of each grid run")
    parser.add_argument("--pilot-steps", type=int, default=40, help="optimizer steps of each pilot and gate run")
    parser.add_argument(
        "--real-lrs", nargs="+", type=float, default=[1e-5, 3e-5, 1e-4],
        help="REAL's sweep: the largest that keeps held-out Pass@1 (within 0.03) is REAL's lr, the others match it",
    )  # fmt: skip
    parser.add_argument("--lrs", nargs="+", type=float, default=[1e-5, 3e-5, 1e-4, 3e-4], help="the other arms' sweep")
    parser.add_argument(
        "--refinements", type=int, default=2, help="runs per loss at an interpolated lr when none is within ±25 %%"
    )
    parser.add_argument(
        "--gate-steps", type=int, help="optimizer steps of the G3 run (default: --pilot-steps); > 4·S to reach S"
    )
    parser.add_argument("--high-staleness", type=int, default=4, help="S_high, in rollout batches")
    parser.add_argument("--policy", help="start every run from this policy instead of the study's committed one")
    parser.add_argument(
        "--rebuild-policy", action="store_true", help="warm-start the policy again (~45 min) and compare its hash"
    )
    parser.add_argument("--summary", type=Path, help="write the summary of every finished run here and exit")
    parser.add_argument("--tables", type=Path, help="print the report's tables from this summary and exit")
    parser.add_argument(
        "--restore", type=Path, help="first mark the runs this summary holds as finished (a later session goes on)"
    )
    parser.add_argument("extra", nargs="*", help="more real-lightning arguments for every run (after --)")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.tables:
        from experiments.staleness_report import grid_table, mechanism_table, verdict

        summary = json.loads(args.tables.read_text())
        print(f"{grid_table(summary)}\n\n{mechanism_table(summary)}\n\n{json.dumps(verdict(summary), indent=1)}")
        return
    if args.summary:
        collect(args.out, args.summary, args.policy or study_policy(args.out, args.rebuild_policy))
        return
    policy = args.policy or study_policy(args.out, args.rebuild_policy)
    if args.restore:
        restore(args.restore, args.out, policy)
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
    if "matched_lr" in args.stages:
        runs = [
            Run("matched_lr", "real", args.matched_real_lr, s, seed, args.steps)
            for seed in args.seeds
            for s in (0, args.high_staleness)
        ]
        for i, run in enumerate(runs, 1):
            execute(run, args.out, policy, args.extra, f"[{i}/{len(runs)}] matched_lr real S={run.staleness}")


if __name__ == "__main__":
    main()
