"""The warm-start builder (``python -m real_lightning.policy.warmstart``): its supervised targets are correct
responses, its batches mask the prompt, and a short run writes a policy the trainer can load."""

from __future__ import annotations

import json
import random

import torch

from real_lightning.data.arithmetic import ArithmeticTask
from real_lightning.data.countdown import CountdownTask
from real_lightning.policy.loading import load_policy
from real_lightning.policy.tiny import build_char_tokenizer
from real_lightning.policy.warmstart import sft_batch, sft_target, warm_start
from real_lightning.rewards.countdown import check_countdown
from real_lightning.rewards.math import math_reward


def test_countdown_targets_are_correct_and_diverse() -> None:
    """Every countdown target passes the verifier, and repeated draws for one problem differ (uniform over all
    correct responses, so reinforcement learning starts from a policy that knows several)."""
    task = CountdownTask(num_train=200, num_held_out=16)
    records = task.records("train")[:40]
    rng = random.Random(0)
    for record in records:
        text = sft_target(task, record, rng)
        assert check_countdown(text, str(record.ground_truth)) == "correct", (record.prompt, text)
    many = max(records, key=lambda r: len({sft_target(task, r, random.Random(s)) for s in range(20)}))
    assert len({sft_target(task, many, random.Random(s)) for s in range(20)}) > 1


def test_arithmetic_target_is_the_boxed_sum() -> None:
    task = ArithmeticTask()
    record = task.records("train")[0]
    assert math_reward(sft_target(task, record, random.Random(0)), str(record.ground_truth)) == 1.0


def test_sft_batch_masks_prompt_and_padding() -> None:
    """Labels are -100 on the prompt and the padding, the target's ids then EOS elsewhere; the mask covers
    prompt + target + EOS."""
    tokenizer = build_char_tokenizer()
    records = CountdownTask(num_train=50, num_held_out=8).records("train")[:2]
    targets = ["1+2=3;\\boxed{3}", "9*9=81;\\boxed{81}"]
    ids, mask, labels = sft_batch(records, targets, tokenizer)
    for i, (record, text) in enumerate(zip(records, targets, strict=True)):
        prompt, target = tokenizer(record.prompt).input_ids, tokenizer(text).input_ids
        n = len(prompt) + len(target) + 1
        assert mask[i].tolist() == [1] * n + [0] * (ids.shape[1] - n)
        assert labels[i, : len(prompt)].eq(-100).all() and labels[i, n:].eq(-100).all()
        assert labels[i, len(prompt) : n].tolist() == [*target, tokenizer.eos_token_id]
        assert ids[i, :n].tolist() == [*prompt, *target, tokenizer.eos_token_id]


def test_a_short_countdown_warm_start_writes_a_loadable_policy(tmp_path) -> None:
    """Three supervised steps on a very small policy (warm-up then cosine): the loss is computed, the run stops at
    max_steps, and ``warmstart.json`` describes it (task, size, schedule, the weights' hash); the saved policy loads
    and its weights are the ones hashed; a rebuild with the same arguments is bit-identical (the study's runs
    across sessions start from the same weights)."""
    torch.set_num_threads(1)
    size = {"hidden_size": 32, "num_layers": 1, "intermediate_size": 64, "max_positions": 64}
    task = CountdownTask(num_numbers=3, num_train=64, num_held_out=4)
    options = {"target": 2.0, "batch_size": 8, "eval_every": 3, "max_steps": 3, "max_new_tokens": 24, "task": task}
    options |= {"model_size": size, "warmup_steps": 1, "final_lr_fraction": 0.1}
    summary = warm_start(tmp_path / "policy", **options)
    again = warm_start(tmp_path / "again", **options)
    assert again["weights_sha256"] == summary["weights_sha256"]
    assert (summary["warmup_steps"], summary["final_lr_fraction"], summary["max_steps"]) == (1, 0.1, 3)
    assert summary["sft_steps"] == 3 and 0.0 <= summary["held_out_pass_at_1"] <= 1.0
    saved = json.loads((tmp_path / "policy" / "warmstart.json").read_text())
    assert saved["task"] == {"name": "countdown", "num_numbers": 3, "max_number": 9, "num_train": 64}
    assert saved["model_size"] == size and saved["weights_sha256"] == summary["weights_sha256"]
    policy = load_policy(str(tmp_path / "policy"), torch.float32)
    assert policy.config.hidden_size == 32 and policy.config.num_hidden_layers == 1
