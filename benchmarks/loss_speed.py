"""Time and peak memory of each loss (forward + backward) against a per-group Python loop.

Workload (issue #2): 1024 rollouts (128 prompts × 8) × 8192 tokens, float32, CPU. Each
measurement runs in a fresh subprocess so that peak RSS belongs to that one computation:
peak memory = max RSS during the loss's forward+backward minus RSS with the inputs allocated.

    python -m benchmarks.loss_speed                 # full table (a few minutes on 2 cores)
    python -m benchmarks.loss_speed --prompts 16 --tokens 512 --repeats 3   # quick look
    python -m benchmarks.loss_speed --check         # the two implementations agree (values and grads)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.naive_losses import LOOP_LOSSES
from real_lightning.losses import LOSSES

REPO = Path(__file__).resolve().parents[1]

PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def make_inputs(prompts: int, n: int, tokens: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Rollout tensors built in place (no large temporaries that would raise the RSS high-water mark)."""
    gen = torch.Generator().manual_seed(seed)
    batch = prompts * n
    old = torch.empty(batch, tokens).uniform_(-3.0, 0.0, generator=gen)
    logprobs = torch.empty(batch, tokens).normal_(0.0, 0.05, generator=gen).add_(old)
    lengths = torch.randint(tokens // 8, tokens + 1, (batch,), generator=gen)
    mask = torch.arange(tokens)[None, :] < lengths[:, None]
    rewards = torch.randint(0, 2, (batch,), generator=gen).float()
    group_ids = torch.arange(prompts).repeat_interleave(n)[torch.randperm(batch, generator=gen)]
    return {
        "logprobs": logprobs.requires_grad_(),
        "old_logprobs": old,
        "response_mask": mask,
        "rewards": rewards,
        "group_ids": group_ids,
    }


def _call(impl: str, name: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    if impl == "vectorized":
        return LOSSES[name](**inputs).loss
    loop_inputs = dict(inputs, response_mask=inputs["response_mask"].float())  # the loop multiplies by the mask
    return LOOP_LOSSES[name](**loop_inputs)


def measure_once(impl: str, name: str, prompts: int, n: int, tokens: int, repeats: int) -> dict[str, float]:
    """In this process: median seconds of forward+backward over ``repeats`` runs, and peak extra bytes."""
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    inputs = make_inputs(prompts, n, tokens)
    if impl == "loop":  # prepare the float mask outside the timed region, as a loop user would hold it
        inputs = dict(inputs, response_mask=inputs["response_mask"].float())
    baseline = _rss_bytes()
    times = []
    for _ in range(repeats):
        inputs["logprobs"].grad = None
        start = time.perf_counter()
        loss = LOSSES[name](**inputs).loss if impl == "vectorized" else LOOP_LOSSES[name](**inputs)
        loss.backward()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": statistics.median(times), "peak_bytes": max(peak - baseline, 0), "times": times}


def floor_once(prompts: int, n: int, tokens: int, repeats: int) -> dict[str, float]:
    """Memory-bound floor: forward+backward of ((logprobs − old)·mask).sum(), one read of each input."""
    inputs = make_inputs(prompts, n, tokens)
    mask = inputs["response_mask"]
    baseline, times = _rss_bytes(), []
    for _ in range(repeats):
        inputs["logprobs"].grad = None
        start = time.perf_counter()
        torch.where(mask, inputs["logprobs"] - inputs["old_logprobs"], 0.0).sum().backward()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": statistics.median(times), "peak_bytes": max(peak - baseline, 0), "times": times}


def run_subprocess(args: list[str]) -> dict[str, float]:
    command = [sys.executable, "-m", "benchmarks.loss_speed", "--child", *args]
    out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def check(prompts: int, n: int, tokens: int) -> None:
    inputs = make_inputs(prompts, n, tokens)
    for name in LOSSES:
        grads, values = [], []
        for impl in ("vectorized", "loop"):
            inputs["logprobs"].grad = None
            loss = _call(impl, name, inputs)
            loss.backward()
            values.append(loss.detach())
            grads.append(inputs["logprobs"].grad.clone())
        torch.testing.assert_close(values[0], values[1], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-9)
        print(f"{name}: vectorized == loop (value {values[0].item():.6f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median reported)")
    parser.add_argument("--losses", nargs="*", default=sorted(LOSSES))
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", nargs=2, metavar=("IMPL", "NAME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = (args.prompts, args.n, args.tokens)
    if args.check:
        check(*shape)
        return
    if args.child:
        impl, name = args.child
        result = floor_once(*shape, args.repeats) if impl == "floor" else measure_once(impl, name, *shape, args.repeats)
        print(json.dumps(result))
        return
    common = [
        "--prompts",
        str(args.prompts),
        "--n",
        str(args.n),
        "--tokens",
        str(args.tokens),
        "--repeats",
        str(args.repeats),
    ]
    floor = run_subprocess(["floor", "-", *common])
    logits_mb = args.prompts * args.n * args.tokens * 4 / 2**20
    print(
        f"B = {args.prompts * args.n} ({args.prompts} prompts x {args.n}), T = {args.tokens}, float32, "
        f"{torch.get_num_threads()} threads; one [B, T] float32 tensor = {logits_mb:.0f} MiB"
    )
    print(
        f"floor (masked (logprobs - old).sum() fwd+bwd): {floor['seconds'] * 1e3:.1f} ms, "
        f"{floor['peak_bytes'] / 2**20:.0f} MiB"
    )
    header = "| loss | vectorized ms | loop ms | speed-up | vectorized peak MiB | loop peak MiB | vs floor |"
    print(header)
    print("|" + "---|" * 7)
    rows = []
    for name in args.losses:
        vec = run_subprocess(["vectorized", name, *common])
        loop = run_subprocess(["loop", name, *common])
        rows.append({"loss": name, "vectorized": vec, "loop": loop})
        print(
            f"| {name} | {vec['seconds'] * 1e3:.1f} | {loop['seconds'] * 1e3:.1f} | "
            f"{loop['seconds'] / vec['seconds']:.1f}x | {vec['peak_bytes'] / 2**20:.0f} | "
            f"{loop['peak_bytes'] / 2**20:.0f} | {vec['seconds'] / floor['seconds']:.1f}x |",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps({"shape": shape, "floor": floor, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
