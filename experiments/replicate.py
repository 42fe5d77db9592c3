"""Does REAL beat GRPO, DAPO and GSPO here? The paper's comparison under its regime, on a task the tiny policy
half-solves: REAL, REAL-BCE, GRPO, DAPO and GSPO, several seeds each, the same number of optimizer steps.

    python -m experiments.replicate --out runs/replication                 # every stage (resumable)
    python -m experiments.replicate --out runs/replication --stages policy lr
    python -m experiments.replicate --out runs/replication --summary experiments/results/replication.json

Stages:

- ``policy``: warm-start the policy on 3-digit addition from the shipped one, to ~30 % dev Pass@1
  (``python -m real_lightning.policy.warmstart --digits 3 --init builtin:tiny``), once;
- ``lr``: a short sweep per loss (``--lrs``, ``--lr-steps``, seed 0); each loss's lr is the one with the highest
  mean training reward over the last quarter of its steps (training data only: the held-out set is not used
  to choose);
- ``main``: every loss at its lr (or ``--lr`` for all), ``--seeds``, ``--steps`` optimizer steps.

Every run is ``real-lightning fit -c configs/replication.yaml`` with the loss's settings from
``configs/paper/`` (τ, clip ranges, GRPO's k3 KL β 0.001, GSPO's log-ratio clamp) in its own folder
``<out>/<stage>/<loss>/lr<lr>-seed<seed>``. A finished run writes ``done.json``; a run with a checkpoint and no
``done.json`` for the requested steps continues with ``--ckpt_path last`` (bit-exact): stop the sweep at any
time and start it again. One progress line per run. ``--summary`` collects the curves (held-out Pass@1 and
pass@8, entropy, response length, reward, contrast, the gradient-weight statistics), the run-health findings
and a few steps of per-rollout weights of seed 0 into one small JSON file for the report and the notebook.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
LOSSES = ("real", "real_bce", "grpo", "dapo", "gspo")
PAPER_CONFIGS = {
    "real": "real_r1_distill_qwen_1.5b.yaml",
    "real_bce": "real_bce.yaml",
    "grpo": "grpo.yaml",
    "dapo": "dapo.yaml",
    "gspo": "gspo.yaml",
}
CURVES = (
    "val/held_out/pass@1",
    "val/held_out/pass@8",
    "train/entropy",
    "rollout/response_length_mean",
    "rollout/reward_mean",
    "rollout/truncation_rate",
    "train/contrast_fraction",
    "train/grad_norm",
    "weights/domination_mean",
    "weights/domination_max",
    "weights/pos_zero_fraction",
    "weights/rank_corr_pos",
    "weights/rank_corr_neg",
)


@dataclass(frozen=True)
class Run:
    """One ``fit`` of the sweep."""

    stage: str
    loss: str
    lr: float
    seed: int
    steps: int

    @property
    def name(self) -> str:
        return f"{self.loss} lr {self.lr:g} seed {self.seed}"

    def folder(self, out: Path) -> Path:
        return out / self.stage / self.loss / f"lr{self.lr:g}-seed{self.seed}"


def loss_arguments(loss: str) -> list[str]:
    """The loss's settings as the paper recipes hold them (``configs/paper/``): name, hyper-parameters, KL."""
    model = yaml.safe_load((REPO / "configs" / "paper" / PAPER_CONFIGS[loss]).read_text())["model"]
    args = ["--model.loss", model["loss"], "--model.loss_kwargs", json.dumps(model.get("loss_kwargs", {}))]
    for key in ("kl_coef", "kl_estimator", "kl_clamp"):
        if key in model:
            args += [f"--model.{key}", str(model[key])]
    return args


