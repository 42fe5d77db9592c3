"""Peak memory and time of per-token log-probs + entropy: chunked ``token_logprobs`` against log_softmax.

Workload: B = 8 rollouts × T = 2048 tokens × V = 151,936 (Qwen's vocabulary), float32 logits on
CPU; one logits tensor is 8·2048·151936·4 B ≈ 9.3 GiB. Two modes:

- ``fwd``: log-probs + entropy under ``torch.no_grad`` (old log-probs and metrics);
- ``fwd+bwd``: log-probs (+ entropy as a detached metric) and ``logprobs.sum().backward()``
  with the logits requiring grad (the training step).

The peer ("naive") is ``logp = torch.log_softmax(logits / τ, -1)`` (no division when τ = 1),
``logp.gather(-1, tokens)`` and the entropy ``-(p · logp).sum(-1)`` with ``p = logp.exp()``.

Each measurement runs in a fresh subprocess: the logits are allocated in place
(``torch.empty(...).normal_()``), then peak memory = ``ru_maxrss`` after the timed runs minus the
RSS (``/proc/self/statm``) with the logits allocated. Time is the median of ``--repeats`` runs.
A measurement whose estimated need exceeds 90 % of MemAvailable is not run (it would be
OOM-killed) and is reported as such; every measurement is also run at ``--small-tokens`` so that
the two implementations are compared at one size.

    python -m benchmarks.logprob_memory                       # full size + T = 512 (~10 min on 2 cores)
    python -m benchmarks.logprob_memory --tokens 256 --small-tokens 64 --repeats 1   # quick look
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

from real_lightning.logprobs import token_logprobs

REPO = Path(__file__).resolve().parents[1]

PAGE = os.sysconf("SC_PAGE_SIZE")
GIB = 2**30
# extra [B, T, V] tensors alive at the peak, beyond the logits (for the fit check only)
EXTRA_TENSORS = {("ours", "fwd"): 0.1, ("ours", "fwd+bwd"): 1.1, ("naive", "fwd"): 3.0, ("naive", "fwd+bwd"): 5.0}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def _mem_available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def naive(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    logp = torch.log_softmax(logits / temperature if temperature != 1.0 else logits, -1)
    logprobs = logp.gather(-1, tokens[..., None])[..., 0]
    with torch.no_grad():
        p = logp.exp()
        entropy = -(p * logp).sum(-1)
    return logprobs, entropy


def ours(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    return token_logprobs(logits, tokens, temperature=temperature, chunk_size=chunk_size, with_entropy=True)


def measure(impl: str, mode: str, batch: int, tokens: int, vocab: int, args: argparse.Namespace) -> dict:
    """In this process: allocate the logits, run ``repeats`` times, return median seconds and peak extra bytes."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.empty(batch, tokens, vocab).normal_(generator=gen)  # in place: no temporary
    ids = torch.randint(0, vocab, (batch, tokens), generator=gen)
    if mode == "fwd+bwd":
        logits.requires_grad_()
    baseline = _rss_bytes()
    times = []
    for _ in range(args.repeats):
        logits.grad = None
        start = time.perf_counter()
        if mode == "fwd":
            with torch.no_grad():
                lp, ent = (
                    naive(logits, ids, args.temperature)
                    if impl == "naive"
                    else ours(logits, ids, args.temperature, args.chunk_size)
                )
        else:
            lp, ent = (
                naive(logits, ids, args.temperature)
                if impl == "naive"
                else ours(logits, ids, args.temperature, args.chunk_size)
            )
            lp.sum().backward()
        times.append(time.perf_counter() - start)
        del lp, ent
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "seconds": statistics.median(times),
        "times": times,
        "peak_extra_bytes": max(peak - baseline, 0),
        "logits_bytes": logits.numel() * logits.element_size(),
    }


def run_child(impl: str, mode: str, tokens: int, args: argparse.Namespace) -> dict:
    logits_bytes = args.batch * tokens * args.vocab * 4
    need = (1 + EXTRA_TENSORS[impl, mode]) * logits_bytes + GIB // 2
    available = _mem_available_bytes()
    if need > 0.9 * available:
        return {"skipped": f"needs ≈ {need / GIB:.0f} GiB, {available / GIB:.0f} GiB available"}
    cmd = [sys.executable, "-m", "benchmarks.logprob_memory", "--child", impl, mode]
    cmd += ["--batch", str(args.batch), "--tokens", str(tokens), "--vocab", str(args.vocab)]
    cmd += ["--repeats", str(args.repeats), "--temperature", str(args.temperature)]
    cmd += ["--chunk-size", str(args.chunk_size)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        return {"skipped": f"child failed (rc {out.returncode}): {out.stderr.strip()[-200:]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _row(impl: str, mode: str, tokens: int, res: dict, args: argparse.Namespace) -> str:
    size = f"{args.batch}×{tokens}×{args.vocab}"
    if "skipped" in res:
        return f"| {impl} | {mode} | {size} | – | – | – | not run: {res['skipped']} |"
    extra, one = res["peak_extra_bytes"], res["logits_bytes"]
    return (
        f"| {impl} | {mode} | {size} | {extra / GIB:.2f} | {extra / one:.2f}× | {1 + extra / one:.2f}× | "
        f"{res['seconds']:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--small-tokens", type=int, default=512, help="second size, where the naive runs fit")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median reported)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", nargs=2, metavar=("IMPL", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
        print(json.dumps(measure(*args.child, args.batch, args.tokens, args.vocab, args)))
        return
    sizes = [args.tokens] + ([args.small_tokens] if args.small_tokens and args.small_tokens != args.tokens else [])
    print(
        f"B = {args.batch}, V = {args.vocab}, float32, τ = {args.temperature}, chunk_size = {args.chunk_size}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}; one logits tensor at T = {args.tokens}: "
        f"{args.batch * args.tokens * args.vocab * 4 / GIB:.2f} GiB"
    )
    print()
    print("| impl | mode | B×T×V | peak extra GiB | extra / logits | total / logits | median s |")
    print("|---|---|---|---|---|---|---|")
    results = []
    for tokens in sizes:
        for mode in ("fwd", "fwd+bwd"):
            for impl in ("ours", "naive"):
                res = run_child(impl, mode, tokens, args)
                results.append({"impl": impl, "mode": mode, "tokens": tokens, **res})
                print(_row(impl, mode, tokens, res, args), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
