"""Build a tiny policy: a fresh tiny Qwen2 trained by supervised fine-tuning until partial accuracy.

    python -m real_lightning.policy.warmstart --out real_lightning/assets/tiny-arithmetic-policy
    python -m real_lightning.policy.warmstart --out runs/tiny-add3 --digits 3 --init builtin:tiny   # a harder task
    python -m real_lightning.policy.warmstart --task countdown --out runs/staleness/policy \\
        --hidden-size 256 --max-positions 128 --max-new-tokens 48 --batch-size 64        # the staleness study's

Supervised steps on prompt → target<eos> stop as soon as Pass@1 on a dev slice of the *training* split
(temperature 1.0) reaches ``--target``: reinforcement learning then starts from a policy that is right about a
third of the time, which is where REAL has signal to work with. Targets: ``\\boxed{a+b}`` for arithmetic; for
countdown a response drawn uniformly from all correct ones of the problem
(:func:`~real_lightning.data.countdown.solutions`), so the policy starts diverse. Pass@1 jumps by ~0.1 per 10
steps near the target on arithmetic, hence the frequent checks. The held-out split is measured once at the end
and written to ``warmstart.json``, with the SHA-256 of the weights (a rebuild on another machine can be compared).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import time
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Qwen2ForCausalLM

from real_lightning.data.arithmetic import ArithmeticTask
from real_lightning.data.countdown import CountdownTask, solutions
from real_lightning.data.records import PromptRecord
from real_lightning.policy.loading import TINY_POLICY_DIR, load_policy
from real_lightning.policy.tiny import build_char_tokenizer, tiny_qwen2_config
from real_lightning.rewards.countdown import parse_problem
from real_lightning.rollout.hf import HFEngine
from real_lightning.rollout.scoring import Scorer

Task = ArithmeticTask | CountdownTask
TASK_REWARDS = {ArithmeticTask: "math", CountdownTask: "countdown"}
"""The registered reward that grades each task's responses."""


def sft_target(task: Task, record: PromptRecord, rng: random.Random) -> str:
    """The response a supervised step teaches for ``record``: the boxed answer (arithmetic), or one correct
    response drawn uniformly from all of them (countdown)."""
    if isinstance(task, CountdownTask):
        numbers, target = parse_problem(str(record.ground_truth))
        return rng.choice(solutions(tuple(numbers), target))
    return ArithmeticTask.target(str(record.ground_truth))