def fit_arguments(run: Run, out: Path, policy: str, extra: list[str]) -> list[str]:
    folder = run.folder(out)
    return [
        "fit",
        "-c", str(REPO / "configs" / "replication.yaml"),
        *loss_arguments(run.loss),
        "--model.pretrained", policy,
        "--model.lr", repr(run.lr),
        "--seed_everything", str(run.seed),
        "--data.seed", str(run.seed),
        "--trainer.max_steps", str(run.steps),
        "--trainer.default_root_dir", str(folder),
        "--trainer.logger.init_args.save_dir", str(folder),
        "--trainer.logger.init_args.name", "tb",  # a resume keeps its checkpoint's version: see run_logs
        *extra,
    ]  # fmt: skip


def run_logs(folder: Path) -> Path:
    """The run's logger folder: the newest ``tb/version_N`` (by N; ``version_0`` before the first fit).

    A fit resumed from ``last.ckpt`` logs into its checkpoint's version. One killed before its first checkpoint
    starts again from step 0, and Lightning gives the new fit the next version, so the newest version holds the
    whole run and an older one only the abandoned start (reading ``version_0`` once recorded 19 of 300 steps)."""
    versions = sorted(folder.glob("tb/version_*"), key=lambda path: int(path.name.removeprefix("version_")))
    return versions[-1] if versions else folder / "tb" / "version_0"


def done_steps(folder: Path) -> int:
    marker = folder / "done.json"
    return json.loads(marker.read_text())["steps"] if marker.exists() else 0


def execute(run: Run, out: Path, policy: str, extra: list[str], index: int, total: int) -> None:
    """Run (or continue) one fit; print one line when it starts and one when it ends."""
    folder = run.folder(out)
    label = f"[{index}/{total}] {run.stage} {run.name}"
    finished = done_steps(folder)
    if finished >= run.steps:
        print(f"{label}: done ({finished} steps)", flush=True)
        return
    seconds = run_fit(folder, fit_arguments(run, out, policy, extra), label)
    summary = summarize(folder)
    summary["seconds"] = seconds
    (folder / "done.json").write_text(json.dumps({"steps": run.steps, **summary}, indent=1) + "\n")
    pass1 = summary["curves"].get("val/held_out/pass@1", [])
    change = f"Pass@1 {pass1[0][1]:.3f} → {pass1[-1][1]:.3f}" if pass1 else "no validation"
    findings = ", ".join(f["name"] for f in summary["health"]) or "none"
    print(f"{label}: {run.steps} steps, {change}, health findings: {findings}, {summary['seconds'] / 60:.1f} min")


def run_fit(folder: Path, args: list[str], label: str) -> float:
    """``real-lightning fit`` with ``args`` in ``folder`` (output appended to ``fit.log``), continuing from the run's
    ``last.ckpt`` when it has one; exits naming the log when the fit fails. Returns the seconds it took."""
    folder.mkdir(parents=True, exist_ok=True)
    last = run_logs(folder) / "checkpoints" / "last.ckpt"
    resumed = last.exists()
    if resumed:
        args = [*args, "--ckpt_path", str(last)]
    print(f"{label}: {'continuing from its last checkpoint' if resumed else 'starting'}", flush=True)
    start = time.perf_counter()
    with (folder / "fit.log").open("a") as log:
        code = subprocess.call([sys.executable, "-m", "real_lightning.cli", *args], stdout=log, stderr=log, cwd=REPO)
    if code != 0:
        raise SystemExit(f"{label}: real-lightning fit exited with {code}; see {folder / 'fit.log'}")
    return round(time.perf_counter() - start, 1)


