"""LoRA against full fine-tuning: peak memory per process, seconds per optimizer step and checkpoint size on disk
of the update on the ~70 M-parameter policy of ``benchmarks/fsdp_memory.py``; then the memory plan of the paper's
1.5 B recipe on one 80 GB GPU with adapters (arithmetic, printed as a plan).

Each configuration is a fresh process (``benchmarks.fsdp_memory``'s worker, the same step: REAL over micro-batches
of one group, the total gradient norm, clipping, ``AdamW.step``) on the same global mini-batch:

- full fine-tuning, float32 (every parameter trained);
- ``model.lora`` with ``r`` 8 and 64 on every linear layer but the head (``all-linear``, α = 2r), float32 base;
- ``r`` 64 with the frozen base in bfloat16 (``model.dtype: bfloat16``; PEFT keeps the adapters in float32);
- ``r`` 8 under FSDP2 on 2 processes (adapters sharded with their layers).

Per process: the bytes of frozen weights, of trainable weights, gradients and AdamW state, the peak RSS of steps
2.. above the RSS before the model was built (see ``fsdp_memory.py``), the median s/step, and (1 process) the size
of ``torch.save`` of what a checkpoint holds: the trainable weights and the optimizer state (with LoRA the base is
``model.pretrained``, not in the checkpoint).

    python -m benchmarks.lora_memory            # ~70 M parameters (~8 min on 2 cores)
    python -m benchmarks.lora_memory --quick    # smoke run, < 1 min
    python -m benchmarks.lora_memory --plan     # the 1.5 B plan only
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.fsdp_memory import add_workload_arguments, run_config, save_model
from benchmarks.update_memory import GROUP_SIZE, MIB

# (label, processes, FSDP2, LoRA rank or None, dtype)
CONFIGS: list[tuple[str, int, bool, int | None, str]] = [
    ("full fine-tuning, fp32", 1, False, None, "float32"),
    ("LoRA r 8, fp32 base", 1, False, 8, "float32"),
    ("LoRA r 64, fp32 base", 1, False, 64, "float32"),
    ("LoRA r 64, bf16 base", 1, False, 64, "bfloat16"),
    ("LoRA r 8, FSDP2, 2 processes", 2, True, 8, "float32"),
]
GB = 1e9


def lora_parameters(hidden: int, kv: int, mlp: int, layers: int, r: int) -> int:
    """Adapter parameters of ``all-linear`` on a Qwen2 decoder: r·(in + out) for q, k, v, o, gate, up, down."""
    shapes = [(hidden, hidden), (hidden, kv), (hidden, kv), (hidden, hidden), (hidden, mlp), (hidden, mlp)]
    shapes.append((mlp, hidden))
    return layers * sum(r * (a + b) for a, b in shapes)


def plan_1p5b(r: int = 32) -> str:
    """Markdown: per-GPU memory of the paper's recipe (``configs/paper/real_r1_distill_qwen_1.5b.yaml``) on ONE
    80 GB GPU with LoRA ``r`` on every linear layer, bf16 base, the fused head, activation checkpointing and one
    group of 8 rollouts × 9,216 tokens per micro-batch (the terms of the 8-GPU plan in benchmarks/README.md)."""
    hidden, layers, mlp, kv, vocab = 1536, 28, 8960, 256, 151_936
    per_layer = hidden * (hidden + 2 * kv + hidden) + 3 * hidden * mlp + 3 * hidden + 2 * kv  # + q/k/v biases, 2 norms
    base = layers * per_layer + 2 * vocab * hidden + hidden
    adapters = lora_parameters(hidden, kv, mlp, layers, r)
    tokens = GROUP_SIZE * 9216
    rows = [
        ("bf16 base weights (frozen, one full copy)", f"2 B × {base / 1e9:.3f} B", 2 * base),
        (f"fp32 adapters r {r} + gradients + AdamW m, v", f"16 B × {adapters / 1e6:.1f} M", 16 * adapters),
        ("π_ref (KL): the base with the adapters off", "no copy", 0),
        ("checkpointed layer inputs, one micro-batch", f"{tokens:,} tokens × {hidden} × 2 B × {layers}",
         tokens * hidden * 2 * layers),
        ("one layer recomputed in the backward", f"{tokens:,} × {mlp} × 2 B × 4", tokens * mlp * 2 * 4),
        ("fused head blocks (frozen head: no fp32 head gradient)", f"256 × {vocab:,} × 10 B", 256 * vocab * 10),
    ]  # fmt: skip
    training = sum(b for _, _, b in rows)
    lines = ["| item | formula | GB |", "|---|---|---|"]
    lines += [f"| {name} | {formula} | {b / GB:.2f} |" for name, formula, b in rows]
    lines.append(f"| **training peak, worst case (all 8 rollouts at 8,192 tokens)** | | **≈ {training / GB:.1f}** |")
    vllm = 0.5 * 80 * GB
    kv_per_token = 2 * layers * 2 * 128 * 2  # K and V, 2 KV heads of 128, bf16
    kv_tokens = (vllm - 2 * base) / kv_per_token
    lines.append(f"| vLLM at `gpu_memory_utilization: 0.5` (asleep while training) | 0.5 × 80 GB | {vllm / GB:.0f} |")
    lines.append(
        f"| of which KV cache | {kv_per_token // 1024} KiB per token | ≈ {kv_tokens / 1e6:.2f} M tokens = "
        f"{kv_tokens / 9216:.0f} sequences of 9,216 |"
    )
    full_state = 16 * base
    lines.append(f"| full fine-tuning's resident state on one GPU, for comparison | 16 B × {base / 1e9:.3f} B | "
                 f"{full_state / GB:.1f} (+ π_ref {2 * base / GB:.2f}) |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_arguments(parser)
    parser.add_argument("--plan", action="store_true", help="print the 1.5 B plan only")
    parser.add_argument("--plan-rank", type=int, default=32)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.plan:
        print(plan_1p5b(args.plan_rank))
        return
    if args.quick:
        args.hidden, args.layers, args.vocab, args.steps, args.response = 128, 2, 4096, 3, 32
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(Path(tmp) / "policy")
        n = save_model(args, model_dir)
        print(
            f"Qwen2 vocab {args.vocab:,}, hidden {args.hidden}, {args.layers} layers: {n / 1e6:.1f} M parameters; "
            f"global mini-batch {args.groups} groups × {GROUP_SIZE} rollouts, prompt ≤ {args.prompt}, response ≤ "
            f"{args.response}; {args.cores} cores shared by the ranks\n"
        )
        print(
            "| configuration | rank | frozen MiB | trainable MiB | gradients MiB | AdamW state MiB | peak MiB | "
            "peak / full | s/step | checkpoint MiB |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        full_peak = None
        for label, world, sharded, rank, dtype in CONFIGS:
            args.threads = max(args.cores // world, 1)
            extra: dict = {"dtype": dtype, "checkpoint": str(Path(tmp) / f"ckpt-{len(results)}.pt")}
            if rank is not None:
                extra["lora"] = {"r": rank, "alpha": 2.0 * rank}
            start = time.perf_counter()
            ranks = run_config(args, model_dir, world, sharded, tmp, extra)
            wall = time.perf_counter() - start
            for r in ranks:
                full_peak = full_peak or r["peak_bytes"]
                step_s = statistics.median(r["seconds"][1:]) if len(r["seconds"]) > 1 else r["seconds"][0]
                size = r["checkpoint_bytes"]
                print(
                    f"| {label} | {r['rank']} | {r['frozen_bytes'] / MIB:,.1f} | {r['param_bytes'] / MIB:,.1f} | "
                    f"{r['grad_bytes'] / MIB:,.1f} | {r['optimizer_bytes'] / MIB:,.1f} | "
                    f"{r['peak_bytes'] / MIB:,.0f} | {r['peak_bytes'] / full_peak:.2f}× | {step_s:.2f} | "
                    f"{'–' if size is None else f'{size / MIB:,.2f}'} |",
                    flush=True,
                )
            results.append({"configuration": label, "world": world, "lora_r": rank, "dtype": dtype, "wall_s": wall,
                            "ranks": ranks})  # fmt: skip
    print(f"\nPlan (arithmetic): the paper's 1.5 B recipe on one 80 GB GPU with LoRA r {args.plan_rank}\n")
    print(plan_1p5b(args.plan_rank))
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        args.json.write_text(json.dumps({"args": settings, "results": results}, indent=1))


if __name__ == "__main__":
    main()
