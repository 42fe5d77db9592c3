"""The two workloads of ``step_time.py`` and this machine's compute floor for them.

* ``quickstart``: the quickstart job (shipped ~1 M-parameter arithmetic policy, 32 prompts × 8 samples,
  ≤ 12 new tokens, reward ``math_reward``; truncated = 0): responses are short, the update dominates.
* ``long``: a generation-heavy job: a random-weight Qwen3 (vocabulary 16,384, hidden 256, 8 layers, 4 heads /
  2 KV heads of 64, MLP 1,024, tied embeddings: 12.1 M parameters; Qwen3 rather than Qwen2 because transformers
  ≥ 5 forces its byte-level Qwen2 tokenizer class on any ``qwen2`` checkpoint) with a character-level
  ``tokenizer.json`` (one token per CJK ideograph, like the shipped policy's per-ASCII-character one), 16 prompts
  of 24–40 random characters × 8 samples, exactly 256 new tokens per response (EOS ignored on both sides), reward
  :func:`parity_reward` (a deterministic coin: ~half the rollouts of every group score 1, so every group has
  contrast and the update is never skipped). Both sides split the update into micro-batches of 16 sequences
  (2 groups; TRL: ``per_device_train_batch_size=16``, ``gradient_accumulation_steps=8``): one optimizer step
  per rollout batch either way, and on a CPU 128 sequences in one forward cost twice the time (page faults
  and cache misses of ~GB activations).

The *floor* of a phase is its matmul FLOPs at this machine's measured fp32 matmul rate
(:func:`matmul_rate`, GEMMs of the model's own shapes): generation 2·N per sampled token (plus the prompt's
prefill), the update 6·N per processed token (forward + backward, prompt and response), N = the parameters
that take part in matmuls (every linear layer and the LM head; the embedding lookup is free).
Attention, norms, sampling and the optimizer are left out, so a phase can only be slower than its floor.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workload:
    """One benchmark job: what a training step samples and trains on."""

    name: str
    prompts_per_step: int
    samples_per_prompt: int
    max_new_tokens: int
    ignore_eos: bool
    description: str
    micro_batch_rows: int | None = None  # sequences per forward/backward (None: the whole step at once)

    @property
    def micro_batches(self) -> int:
        rows = self.prompts_per_step * self.samples_per_prompt
        return 1 if self.micro_batch_rows is None else rows // self.micro_batch_rows


QUICKSTART = Workload("quickstart", 32, 8, 12, False, "32 prompts × 8 samples, ≤ 12 new tokens (quickstart policy)")
LONG = Workload(
    "long",
    16,
    8,
    256,
    True,
    "16 prompts × 8 samples, 256 new tokens, random 12.1 M-parameter Qwen3 (V = 16,384), micro-batches of 16",
    micro_batch_rows=16,
)
WORKLOADS = {w.name: w for w in (QUICKSTART, LONG)}


def smoke(workload: Workload) -> Workload:
    """The same job at tiny sizes (2 prompts × 2 samples, ≤ 6 new tokens, micro-batches of 2): for tests."""
    return dataclasses.replace(
        workload,
        prompts_per_step=2,
        samples_per_prompt=2,
        max_new_tokens=6,
        micro_batch_rows=2 if workload.micro_batch_rows else None,
        description=f"smoke test: {workload.name} at 2 prompts × 2 samples, ≤ 6 new tokens",
    )


LONG_MODEL = {"vocab": 16_384, "hidden": 256, "layers": 8, "heads": 4, "kv_heads": 2, "mlp": 1_024}
LONG_PROMPTS = 256  # dataset rows (one epoch = 16 steps)
LONG_PROMPT_WORDS = (24, 40)


FIRST_CHAR = 0x4E00  # token id i ≥ 2 is the character chr(FIRST_CHAR + i)


def parity_reward(response: str, ground_truth: str) -> float:
    """1.0 when the response has an even number of characters c with ``ord(c) ≡ ground_truth (mod 3)``, else 0.0.

    A cheap deterministic coin over random responses (about half score 1); the same function on both sides.
    """
    residue = int(ground_truth)
    count = sum(1 for c in response if ord(c) % 3 == residue)
    return 1.0 if count % 2 == 0 else 0.0


def build_long(directory: Path) -> tuple[Path, Path]:
    """Write the long workload's random Qwen2 + tokenizer and its prompts (``prompts.jsonl``) under ``directory``.

    Returns ``(model_dir, prompts_path)``. Deterministic (seed 0); rows are ``{"problem", "answer"}``.
    """
    import torch
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    model_dir, prompts_path = directory / "model", directory / "prompts.jsonl"
    if (model_dir / "config.json").is_file() and prompts_path.is_file():
        return model_dir, prompts_path
    vocab = LONG_MODEL["vocab"]
    chars = {"<pad>": 0, "<eos>": 1, **{chr(FIRST_CHAR + i): i for i in range(2, vocab)}}
    backend = Tokenizer(models.WordLevel(chars, unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens([AddedToken(t, special=True) for t in ("<pad>", "<eos>")])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(model_dir)
    config = Qwen3Config(
        vocab_size=vocab,
        hidden_size=LONG_MODEL["hidden"],
        num_hidden_layers=LONG_MODEL["layers"],
        num_attention_heads=LONG_MODEL["heads"],
        num_key_value_heads=LONG_MODEL["kv_heads"],
        head_dim=LONG_MODEL["hidden"] // LONG_MODEL["heads"],
        intermediate_size=LONG_MODEL["mlp"],
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=1,
        pad_token_id=0,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(model_dir)
    rng = random.Random(0)
    with open(prompts_path, "w") as f:
        for row in range(LONG_PROMPTS):
            length = rng.randint(*LONG_PROMPT_WORDS)
            text = "".join(chr(FIRST_CHAR + rng.randrange(2, vocab)) for _ in range(length))
            f.write(json.dumps({"problem": text, "answer": str(row % 3)}) + "\n")
    return model_dir, prompts_path


def matmul_params(model_dir: Path | str) -> int:
    """Parameters used in matmuls per token: every ``nn.Linear`` (the LM head included, tied or not)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def matmul_rate(model_dir: Path | str, rows: int, seconds: float = 1.5) -> float:
    """This machine's fp32 matmul rate (FLOP/s) on the model's own GEMMs ([rows, in] × [in, out] for each
    distinct linear shape, weighted by its FLOPs), with the current torch thread count."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    shapes: dict[tuple[int, int], int] = {}
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            shapes[tuple(m.weight.shape)] = shapes.get(tuple(m.weight.shape), 0) + 1
    flops = elapsed = 0.0
    for (out_features, in_features), count in shapes.items():
        a, b = torch.randn(rows, in_features), torch.randn(in_features, out_features)
        c = torch.empty(rows, out_features)
        torch.mm(a, b, out=c)
        start, calls = time.perf_counter(), 0
        while time.perf_counter() - start < seconds / len(shapes):
            torch.mm(a, b, out=c)
            calls += 1
        per_call = (time.perf_counter() - start) / calls
        flops += count * 2 * rows * in_features * out_features
        elapsed += count * per_call
    return flops / elapsed


def floors(
    model_dir: Path | str, prompt_tokens: float, response_tokens: float, rows: int, seconds: float = 1.5
) -> dict[str, float]:
    """Floor seconds of a step's generation and update (see the module docstring).

    Args:
        prompt_tokens, response_tokens: real tokens per step (all rows together).
        rows: sequences per step (the decode GEMM height).
        seconds: time spent measuring each rate.
    """
    n = matmul_params(model_dir)
    decode_rate = matmul_rate(model_dir, rows, seconds)
    train_rate = matmul_rate(model_dir, 2048, seconds)
    return {
        "matmul_params": n,
        "decode_gflops": decode_rate / 1e9,
        "train_gflops": train_rate / 1e9,
        "generation": 2 * n * prompt_tokens / train_rate + 2 * n * response_tokens / decode_rate,
        "update": 6 * n * (prompt_tokens + response_tokens) / train_rate,
    }