def summarize(folder: Path) -> dict:
    """A run's curves, health findings and final training reward, read back from its logs."""
    from real_lightning.analysis.viz import load_scalars

    scalars = load_scalars(run_logs(folder))
    curves = {tag: [[int(s), float(v)] for s, v in scalars[tag]] for tag in CURVES if tag in scalars}
    health_file = run_logs(folder) / "health.json"
    health = json.loads(health_file.read_text())["findings"] if health_file.exists() else []
    rewards = [v for _, v in curves.get("rollout/reward_mean", [])]
    tail = rewards[-max(1, len(rewards) // 4) :]
    return {
        "curves": curves,
        "health": [{k: f[k] for k in ("name", "first_step", "last_step", "count", "value")} for f in health],
        "final_reward": statistics.fmean(tail) if tail else float("nan"),
    }


def choose_lrs(out: Path, losses: list[str], lrs: list[float], steps: int) -> dict[str, float]:
    """Per loss, the lr of the sweep with the highest training reward over the last quarter of its steps
    (ties: the smaller lr)."""
    chosen = {}
    for loss in losses:
        rewards = {lr: done_reward(Run("lr", loss, lr, 0, steps), out) for lr in lrs}
        chosen[loss] = max(rewards, key=lambda lr: (rewards[lr], -lr))
    return chosen


def done_reward(run: Run, out: Path) -> float:
    marker = run.folder(out) / "done.json"
    if done_steps(run.folder(out)) < run.steps:
        raise SystemExit(f"the lr sweep has not finished {run.name} ({marker} missing): run --stages lr first")
    return json.loads(marker.read_text())["final_reward"]


def warm_start_policy(out: Path, digits: int) -> str:
    policy = out / "policy"
    if (policy / "warmstart.json").exists():
        print(f"policy: {policy} ({json.loads((policy / 'warmstart.json').read_text())['held_out_pass_at_1']:.3f})")
        return str(policy)
    print(f"policy: warm-starting {digits}-digit addition from builtin:tiny into {policy}", flush=True)
    args = ["--out", str(policy), "--digits", str(digits), "--init", "builtin:tiny", "--max-new-tokens", "16"]
    with (out / "warmstart.log").open("a") as log:
        code = subprocess.call([sys.executable, "-m", "real_lightning.policy.warmstart", *args], stdout=log, stderr=log)
    if code != 0:
        raise SystemExit(f"warm start failed ({code}); see {out / 'warmstart.log'}")
    return warm_start_policy(out, digits)


def collect(out: Path, path: Path, seeds: list[int]) -> None:
    """Write the sweep's summary (every finished run of the lr and main stages) to ``path``."""
    summary: dict = {"lr_sweep": {}, "main": {}}
    for stage in ("lr", "main"):
        for marker in sorted((out / stage).glob("*/*/done.json")):
            loss, run = marker.parent.parent.name, marker.parent.name
            record = json.loads(marker.read_text())
            summary["lr_sweep" if stage == "lr" else "main"].setdefault(loss, {})[run] = record
    summary["weights"] = sample_weights(out, seeds[0]) if seeds else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rounded(summary), separators=(",", ":")) + "\n")
    print(f"summary: {path} ({path.stat().st_size / 1024:.0f} KiB)")
    if summary["lr_sweep"]:
        print(lr_sweep_table(summary["lr_sweep"]))


