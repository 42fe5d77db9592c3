"""Asynchronous rollouts (``data.schedule.max_staleness``) against the synchronous run: speed and time to accuracy.

Two measurements, each run in fresh subprocesses one at a time (nothing else running), modes in turn:

* ``speed`` — the generation-heavy workload of ``step_time.py --workload long`` (12.1 M-parameter Qwen3,
  16 prompts × 8 samples × 256 new tokens, micro-batches of 16; one optimizer step per rollout batch). Per mode:
  wall seconds per step (the interval between consecutive step starts, as ``step_time.py`` measures it), the
  trainer's idle fraction (``time/wait_for_rollouts_s`` ÷ step wall time), the producer's idle seconds and its
  sampling seconds per batch. Medians over the steps after ``--skip``.
* ``accuracy`` — the quickstart job (``configs/quickstart.yaml``, 600 steps) per mode and seed: the policy is
  saved every ``--every`` steps (the seconds spent saving are taken off the clock) and evaluated afterwards in
  another process (held-out arithmetic set, 256 prompts × 8 samples, T = 1, as the quickstart's Pass@1). Reports
  the training wall time until held-out Pass@1 first reaches ``--target`` and the Pass@1 each run has at the same
  wall-clock budget (the median over seeds of the synchronous runs' time to the target).

Modes (``MODES``): ``sync`` (no producer), ``fixed-1`` / ``fixed-2`` (S = 1, 2 in fixed mode), ``bounded-2``,
each with its split of the 2 cores: ``T+P`` = the trainer's torch threads + the producer process's threads.

Usage::

    python -m benchmarks.async_rollouts speed                   # long workload: sync, fixed-1, bounded-2 (~20 min)
    python -m benchmarks.async_rollouts accuracy --seeds 0 1 2  # quickstart: sync, fixed-1, fixed-2 (~60 min)
    python -m benchmarks.async_rollouts speed --smoke --steps 3 # tiny sizes (tests)
    python -m benchmarks.async_rollouts tables --json speed.json # the tables of an earlier run again

``speed`` also prints a *model* of the same step on an 8-GPU node from the measured phases
(:func:`gpu_node_model`: generation on separate GPUs against colocated), labelled as such.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.step_time import CONFIG, REPO, StepClock, _busy_cpu_s, _children_cpu_s, _read_scalars, ours_overrides


@dataclass(frozen=True)
class Mode:
    """One way to run: staleness bound S, its mode, and how the 2 cores are split."""

    name: str
    max_staleness: int
    staleness_mode: str
    trainer_threads: int
    producer_threads: int

    @property
    def split(self) -> str:
        """The threads: the trainer's, then ``+`` the producer's (when there is one)."""
        return f"{self.trainer_threads}" + (f"+{self.producer_threads}" if self.max_staleness else "")

    def overrides(self) -> list[str]:
        """The CLI options of this mode: ``configs/async.yaml`` (as users turn it on: a worker process, truncated
        importance sampling per token) with this S, staleness mode and producer threads."""
        if self.max_staleness == 0:
            return []
        return [
            "-c", str(REPO / "configs" / "async.yaml"),
            "--data.schedule.max_staleness", str(self.max_staleness),
            "--data.schedule.staleness_mode", self.staleness_mode,
            "--data.producer.threads", str(self.producer_threads),
        ]  # fmt: skip


MODES = {
    m.name: m
    for m in (
        Mode("sync", 0, "fixed", 2, 0),
        Mode("fixed-1", 1, "fixed", 1, 1),
        Mode("bounded-2", 2, "bounded", 1, 1),
        Mode("fixed-2", 2, "fixed", 1, 1),
        Mode("fixed-1-2+1", 1, "fixed", 2, 1),
    )
}


class SaveEvery(StepClock):
    """StepClock that also saves the policy's weights every ``every`` steps into ``directory`` and keeps, per save,
    the training wall time so far with the seconds spent saving left out (``saves``: (step, seconds, path))."""

    saves: list[tuple[int, float, str]] = []  # noqa: RUF012

    def __init__(self, directory: str, every: int) -> None:
        super().__init__()
        self.directory, self.every, self.saving = Path(directory), every, 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        import torch

        step = trainer.global_step
        if step % self.every == 0:
            begin = time.perf_counter()
            path = self.directory / f"step-{step}.pt"
            torch.save({k: v.detach().clone() for k, v in pl_module.policy.state_dict().items()}, path)
            SaveEvery.saves.append((step, begin - StepClock.starts[0] - self.saving, str(path)))
            self.saving += time.perf_counter() - begin


def _worker_fit(args: argparse.Namespace) -> dict:
    """One fit in this process (``--worker fit``): the mode's options on the quickstart config or the long workload."""
    import torch

    mode = MODES[args.mode]
    torch.set_num_threads(mode.trainer_threads)
    sys.modules.setdefault("benchmarks.async_rollouts", sys.modules[__name__])
    from real_lightning.cli import main

    work = Path(args.workdir)
    if args.measure == "speed":
        workload = argparse.Namespace(workload="long", smoke=args.smoke, engine="hf", long_dir=str(work / "long"))
        extra = ours_overrides(workload)
        callback = {"class_path": "benchmarks.step_time.StepClock", "init_args": {}}
    else:
        (work / "saves").mkdir()
        extra = ["--data.seed", str(args.seed)]
        if args.smoke:
            extra += ["--data.schedule.prompts_per_rollout", "4", "--data.engine.init_args.max_new_tokens", "6"]
        callback = {
            "class_path": "benchmarks.async_rollouts.SaveEvery",
            "init_args": {"directory": str(work / "saves"), "every": args.every},
        }
    main([
        "fit",
        "-c", str(CONFIG),
        *extra,
        *mode.overrides(),
        *json.loads(args.overrides_json),
        "--trainer.max_steps", str(args.steps),
        "--validate_before_fit", "false",
        "--trainer.limit_val_batches", "0",
        "--trainer.log_every_n_steps", "1",
        "--trainer.enable_checkpointing", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(work),
        "--trainer.logger.init_args.save_dir", str(work / "tb"),
        "--trainer.callbacks", json.dumps([callback]),
        "--model.export_dir", "null",
        "--seed_everything", str(args.seed),
    ])  # fmt: skip
    scalars = _read_scalars(work / "tb")
    starts, ends = StepClock.starts, StepClock.ends
    walls = [b - a for a, b in itertools.pairwise(starts)] + [ends[-1] - starts[-1]]
    out = {"mode": asdict(mode), "seed": args.seed, "step_wall_s": walls, "train_wall_s": ends[-1] - starts[0]}
    for tag in ("time/wait_for_rollouts_s", "time/trainer_busy_s", "producer/idle_s", "time/rollout_s",
                "time/generation_s", "time/update_s", "rollout/staleness_batches_max"):  # fmt: skip
        out[tag] = scalars.get(tag, [])
    if args.measure == "accuracy":
        out["saves"] = SaveEvery.saves
        out["pass@1"] = _evaluate([path for _, _, path in SaveEvery.saves], smoke=args.smoke)
    return out