def sft_batch(
    records: list[PromptRecord], targets: list[str], tokenizer: PreTrainedTokenizerBase
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask and labels (-100 on prompt and padding) for prompt + target + EOS."""
    rows, labels = [], []
    for record, text in zip(records, targets, strict=True):
        prompt = tokenizer(record.prompt).input_ids
        target = [*tokenizer(text).input_ids, tokenizer.eos_token_id]
        rows.append(prompt + target)
        labels.append([-100] * len(prompt) + target)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    lab = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row, label) in enumerate(zip(rows, labels, strict=True)):
        ids[i, : len(row)], lab[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), torch.tensor(label), 1
    return ids, mask, lab


def pass_at_1(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: list[PromptRecord],
    samples: int,
    max_new_tokens: int,
    seed: int,
    reward: str = "math",
) -> float:
    """Mean correctness over ``samples`` responses per prompt at temperature 1.0, graded by ``reward``."""
    engine = HFEngine(max_new_tokens=max_new_tokens, temperature=1.0)
    engine.setup(policy, tokenizer)
    generation = engine.generate([tokenizer(r.prompt).input_ids for r in records], samples, seed)
    truths = [r.ground_truth for r in records for _ in range(samples)]
    scorer = Scorer(reward, num_workers=1, truncated_is_wrong=True)
    rewards = scorer.score(generation.texts, truths, generation.truncated)
    return float(rewards.rewards.mean())


def warm_start(
    out: Path,
    target: float = 0.3,
    seed: int = 0,
    lr: float = 3e-3,
    batch_size: int = 128,
    eval_every: int = 5,
    max_steps: int = 3000,
    max_new_tokens: int = 12,
    task: Task | None = None,
    init: str | None = None,
    model_size: dict[str, int] | None = None,
    warmup_steps: int = 0,
    final_lr_fraction: float = 1.0,
) -> dict[str, float]:
    """Train, stop at the target dev Pass@1, save model + tokenizer + ``warmstart.json`` to ``out``.

    ``task``: the built-in task to learn (default: 2-digit addition, the shipped policy's);
    ``init``: start from this policy (a path or ``builtin:tiny``) instead of fresh random weights;
    ``model_size``: keyword arguments of :func:`~real_lightning.policy.tiny.tiny_qwen2_config` for a fresh policy
    (``hidden_size``, ``num_layers``, ``num_heads``, ``num_kv_heads``, ``intermediate_size``, ``max_positions``);
    ``warmup_steps``, ``final_lr_fraction``: the lr rises linearly over the first ``warmup_steps`` steps, then follows
    a cosine from ``lr`` to ``lr * final_lr_fraction`` at ``max_steps`` (1.0, the default: constant after warm-up).
    """
    torch.manual_seed(seed)
    task = task or ArithmeticTask()
    reward = TASK_REWARDS[type(task)]
    train = task.records("train")
    generator = torch.Generator().manual_seed(seed)
    targets = random.Random(seed)
    dev = [train[i] for i in torch.randperm(len(train), generator=generator)[:128].tolist()]
    tokenizer = build_char_tokenizer()
    if init is None:
        config = tiny_qwen2_config(len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id, **(model_size or {}))
        policy = Qwen2ForCausalLM(config)
    else:
        policy = load_policy(init, torch.float32)
        if policy.config.vocab_size != len(tokenizer):
            raise ValueError(
                f"--init {init}: vocabulary of {policy.config.vocab_size}, the task's has {len(tokenizer)}"
            )
    optimizer = torch.optim.AdamW(policy.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup_steps, max_steps, final_lr_fraction)
    )
    start, step, dev_score = time.perf_counter(), 0, 0.0
    while step < max_steps:
        chosen = [train[i] for i in torch.randint(len(train), (batch_size,), generator=generator).tolist()]
        ids, mask, labels = sft_batch(chosen, [sft_target(task, r, targets) for r in chosen], tokenizer)
        policy.train()
        loss = policy(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        step += 1
        if step % eval_every == 0:
            dev_score = pass_at_1(policy, tokenizer, dev, 4, max_new_tokens, seed=step, reward=reward)
            print(
                f"step {step:4d}  loss {loss.item():.4f}  dev Pass@1 {dev_score:.3f}  "
                f"{time.perf_counter() - start:.1f}s",
                flush=True,
            )
            if dev_score >= target:
                break
    held_out = pass_at_1(policy, tokenizer, task.records("test"), 8, max_new_tokens, seed=seed, reward=reward)
    out.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(out)
    tokenizer.save_pretrained(out)
    summary = {
        "sft_steps": step,
        "sft_seconds": round(time.perf_counter() - start, 1),
        "dev_pass_at_1": dev_score,
        "held_out_pass_at_1": held_out,
        "target": target,
        "task": _describe(task),
        "init": init,
        "seed": seed,
        "lr": lr,
        "warmup_steps": warmup_steps,
        "final_lr_fraction": final_lr_fraction,
        "max_steps": max_steps,
        "batch_size": batch_size,
        "parameters": sum(p.numel() for p in policy.parameters()),
        "model_size": dict(model_size or {}),
        "max_new_tokens": max_new_tokens,
        "torch_threads": torch.get_num_threads(),
        "weights_sha256": hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest(),
    }
    (out / "warmstart.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def lr_factor(step: int, warmup_steps: int, max_steps: int, final_fraction: float) -> float:
    """The multiple of the peak lr at supervised ``step`` (0-based): linear warm-up to 1 over ``warmup_steps``,
    then a cosine from 1 down to ``final_fraction`` at ``max_steps``.

    >>> [round(lr_factor(s, 2, 6, 0.0), 3) for s in range(7)]
    [0.5, 1.0, 0.854, 0.5, 0.146, 0.0, 0.0]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps + 1) / max(1, max_steps - warmup_steps))
    return final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _describe(task: Task) -> dict[str, object]:
    if isinstance(task, CountdownTask):
        return {
            "name": "countdown",
            "num_numbers": task.num_numbers,
            "max_number": task.max_number,
            "num_train": task.num_train,
        }
    return {"name": "arithmetic", "digits": task.digits, "operations": list(task.operations)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=TINY_POLICY_DIR)
    parser.add_argument("--target", type=float, default=0.3, help="dev Pass@1 at which supervised training stops")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--task", choices=["arithmetic", "countdown"], default="arithmetic")
    parser.add_argument("--num-numbers", type=int, default=4, help="numbers per countdown problem")
    parser.add_argument("--num-train", type=int, default=50_000, help="countdown training problems (3 numbers: ~6k)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-steps", type=int, default=3000, help="the last step, where the cosine schedule ends")
    parser.add_argument("--warmup-steps", type=int, default=0, help="steps of linear lr warm-up")
    parser.add_argument(
        "--final-lr-fraction", type=float, default=1.0, help="lr at --max-steps as a fraction of --lr (1: constant)"
    )
    parser.add_argument("--eval-every", type=int, default=5, help="supervised steps between dev Pass@1 checks")
    for name, default in (("hidden-size", 128), ("num-layers", 4), ("intermediate-size", 512), ("max-positions", 64)):
        parser.add_argument(f"--{name}", type=int, default=default, help="size of a fresh policy")
    parser.add_argument("--digits", type=int, default=2, help="operand digits of the arithmetic task")
    parser.add_argument("--operations", default="+", help="operations of the task, e.g. '+-'")
    parser.add_argument("--max-new-tokens", type=int, default=12, help="response budget when measuring Pass@1")
    parser.add_argument("--init", help="start from this policy (path or builtin:tiny) instead of random weights")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads (default: torch's); a rebuild is bit-identical only at the same count",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads or max(1, torch.get_num_threads()))
    if args.task == "countdown":
        task: Task = CountdownTask(num_numbers=args.num_numbers, num_train=args.num_train)
    else:
        task = ArithmeticTask(digits=args.digits, operations=tuple(args.operations))
    size = {
        "hidden_size": args.hidden_size,
        "num_layers": args.num_layers,
        "intermediate_size": args.intermediate_size,
        "max_positions": args.max_positions,
    }
    summary = warm_start(
        args.out,
        args.target,
        args.seed,
        args.lr,
        batch_size=args.batch_size,
        eval_every=args.eval_every,
        max_steps=args.max_steps,
        max_new_tokens=args.max_new_tokens,
        task=task,
        init=args.init,
        model_size=None if args.init else size,
        warmup_steps=args.warmup_steps,
        final_lr_fraction=args.final_lr_fraction,
    )
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