def rounded(value: object, digits: int = 6) -> object:
    """``value`` with every float rounded to ``digits`` significant digits (the summary is committed, and the
    digits past the sixth are noise that only adds to its size)."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {key: rounded(item, digits) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item, digits) for item in value]
    return value


def lr_sweep_table(sweep: dict[str, dict[str, dict]]) -> str:
    """Markdown: per loss and lr, the late training reward (the choice), held-out Pass@1 at the start and end, and
    the run-health findings."""
    lines = [
        "| loss | lr | training reward, last quarter | held-out Pass@1 | health findings |",
        "|---|---|---|---|---|",
    ]
    for loss in [name for name in LOSSES if name in sweep]:
        runs = sweep[loss]
        best = max(runs, key=lambda r: (runs[r]["final_reward"], -parse_folder(r)[0]))
        for run, record in sorted(runs.items(), key=lambda item: parse_folder(item[0])[0]):
            pass1 = record["curves"].get("val/held_out/pass@1", [])
            change = f"{pass1[0][1]:.3f} → {pass1[-1][1]:.3f}" if pass1 else "–"
            reward = f"**{record['final_reward']:.3f}**" if run == best else f"{record['final_reward']:.3f}"
            findings = ", ".join(f["name"] for f in record["health"]) or "–"
            lines.append(f"| {loss} | {parse_folder(run)[0]:g} | {reward} | {change} | {findings} |")
    return "\n".join(lines)


def parse_folder(name: str) -> tuple[float, int]:
    """The lr and seed of a run folder named as :meth:`Run.folder` names it (``lr3e-05-seed2`` → (3e-05, 2))."""
    lr, seed = name.removeprefix("lr").rsplit("-seed", 1)
    return float(lr), int(seed)


def sample_weights(out: Path, seed: int, picks: int = 6) -> dict[str, dict[str, list]]:
    """Per loss, the per-rollout (step, group, label, score, weight) records of ``picks`` steps of the main run with
    ``seed``, spread evenly over the run among its off-policy steps (a rollout batch's first mini-batch is on-policy:
    every score is 0 there, which shows no allocation): the measured allocation the notebook plots."""
    import pandas as pd

    samples = {}
    for folder in sorted((out / "main").glob(f"*/*-seed{seed}")):
        records = run_logs(folder) / "gradient_weights"
        tables = [pd.read_parquet(f) for f in sorted(records.glob("step_*.parquet"))] if records.exists() else []
        off_policy = [t for t in tables if (t["score"] != 0).any()]
        if not off_policy:
            continue
        chosen = sorted({round(i * (len(off_policy) - 1) / max(picks - 1, 1)) for i in range(picks)})
        table = pd.concat([off_policy[i] for i in chosen])
        samples[folder.parent.name] = {c: table[c].tolist() for c in ("step", "group", "label", "score", "weight")}
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "replication")
    parser.add_argument("--stages", nargs="+", default=["policy", "lr", "main"], choices=["policy", "lr", "main"])
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=800, help="optimizer steps of each main run")
    parser.add_argument("--lrs", nargs="+", type=float, default=[3e-5, 1e-4, 3e-4], help="the lr sweep's values")
    parser.add_argument("--lr-steps", type=int, default=200, help="optimizer steps of each lr-sweep run")
    parser.add_argument("--lr", type=float, help="one lr for every loss in the main stage (skips the choice)")
    parser.add_argument("--policy", help="start every run from this policy instead of the warm-started one")
    parser.add_argument("--digits", type=int, default=3, help="operand digits of the task")
    parser.add_argument("--summary", type=Path, help="write the summary of every finished run here and exit")
    parser.add_argument("extra", nargs="*", help="more real-lightning arguments for every run (after --)")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.summary:
        collect(args.out, args.summary, args.seeds)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    policy = args.policy or warm_start_policy(args.out, args.digits)
    task = ["--data.train.options", json.dumps({"digits": args.digits})]
    task += ["--data.val.held_out.options", json.dumps({"digits": args.digits})]
    extra = task + args.extra
    if "lr" in args.stages:
        runs = [Run("lr", loss, lr, 0, args.lr_steps) for loss in args.losses for lr in args.lrs]
        for i, run in enumerate(runs, 1):
            execute(run, args.out, policy, extra, i, len(runs))
    if "main" in args.stages:
        lrs = (
            {loss: args.lr for loss in args.losses}
            if args.lr
            else choose_lrs(args.out, args.losses, args.lrs, args.lr_steps)
        )
        print("main-stage lr per loss: " + ", ".join(f"{loss} {lrs[loss]:g}" for loss in args.losses), flush=True)
        runs = [Run("main", loss, lrs[loss], seed, args.steps) for seed in args.seeds for loss in args.losses]
        for i, run in enumerate(runs, 1):
            execute(run, args.out, policy, extra, i, len(runs))


if __name__ == "__main__":
    main()
