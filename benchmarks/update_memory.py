"""Peak memory and time of one optimizer step's forward + backward against its micro-batch budget.

Workload: a random ``Qwen2ForCausalLM`` (vocabulary 32,000, hidden 256, 4 layers, 4 heads / 2 KV heads,
MLP 1024, tied embeddings, float32: 12.1 M parameters, 46 MiB) and a synthetic ``RolloutBatch`` of
``--groups`` prompts × n = 8 rollouts. Prompts are left-padded to ``--prompt`` tokens (each group's
prompt has between half and all of them); each group draws a longest response between
``--response``/8 and ``--response`` tokens (group 0 gets the full length), its other rollouts between 1
token and that; token ids are uniform below the vocabulary; rewards are random 0/1 (so almost every group
has contrast), except the last group, which is all 0 (no contrast).

One measurement = one call of ``real_lightning.step.accumulate.accumulate_step`` (loss ``LOSSES["real"]``,
``backward=lambda l: l.backward()``, world size 1, CPU, on-policy: π_old = π_θ.detach()), the
log-probs computed by ``sequence_logprobs(..., chunk_size=256)`` as ``RealPolicyModule.response_logprobs``
does, under the budget (max padded tokens, max sequences) of one micro-batch: none (the whole mini-batch
in one pass), sequence budgets halving down to one group, and a token budget. The π_old pass
(``old_logprobs_pass``, no grad) is measured for the same budgets.

Each run is a fresh subprocess (``--worker``): it builds the model and the batch, resets its peak RSS to
the current RSS (``/proc/self/clear_refs``: the imports' and the model build's transient peaks do not
count), then peak extra = peak RSS after the step (``VmHWM``, i.e. ``ru_maxrss`` without the
high-water marks that exited threads left in it, which the reset cannot clear) − RSS
(``/proc/self/statm``) before it, so it
holds the parameters’ gradients (46 MiB), the activations kept for the backward and the temporaries —
no optimizer state (AdamW is not stepped). Time = wall seconds of the step. Each cell is the median
of ``--repeats`` runs (``--old-repeats``, default 1, for the π_old pass, whose peak memory does not vary
from run to run). The parent also records the CPU time other processes used during each run. The
first run of every budget saves its gradients (π_old pass: its log-probs); the table reports their
largest absolute difference from the whole-batch run's, so the rows do the same work.

    python -m benchmarks.update_memory            # 8 groups × 8 rollouts, responses ≤ 512 (~9 min on 2 cores)
    python -m benchmarks.update_memory --quick    # smoke run, < 1 min
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from real_lightning.rollout.batch import RolloutBatch

REPO = Path(__file__).resolve().parents[1]
PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = 2**20
GROUP_SIZE = 8


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def _peak_rss_bytes() -> int:
    """The process's peak RSS, ``VmHWM``: ``ru_maxrss`` without the snapshots that exited threads left in it."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak() -> bool:
    """Reset the process's peak RSS to its current RSS (Linux ≥ 4.0), so imports and model building do not count."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def build_batch(groups: int, prompt: int, response: int, vocab: int, seed: int = 0) -> RolloutBatch:
    """``groups`` × 8 rollouts: left-padded prompts of ≤ ``prompt`` tokens, right-padded responses of ≤ ``response``."""
    gen = torch.Generator().manual_seed(seed)
    rows = groups * GROUP_SIZE
    prompt_len = torch.randint(prompt // 2, prompt + 1, (groups,), generator=gen)
    longest = torch.randint(max(response // 8, 1), response + 1, (groups,), generator=gen)
    longest[0] = response
    input_ids = torch.zeros(rows, prompt + response, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    lengths = torch.zeros(rows, dtype=torch.long)
    for g in range(groups):
        tokens = torch.randint(2, vocab, (int(prompt_len[g]),), generator=gen)
        for j in range(GROUP_SIZE):
            i = g * GROUP_SIZE + j
            length = int(longest[g]) if j == 0 else int(torch.randint(1, int(longest[g]) + 1, (1,), generator=gen))
            lengths[i] = length
            input_ids[i, prompt - len(tokens) : prompt] = tokens
            input_ids[i, prompt : prompt + length] = torch.randint(2, vocab, (length,), generator=gen)
            attention_mask[i, prompt - len(tokens) : prompt + length] = 1
    rewards = torch.randint(0, 2, (rows,), generator=gen).float()
    rewards[-GROUP_SIZE:] = 0.0  # one group without contrast
    group_ids = torch.arange(groups).repeat_interleave(GROUP_SIZE)
    return RolloutBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_mask=torch.arange(response)[None, :] < lengths[:, None],
        prompt_length=prompt,
        rewards=rewards,
        group_ids=group_ids,
        prompt_ids=group_ids.clone(),
        truncated=lengths == response,
        temperature=1.0,
    )


def build_model(args: argparse.Namespace, num_heads: int = 4, num_kv_heads: int = 2) -> torch.nn.Module:
    """A random fp32 ``Qwen2ForCausalLM`` (seed 0) of ``args.vocab``, ``args.hidden`` (MLP 4×), ``args.layers``."""
    from transformers import Qwen2ForCausalLM

    from real_lightning.policy.tiny import tiny_qwen2_config

    config = tiny_qwen2_config(
        vocab_size=args.vocab,
        eos_token_id=1,
        pad_token_id=0,
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_size=4 * args.hidden,
        max_positions=max(1024, args.prompt + args.response),
    )
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).float().train()


def budgets(args: argparse.Namespace) -> list[tuple[str, int | None, int | None]]:
    """(label, max tokens, max sequences): the whole mini-batch, halving sequence budgets, a token budget."""
    out: list[tuple[str, int | None, int | None]] = [("whole mini-batch", None, None)]
    sequences = args.groups * GROUP_SIZE // 2
    while sequences >= GROUP_SIZE:
        out.append((f"{sequences} sequences", None, sequences))
        sequences //= 2
    tokens = args.token_budget_groups * GROUP_SIZE * (args.prompt + args.response)
    out.append((f"{tokens:,} tokens", tokens, None))
    return out


def worker(spec: dict) -> dict:
    """In this process: build model and batch, run one step (or π_old pass) under the budget, measure it."""
    args = argparse.Namespace(**spec["args"])
    torch.set_num_threads(args.threads)
    from real_lightning.logprobs import sequence_logprobs
    from real_lightning.losses import LOSSES
    from real_lightning.step.accumulate import accumulate_step, old_logprobs_pass

    model = build_model(args)
    batch = build_batch(args.groups, args.prompt, args.response, args.vocab)
    budget = (spec["max_tokens"], spec["max_sequences"])
    device = torch.device("cpu")

    def logprobs_fn(b: RolloutBatch, with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        return sequence_logprobs(
            model, b.input_ids, b.attention_mask, b.prompt_length, temperature=1.0, chunk_size=256,
            with_entropy=with_entropy,
        )  # fmt: skip

    gc.collect()
    reset = _reset_peak()
    baseline = _rss_bytes()
    maxrss_before = _peak_rss_bytes()
    start = time.perf_counter()
    if spec["mode"] == "update":
        result = accumulate_step(
            batch,
            budget,
            logprobs_fn=logprobs_fn,
            loss_fn=LOSSES["real"],
            loss_kwargs={"tau": 0.5},
            backward=lambda loss: loss.backward(),
            device=device,
            world_size=1,
        )
        extra = {"loss": float(result.metrics["train/loss"]), "skipped": result.skipped}
    else:
        out = old_logprobs_pass(logprobs_fn, batch, budget, device)
        extra = {}
    seconds = time.perf_counter() - start
    peak = _peak_rss_bytes()
    if spec["mode"] == "update":  # after the measurement: the flat copy is not the step's
        out = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    if spec.get("save"):
        torch.save(out, spec["save"])
    return {
        "seconds": seconds,
        "peak_extra_bytes": max(peak - baseline, 0),
        "raised_peak": peak > maxrss_before,
        "peak_reset": reset,
        "baseline_bytes": baseline,
        "attn": getattr(model.config, "_attn_implementation", "?"),
        **extra,
    }


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine spent busy since boot (``/proc/stat``)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def _own_cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_worker(spec: dict) -> dict:
    """One fresh-process run; also records the CPU time other processes used meanwhile."""
    busy, own, start = _busy_cpu_s(), _own_cpu_s(), time.perf_counter()
    command = [sys.executable, "-m", "benchmarks.update_memory", "--worker", json.dumps(spec)]
    out = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"worker failed (rc {out.returncode}): {out.stderr.strip()[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = time.perf_counter() - start
    result["other_cpu_s"] = max(_busy_cpu_s() - busy - (_own_cpu_s() - own), 0.0)
    return result


def split_stats(batch: RolloutBatch, max_tokens: int | None, max_sequences: int | None) -> dict:
    micro = batch.micro_batches(max_tokens, max_sequences)
    rows = [len(m) for m in micro]
    padded = [m.padded_tokens for m in micro]
    return {"micro_batches": len(micro), "rows": rows, "padded": padded}


def _span(values: list[int]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:,}" if lo == hi else f"{lo:,}–{hi:,}"


def measure_mode(mode: str, args: argparse.Namespace, batch: RolloutBatch, workdir: Path) -> list[dict]:
    rows = []
    reference: torch.Tensor | None = None
    whole_peak = None
    spec_args = {k: v for k, v in vars(args).items() if k in _WORKER_ARGS}
    for label, max_tokens, max_sequences in budgets(args):
        save = workdir / f"{mode}-{label.replace(' ', '_').replace(',', '')}.pt"
        runs = []
        for r in range(args.repeats if mode == "update" else args.old_repeats):
            spec = {"args": spec_args, "mode": mode, "max_tokens": max_tokens, "max_sequences": max_sequences}
            runs.append(run_worker(spec | ({"save": str(save)} if r == 0 else {})))
        out = torch.load(save)
        save.unlink()
        if reference is None:
            reference = out
        diff = float((out - reference).abs().max())
        peak = statistics.median(run["peak_extra_bytes"] for run in runs)
        whole_peak = whole_peak or peak
        row = {
            "mode": mode,
            "budget": label,
            "max_tokens": max_tokens,
            "max_sequences": max_sequences,
            **split_stats(batch, max_tokens, max_sequences),
            "peak_extra_bytes": peak,
            "peak_ratio": peak / whole_peak,
            "seconds": statistics.median(run["seconds"] for run in runs),
            "max_abs_diff": diff,
            "reference_max_abs": float(reference.abs().max()),
            "all_raised_peak": all(run["raised_peak"] for run in runs),
            "runs": runs,
        }
        rows.append(row)
        flag = "" if row["all_raised_peak"] else " (!)"
        print(
            f"| {label} | {row['micro_batches']} | {_span(row['rows'])} | {_span(row['padded'])} | "
            f"{peak / MIB:,.0f}{flag} | {row['peak_ratio']:.2f}× | {row['seconds']:.1f} | {diff:.1e} |",
            flush=True,
        )
    return rows


_WORKER_ARGS = ("groups", "prompt", "response", "vocab", "hidden", "layers", "threads")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=8, help="prompts in the mini-batch (8 rollouts each)")
    parser.add_argument("--prompt", type=int, default=64, help="prompt width (left-padded)")
    parser.add_argument("--response", type=int, default=512, help="longest response")
    parser.add_argument("--vocab", type=int, default=32_000)
    parser.add_argument("--hidden", type=int, default=256, help="hidden size (MLP 4×)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument(
        "--token-budget-groups", type=int, default=2, help="token budget = this × 8 × (prompt + response)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process runs per budget (median reported)")
    parser.add_argument("--old-repeats", type=int, default=1, help="runs per budget of the π_old pass")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each run")
    parser.add_argument("--no-old", action="store_true", help="skip the π_old pass")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 2 groups, responses ≤ 64, vocabulary 4096, 1 repeat"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.quick:
        args.groups, args.prompt, args.response, args.vocab, args.repeats = 2, 16, 64, 4096, 1
        args.old_repeats = 1
        args.token_budget_groups = 1
    batch = build_batch(args.groups, args.prompt, args.response, args.vocab)
    params = sum(p.numel() for p in build_model(args).parameters())
    contrast = sum(int(batch.rewards[batch.group_ids == g].unique().numel() > 1) for g in range(args.groups))
    print(
        f"Qwen2 vocab {args.vocab:,}, hidden {args.hidden}, {args.layers} layers, float32: {params / 1e6:.1f} M "
        f"parameters ({params * 4 / MIB:.0f} MiB); mini-batch {args.groups} groups × {GROUP_SIZE} = {len(batch)} "
        f"rollouts ({contrast} with contrast), prompt ≤ {args.prompt}, response ≤ {args.response} "
        f"({int(batch.response_mask.sum()):,} response tokens, {batch.padded_tokens:,} padded); "
        f"{args.threads} threads, median of {args.repeats} fresh processes ({args.old_repeats} for the π_old pass)"
    )
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("update", "old") if not args.no_old else ("update",):
            title = "one optimizer step (accumulate_step, forward + backward)" if mode == "update" else "π_old pass"
            print(f"\n{title}\n")
            diff_name = "max abs grad diff" if mode == "update" else "max abs log-prob diff"
            print(
                "| budget | micro-batches | rows / micro-batch | padded tokens / micro-batch | peak extra MiB | "
                f"peak / whole | seconds | {diff_name} |"
            )
            print("|---|---|---|---|---|---|---|---|")
            rows = measure_mode(mode, args, batch, Path(tmp))
            reference = rows[0]["reference_max_abs"]
            what = "gradient entry" if mode == "update" else "log-prob"
            runs = [run for row in rows for run in row["runs"]]
            other = max(run["other_cpu_s"] / run["process_wall_s"] for run in runs)
            print(
                f"\n(largest |{what}| of the whole-batch run: {reference:.2e}; other processes used "
                f"{sum(run['other_cpu_s'] for run in runs):.0f} CPU-s during these {len(runs)} runs, at most "
                f"{other:.2f} cores on average during one)"
            )
            results += rows
    if not all(r["all_raised_peak"] for r in results):
        print("(!) some run's step did not raise its process's peak RSS: that cell is an upper bound")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
