"""Peak memory per process and seconds per optimizer step of the update, unsharded on 1 process against FSDP2
on 1 and 2 processes (CPU, gloo), with the same global mini-batch.

Workload: a random ``Qwen2ForCausalLM`` (default: vocabulary 32,000, hidden 640, 8 layers, 8 heads / 4 KV
heads, MLP 2560, tied embeddings, float32: 69.8 M parameters, 266 MiB), saved once with ``save_pretrained``
and loaded by every run as ``RealPolicyModule`` does: unsharded with ``load_policy``; sharded with
``real_lightning.fsdp`` (meta-device build, ``fully_shard`` per decoder layer and at the root, rank 0 reads the
checkpoint and broadcasts, each rank keeps its shard). The global mini-batch is ``--groups`` groups × 8
rollouts of ``benchmarks/update_memory.py``'s synthetic ``RolloutBatch`` (prompt ≤ ``--prompt``, responses
≤ ``--response``); rank r of W takes groups r, r + W, ... (the same work in every configuration).

One step = ``real_lightning.step.accumulate.accumulate_step`` (loss REAL, τ = 0.5, micro-batches of one group, the
loss scaled by the world size as the module does) + the total gradient norm
(``real_lightning.policy.sharding.total_grad_norm``) + clipping at 1.0 + ``AdamW.step``. Each configuration is a fresh
set of processes (``--worker``) with ``--threads`` torch threads each (default: 2 cores shared by the ranks).

Per rank it reports: the exact bytes it holds of parameters, gradients and AdamW state (its shards), and the
*peak* = highest RSS during steps 2.. (``VmHWM`` after ``/proc/self/clear_refs``, reset once step 1 has
allocated the optimizer state) minus the RSS before the model was built — everything the update costs the
process: weights, gradients, optimizer state, activations, gathered layers, communication buffers. The
workers run with ``MALLOC_MMAP_THRESHOLD_=131072`` so that freed tensors leave the RSS (glibc would otherwise
keep many in its heap and the peak would measure the allocator). Seconds per step: median of steps
2..``--steps``.

    python -m benchmarks.fsdp_memory           # ~70 M parameters, 4 groups × 8 × (32 + 96) tokens (~6 min on 2 cores)
    python -m benchmarks.fsdp_memory --quick   # smoke run, < 1 min
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.update_memory import (
    GROUP_SIZE,
    MIB,
    _peak_rss_bytes,
    _reset_peak,
    _rss_bytes,
    build_batch,
    build_model,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [("1 process, unsharded", 1, False), ("1 process, FSDP2", 1, True), ("2 processes, FSDP2", 2, True)]


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _bytes(tensors: list[torch.Tensor]) -> int:
    return sum(_local(t).numel() * _local(t).element_size() for t in tensors)


def worker(spec: dict) -> dict:
    """One rank: load (and shard) the policy, run ``steps`` optimizer steps on its groups, measure them."""
    args = argparse.Namespace(**spec["args"])
    torch.set_num_threads(args.threads)
    rank, world, sharded = spec["rank"], spec["world"], spec["fsdp"]
    lora, dtype = spec.get("lora"), getattr(torch, spec.get("dtype", "float32"))  # benchmarks/lora_memory.py
    if sharded:
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world, init_method=spec["init"])
    from real_lightning.logprobs import sequence_logprobs
    from real_lightning.losses import LOSSES
    from real_lightning.policy.loading import load_policy
    from real_lightning.policy.lora import LoRAConfig, apply_lora
    from real_lightning.policy.sharding import FSDPConfig, empty_policy, load_weights, shard_policy, total_grad_norm
    from real_lightning.step.accumulate import accumulate_step

    batch = build_batch(args.groups, args.prompt, args.response, args.vocab)
    mine = batch.take_groups(torch.arange(rank, args.groups, world))
    device = torch.device("cpu")
    gc.collect()
    before_model = _rss_bytes()
    if sharded:
        from torch.distributed.device_mesh import init_device_mesh

        policy = empty_policy(spec["model_dir"], dtype)
        rng = torch.get_rng_state()
        if lora:
            policy = apply_lora(policy, LoRAConfig(**lora), rng)
        shard_policy(policy, init_device_mesh("cpu", (world,)), FSDPConfig())
        full = (lambda: apply_lora(load_policy(spec["model_dir"], dtype), LoRAConfig(**lora), rng)) if lora else None
        load_weights(policy, spec["model_dir"], dtype, device, full)
    else:
        policy = load_policy(spec["model_dir"], dtype)
        policy = apply_lora(policy, LoRAConfig(**lora)) if lora else policy
    policy.train()
    params = [p for p in policy.parameters() if p.requires_grad]
    frozen = [p for p in policy.parameters() if not p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6)

    def logprobs_fn(b, with_entropy: bool = False):
        return sequence_logprobs(
            policy, b.input_ids, b.attention_mask, b.prompt_length, temperature=1.0, chunk_size=256,
            with_entropy=with_entropy,
        )  # fmt: skip

    seconds, peak, norms = [], 0, []
    for step in range(args.steps):
        if step == 1:  # the optimizer state exists now: the peak of steps 2.. is the steady state
            gc.collect()
            _reset_peak()
        start = time.perf_counter()
        policy.zero_grad(set_to_none=True)
        accumulate_step(
            mine,
            (None, GROUP_SIZE),
            logprobs_fn=logprobs_fn,
            loss_fn=LOSSES["real"],
            loss_kwargs={"tau": 0.5},
            backward=lambda loss: loss.backward(),
            device=device,
            world_size=world,
        )
        norm = total_grad_norm(params)
        torch.nn.utils.clip_grads_with_norm_(params, 1.0, norm)
        optimizer.step()
        norms.append(float(norm))
        seconds.append(time.perf_counter() - start)
        if step >= 1:
            peak = max(peak, _peak_rss_bytes() - before_model)
    grads = [p.grad for p in params if p.grad is not None]
    state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0]
    checkpoint = Path(spec["checkpoint"]) if spec.get("checkpoint") else None
    if checkpoint is not None and not sharded:  # what a checkpoint holds: trainable weights + optimizer state
        trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
        weights = {k: v for k, v in policy.state_dict().items() if k in trainable}
        torch.save({"state_dict": weights, "optimizer": optimizer.state_dict()}, checkpoint)
    result = {
        "rank": rank,
        "frozen_bytes": _bytes(frozen),
        "checkpoint_bytes": checkpoint.stat().st_size if checkpoint is not None and checkpoint.exists() else None,
        "param_bytes": _bytes(params),
        "grad_bytes": _bytes(grads),
        "optimizer_bytes": _bytes(state),
        "peak_bytes": peak,
        "seconds": seconds,
        "grad_norms": norms,
    }
    if sharded:
        torch.distributed.destroy_process_group()
    return result


def run_config(
    args: argparse.Namespace, model_dir: str, world: int, sharded: bool, tmp: str, extra: dict | None = None
) -> list[dict]:
    """Start ``world`` worker processes and collect their results (rank order); ``extra``: more of the workers'
    spec (``lora``, ``dtype``, ``checkpoint``: benchmarks/lora_memory.py)."""
    spec_args = {k: getattr(args, k) for k in ("groups", "prompt", "response", "vocab", "steps", "threads")}
    init = f"file://{Path(tmp) / f'init-{world}-{int(sharded)}'}"  # a fresh rendezvous file per configuration
    procs = []
    for rank in range(world):
        spec = {"args": spec_args, "rank": rank, "world": world, "fsdp": sharded, "init": init, "model_dir": model_dir}
        spec |= extra or {}
        # big allocations mmapped and unmapped on free (glibc's adaptive threshold would keep freed tensors in
        # the heap): RSS then follows the live tensors, not what the allocator kept
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
        cmd = [sys.executable, "-m", "benchmarks.fsdp_memory", "--worker", json.dumps(spec)]
        procs.append(
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
        )
    results = []
    for rank, proc in enumerate(procs):
        out, err = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"rank {rank} of {world} failed (rc {proc.returncode}): {err.strip()[-2000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def save_model(args: argparse.Namespace, directory: str) -> int:
    """Save the random policy (8 heads / 4 KV heads) with ``save_pretrained``; returns its parameter count."""
    model = build_model(args, num_heads=8, num_kv_heads=4)
    model.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    """The model, mini-batch and machine options of this benchmark (``benchmarks/lora_memory.py`` shares them)."""
    parser.add_argument("--groups", type=int, default=4, help="prompts in the global mini-batch (8 rollouts each)")
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--response", type=int, default=96)
    parser.add_argument("--vocab", type=int, default=32_000)
    parser.add_argument("--hidden", type=int, default=640, help="hidden size (MLP 4×, 8 heads / 4 KV heads)")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per run (the first is a warm-up)")
    parser.add_argument("--cores", type=int, default=2, help="CPU cores shared by the ranks (threads = cores / ranks)")
    parser.add_argument("--quick", action="store_true", help="smoke run: hidden 128, 2 layers, vocabulary 4096")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_arguments(parser)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.quick:
        args.hidden, args.layers, args.vocab, args.steps, args.response = 128, 2, 4096, 3, 32
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(Path(tmp) / "policy")
        n = save_model(args, model_dir)
        print(
            f"Qwen2 vocab {args.vocab:,}, hidden {args.hidden}, {args.layers} layers, float32: {n / 1e6:.1f} M "
            f"parameters ({n * 4 / MIB:.0f} MiB); global mini-batch {args.groups} groups × {GROUP_SIZE} rollouts, "
            f"prompt ≤ {args.prompt}, response ≤ {args.response}; {args.cores} cores shared by the ranks\n"
        )
        print(
            "| configuration | rank | parameters MiB | gradients MiB | AdamW state MiB | peak MiB | peak / unsharded | "
            "peak − states MiB | s/step | grad norm, last step |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        unsharded_peak = None
        for label, world, sharded in CONFIGS:
            args.threads = max(args.cores // world, 1)
            start = time.perf_counter()
            ranks = run_config(args, model_dir, world, sharded, tmp)
            wall = time.perf_counter() - start
            for r in ranks:
                unsharded_peak = unsharded_peak or r["peak_bytes"]
                step_s = statistics.median(r["seconds"][1:]) if len(r["seconds"]) > 1 else r["seconds"][0]
                states = r["param_bytes"] + r["grad_bytes"] + r["optimizer_bytes"]
                print(
                    f"| {label} | {r['rank']} | {r['param_bytes'] / MIB:,.0f} | {r['grad_bytes'] / MIB:,.0f} | "
                    f"{r['optimizer_bytes'] / MIB:,.0f} | {r['peak_bytes'] / MIB:,.0f} | "
                    f"{r['peak_bytes'] / unsharded_peak:.2f}× | {(r['peak_bytes'] - states) / MIB:,.0f} | "
                    f"{step_s:.2f} | {r['grad_norms'][-1]:.6g} |",
                    flush=True,
                )
            results.append({"configuration": label, "world": world, "fsdp": sharded, "wall_s": wall, "ranks": ranks})
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("json", "worker")}
        args.json.write_text(json.dumps({"args": settings, "results": results}, indent=1))


if __name__ == "__main__":
    main()
