"""Does the quickstart learn with LoRA, and at which lr? Full fine-tuning against ``model.lora`` r 8 and r 32.

Every run is the shipped quickstart (``configs/quickstart.yaml``: REAL, the built-in tiny policy and arithmetic task,
600 optimizer steps, held-out Pass@1 of 256 prompts × 8 samples every 150 steps) as a user runs it, full
fine-tuning at its lr (3e-4) or with the ``configs/lora.yaml`` overlay (adapters on every linear layer but the head,
α = 2r) at the lrs below. Adapters start as a no-op (B = 0), so every run starts from the same Pass@1. Each run is
resumable (its ``last.ckpt``), and a finished one is not run again.

    python -m benchmarks.lora_learning                       # 6 runs, ~30 min on 2 idle cores
    python -m benchmarks.lora_learning --runs full lora-r8-lr1e-3
    python -m benchmarks.lora_learning --table               # the table from the finished runs
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from experiments.replicate import run_fit

REPO = Path(__file__).resolve().parents[1]
TAG = "val/held_out/pass@1"
# name: (LoRA rank or None, lr)
RUNS: dict[str, tuple[int | None, float]] = {
    "full": (None, 3e-4),
    "lora-r8-lr3e-4": (8, 3e-4),
    "lora-r8-lr1e-3": (8, 1e-3),
    "lora-r8-lr3e-3": (8, 3e-3),
    "lora-r32-lr1e-3": (32, 1e-3),
    "lora-r32-lr3e-3": (32, 3e-3),
}


def arguments(name: str, folder: Path) -> list[str]:
    rank, lr = RUNS[name]
    args = ["fit", "-c", str(REPO / "configs" / "quickstart.yaml")]
    if rank is not None:
        args += ["-c", str(REPO / "configs" / "lora.yaml"), "--model.lora.r", str(rank)]
        args += ["--model.lora.alpha", str(2.0 * rank)]
    return [
        *args,
        "--model.lr", repr(lr),
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(folder),
        "--trainer.logger.init_args.save_dir", str(folder),
        "--trainer.logger.init_args.name", "tb",
    ]  # fmt: skip


def read_run(folder: Path) -> dict:
    """Held-out Pass@1 as (step, value) pairs, read back from the run's TensorBoard events."""
    from real_lightning.analysis.viz import load_scalars

    scalars = load_scalars(folder / "tb" / "version_0")
    return {"pass_at_1": [[int(s), float(v)] for s, v in scalars.get(TAG, [])]}


def table(out: Path) -> str:
    lines = ["| run | r | lr | held-out Pass@1 before → after | rise | minutes |", "|---|---|---|---|---|---|"]
    for name, (rank, lr) in RUNS.items():
        done = out / name / "done.json"
        if not done.exists():
            continue
        record = json.loads(done.read_text())
        curve = record["pass_at_1"]
        first, last = curve[0][1], curve[-1][1]
        lines.append(
            f"| {name} | {rank or 'full'} | {lr:g} | {first:.4f} → {last:.4f} | {last - first:+.4f} | "
            f"{record['seconds'] / 60:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "lora_learning")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--table", action="store_true", help="print the table of the finished runs and exit")
    args = parser.parse_args()
    if not args.table:
        for name in args.runs:
            folder = args.out / name
            if (folder / "done.json").exists():
                continue
            start = time.perf_counter()
            seconds = run_fit(folder, arguments(name, folder), name)
            record = {"seconds": seconds, **read_run(folder)}
            (folder / "done.json").write_text(json.dumps(record, indent=1) + "\n")
            print(f"{name}: {record['pass_at_1']}, {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    print(table(args.out))


if __name__ == "__main__":
    main()