def _evaluate(paths: list[str], smoke: bool) -> list[float]:
    """Held-out Pass@1 (256 prompts × 8 samples, T = 1, seed 0) of each saved policy: the quickstart's measure."""
    import torch

    from real_lightning.data.arithmetic import ArithmeticTask
    from real_lightning.policy.loading import load_policy, load_tokenizer
    from real_lightning.rewards import math_reward
    from real_lightning.rollout.hf import HFEngine

    model, tokenizer = load_policy("builtin:tiny"), load_tokenizer("builtin:tiny")
    records = ArithmeticTask().records("test")[: 16 if smoke else None]
    prompts = [tokenizer(r.prompt).input_ids for r in records]
    truths = [r.ground_truth for r in records for _ in range(8)]
    engine = HFEngine(max_new_tokens=12, temperature=1.0)
    engine.setup(model, tokenizer)
    scores = []
    for path in paths:
        model.load_state_dict(torch.load(path))
        generation = engine.generate(prompts, n=8, seed=0)
        cut = generation.truncated.tolist()
        correct = [not c and bool(math_reward(t, g)) for t, g, c in zip(generation.texts, truths, cut, strict=True)]
        scores.append(sum(correct) / len(correct))
    return scores


def _run(args: argparse.Namespace, mode: str, seed: int, log_path: Path) -> dict:
    """One fit in a fresh subprocess; adds ``foreign_cpu_s`` (CPU seconds other processes used meanwhile)."""
    with tempfile.TemporaryDirectory(prefix=f"async_{mode}_") as work:
        out = Path(work) / "result.json"
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.async_rollouts",
            args.measure,
            "--worker",
            "--mode",
            mode,
            "--seed",
            str(seed),
            "--steps",
            str(args.steps),
            "--every",
            str(args.every),
            "--workdir",
            work,
            "--out",
            str(out),
            "--overrides-json",
            json.dumps(args.overrides),
        ]
        cmd += ["--smoke"] if args.smoke else []  # fmt: skip
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="2")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        busy0, own0, wall0 = _busy_cpu_s(), _children_cpu_s(), time.perf_counter()
        with open(log_path, "a") as log:
            log.write(f"\n$ {' '.join(cmd)}\n")
            log.flush()
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO), check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{mode} seed {seed} failed (exit {proc.returncode}); see {log_path}")
        result = json.loads(out.read_text())
        busy1, own1 = _busy_cpu_s(), _children_cpu_s()
        if busy0 is not None and busy1 is not None:
            result["foreign_cpu_s"] = max(0.0, (busy1 - busy0) - (own1 - own0))
        result["process_wall_s"] = time.perf_counter() - wall0
        return result


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def speed_table(results: list[dict], skip: int) -> str:
    """Markdown: per mode, medians over the steps after ``skip``."""
    rows = [
        "| mode | S, staleness mode | threads (trainer+producer) | s/step | × sync | trainer idle | producer idle s "
        "| producer sampling s | staleness (batches) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    sync = None
    for r in results:
        mode, walls = r["mode"], r["step_wall_s"][skip:]
        step = _median(walls)
        sync = step if mode["max_staleness"] == 0 else sync
        waits = r["time/wait_for_rollouts_s"][skip:]
        idle_share = f"{sum(waits) / sum(walls):.0%}" if waits else "— (samples itself)"
        producer = r["producer/idle_s"][skip:]
        sampling = r["time/rollout_s"][skip:]
        rows.append(
            f"| {mode['name']} | {mode['max_staleness']}, {mode['staleness_mode'] if mode['max_staleness'] else '—'} "
            f"| {Mode(**mode).split} | {step:.1f} | {step / sync:.2f}× | {idle_share} | "
            + (f"{_median(producer):.1f}" if producer else "—")
            + f" | {_median(sampling):.1f} | {max(r['rollout/staleness_batches_max'] or [0]):.0f} |"
        )
    return "\n".join(rows)


def accuracy_table(results: list[dict], target: float) -> str:
    """Markdown: per mode and seed, time to ``target`` and Pass@1 at the synchronous runs' median time to it."""

    def reach(r: dict) -> float:
        return next((s for (_, s, _), p in zip(r["saves"], r["pass@1"], strict=True) if p >= target), float("inf"))

    sync_times = [reach(r) for r in results if r["mode"]["max_staleness"] == 0]
    budget = _median([t for t in sync_times if t < float("inf")])
    rows = [
        f"Budget for the last column: {budget:.0f} s (median of the synchronous runs' time to Pass@1 ≥ {target}).",
        "",
        f"| mode | threads | seed | s to Pass@1 ≥ {target} (step) | Pass@1 at {budget:.0f} s | Pass@1 at the end | "
        "s/step (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        mode = r["mode"]
        t = reach(r)
        at_step = next((st for (st, s, _), p in zip(r["saves"], r["pass@1"], strict=True) if p >= target), None)
        within = [p for (_, s, _), p in zip(r["saves"], r["pass@1"], strict=True) if s <= budget]
        split = Mode(**mode).split
        rows.append(
            f"| {mode['name']} | {split} | {r['seed']} | "
            + (f"{t:.0f} ({at_step})" if at_step is not None else "not reached")
            + f" | {within[-1] if within else float('nan'):.4f} | {r['pass@1'][-1]:.4f} | "
            f"{_median(r['step_wall_s'][5:]):.3f} |"
        )
    return "\n".join(rows)


def gpu_node_model(results: list[dict], skip: int, gpus: int = 8) -> str:
    """Markdown: a *model* (not a measurement) of one step on a node of ``gpus`` GPUs, from the measured phases.

    Measured here (medians after ``skip``): G = the synchronous run's rollout phase, U = its update, and P = the
    π_old pass a stale batch adds (the asynchronous ``fixed-1`` trainer's busy time minus its update, scaled by
    U_sync / U_async to the synchronous threads). Assumed: each phase's time scales as 1/GPUs; decoding on k of
    the node's GPUs is ``b`` times as efficient per GPU as on all of them (memory-bound decode holds gpus/k times
    more sequences per GPU: b = 1 none, 2 typical at small batches); ``tail`` = how much longer the synchronous
    rollout phase is than its busy part (the longest response gates the step; the producer keeps the engine fed).
    Colocated synchronous: t = tail·G + U. Split (k GPUs sample in servers, gpus − k train, S ≥ 1):
    t = max(gpus·G / (k·b), gpus·(U + P) / (gpus − k)), P = 0 with ``old_logprobs: engine``; best k shown.
    """
    sync = next(r for r in results if r["mode"]["max_staleness"] == 0)
    stale = next((r for r in results if r["mode"]["name"] == "fixed-1"), None)
    g, u = _median(sync["time/rollout_s"][skip:]), _median(sync["time/update_s"][skip:])
    p = 0.0
    if stale is not None:
        busy, update = _median(stale["time/trainer_busy_s"][skip:]), _median(stale["time/update_s"][skip:])
        p = max(0.0, busy - update) * u / update
    rows = [
        f"Measured (s): G = {g:.1f}, U = {u:.1f}, P = {p:.1f}. A model, not a measurement:",
        "",
        "| decode gain b | tail | π_old | colocated sync t | best split (k sample + rest train) | t | sync / split |",
        "|---|---|---|---|---|---|---|",
    ]
    for b in (1.0, 2.0):
        for tail in (1.0, 2.0):
            for name, extra in (("trainer (recomputed)", p), ("engine", 0.0)):
                colocated = tail * g + u
                split = {k: max(gpus * g / (k * b), gpus * (u + extra) / (gpus - k)) for k in range(1, gpus)}
                k = min(split, key=split.get)
                rows.append(
                    f"| {b:g} | {tail:g} | {name} | {colocated:.1f} | {k} + {gpus - k} | {split[k]:.1f} | "
                    f"{colocated / split[k]:.2f}× |"
                )
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("measure", choices=["speed", "accuracy", "tables"])
    p.add_argument("--modes", nargs="+", choices=sorted(MODES), default=None,
                   help="speed: sync fixed-1 bounded-2 fixed-1-2+1; accuracy: sync fixed-1 fixed-2")  # fmt: skip
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="seed_everything and data.seed of each run")
    p.add_argument("--steps", type=int, default=None, help="steps per run (speed 6, accuracy 600)")
    p.add_argument("--skip", type=int, default=1, help="speed: warm-up steps left out of the medians")
    p.add_argument("--every", type=int, default=25, help="accuracy: save and evaluate the policy every this many steps")
    p.add_argument("--target", type=float, default=0.7, help="accuracy: the held-out Pass@1 to reach")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (tests)")
    p.add_argument(
        "--overrides", nargs=argparse.REMAINDER, default=[],
        help="CLI options for every run, after the mode's (last on the line: --overrides --model.lr 1e-4 ...)",
    )  # fmt: skip
    p.add_argument("--overrides-json", default="[]", help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, default=None, help="also write every measurement to this file")
    p.add_argument("--log", type=Path, default=Path(tempfile.gettempdir()) / "async_rollouts_workers.log")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.steps = args.steps or (6 if args.measure == "speed" else 600)
    if args.worker:
        Path(args.out).write_text(json.dumps(_worker_fit(args)))
        return
    if args.measure == "tables":  # print the tables of an earlier run's --json again
        results = json.loads(args.json.read_text())
        if "saves" in results[0]:
            print(accuracy_table(results, args.target))
        else:
            print(speed_table(results, args.skip) + "\n\n" + gpu_node_model(results, args.skip))
        return
    modes = args.modes or (
        ["sync", "fixed-1", "bounded-2", "fixed-1-2+1"] if args.measure == "speed" else ["sync", "fixed-1", "fixed-2"]
    )
    results = []
    for seed in args.seeds:
        for mode in modes:
            print(f"{args.measure}: {mode}, seed {seed} ...", flush=True)
            results.append(_run(args, mode, seed, args.log))
            r = results[-1]
            print(f"  {r['train_wall_s']:.1f} s of training, other processes {r.get('foreign_cpu_s', 0):.1f} CPU-s",
                  flush=True)  # fmt: skip
            if args.json:  # after every run: an interrupted benchmark keeps what it measured
                args.json.write_text(json.dumps(results, indent=1))
    if args.measure == "speed":
        print(speed_table(results, args.skip))
        if any(r["mode"]["name"] == "fixed-1" for r in results):
            print("\n" + gpu_node_model(results, args.skip))
    else:
        print(accuracy_table(results, args.target))


if __name__ == "__main__":
    main()
