"""Two processes (DDP, gloo, CPU) against one: the same steps, the same weights; a skipped rank does not hang."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from real_lightning.policy.export import export_checkpoint, read_checkpoint
from real_lightning.policy.loading import BUILTIN
from tests.pipeline.launch import REPO, run_ranks
from tests.pipeline.small_runs import SCRIPTED, fit_args, step_records

pytestmark = pytest.mark.distributed


def _pass_at_1(output: str) -> str:
    match = re.search(r"\[held_out\] Pass@1 before: [0-9.]+, after: [0-9.]+", output)
    assert match, output[-3000:]
    return match.group(0)


CHECKPOINTING_AND_KL = ["--model.gradient_checkpointing", "true", "--model.kl_coef", "0.1"]
LORA_AND_KL = ["-c", str(REPO / "configs" / "lora.yaml"), "--model.kl_coef", "0.1"]  # π_ref: adapters off


@pytest.mark.parametrize(
    ("loss", "strategies", "extra"),
    [
        ("real", ("ddp", "fsdp"), []),
        ("dapo", ("ddp",), []),
        ("grpo", ("fsdp",), CHECKPOINTING_AND_KL),
        ("real", ("ddp", "fsdp"), LORA_AND_KL),
    ],
    ids=["real", "dapo-ddp", "grpo-fsdp-checkpointing-kl", "real-lora-kl"],
)
def test_two_processes_train_like_one(policy_dir, tmp_path, loss, strategies, extra) -> None:
    """Same rollouts (a scripted engine) on 1 rank (unsharded) and 2 ranks (DDP, or FSDP2 with the policy
    sharded; with activation checkpointing and a KL penalty to the sharded reference policy on both sides):
    same per-step loss and gradient norm (clipped at 0.05, so clipping acts), same final weights, same Pass@1.
    The 1-rank run is the reference of each 2-rank strategy listed."""

    def run(name: str, world: int, fsdp: bool) -> str:
        args = fit_args(policy_dir, tmp_path / name, world, loss=loss, fsdp=fsdp)
        args += ["--model.dtype", "float64", "--data.engine", json.dumps(SCRIPTED), "--trainer.gradient_clip_val"]
        args += ["0.05", *extra]
        return run_ranks(args, world, tmp_path / name / "logs")[0]

    output_one = run("w1", 1, fsdp=False)
    one = step_records(tmp_path / "w1" / "steps.jsonl")
    assert sorted(one) == [1, 2, 3, 4]
    assert any(float.fromhex(r["loss"][0]) != 0 for r in one.values())
    assert max(r["grad_norm"] for r in one.values()) > 0.05  # the clip acted at least once
    w1 = load_file(tmp_path / "w1" / "hf" / "model.safetensors")
    start = load_file(Path(policy_dir) / "model.safetensors")
    assert max(float((w1[k].double() - start[k].double()).abs().max()) for k in w1) > 1e-3  # the weights moved
    for strategy in strategies:
        fsdp = strategy == "fsdp"
        output_two = run(f"w2-{strategy}", 2, fsdp=fsdp)
        two = step_records(tmp_path / f"w2-{strategy}" / "steps.jsonl")
        assert sorted(two) == [1, 2, 3, 4], strategy
        for step in one:
            a, b = float.fromhex(one[step]["loss"][0]), float.fromhex(two[step]["loss"][0])
            assert a == pytest.approx(b, rel=1e-9, abs=1e-12), f"{strategy}, step {step}: loss {a} (1 rank) vs {b}"
            assert one[step]["grad_norm"] == pytest.approx(two[step]["grad_norm"], rel=1e-6), f"{strategy}, step {step}"
        # rank 1 saw the other half of every rollout batch
        rank1 = step_records(tmp_path / f"w2-{strategy}" / "steps.jsonl.rank1")
        full = one[1]["local_numel"]
        for records in (two, rank1):  # FSDP: each rank holds about half of the parameters; DDP: all of them
            assert 0.45 * full < records[1]["local_numel"] <= (0.55 * full if fsdp else full), strategy
        for step in one:
            assert sorted(two[step]["prompts"] + rank1[step]["prompts"]) == sorted(one[step]["prompts"])
        w2 = load_file(tmp_path / f"w2-{strategy}" / "hf" / "model.safetensors")
        for key in w1:
            assert float((w1[key].double() - w2[key].double()).abs().max()) <= 1e-6, (strategy, key)
        assert _pass_at_1(output_one) == _pass_at_1(output_two), strategy  # validation sharded over ranks, reduced


def test_fsdp_mixed_precision_computes_in_bf16_and_keeps_fp32_weights(policy_dir, tmp_path) -> None:
    """FSDP2 with param_dtype bfloat16 and reduce_dtype float32 on 2 ranks against fp32 on 1 rank, same rollouts:
    the first gradient norm (before any update) agrees up to bf16 rounding but is not the fp32 value (the
    compute is bf16), the weights stay float32 (sharded master copy, export) and end close to the fp32 run's."""
    bf16 = ["--model.fsdp.param_dtype", "bfloat16", "--model.fsdp.reduce_dtype", "float32"]
    for name, world in (("fp32", 1), ("bf16", 2)):
        args = fit_args(policy_dir, tmp_path / name, world, loss="real", fsdp=world == 2)
        args += ["--data.engine", json.dumps(SCRIPTED), *(bf16 if world == 2 else [])]
        run_ranks(args, world, tmp_path / name / "logs")
    fp32, mixed = step_records(tmp_path / "fp32" / "steps.jsonl"), step_records(tmp_path / "bf16" / "steps.jsonl")
    a, b = fp32[1]["grad_norm"], mixed[1]["grad_norm"]  # at ratio 1 the loss value is precision-free
    assert a != b and b == pytest.approx(a, rel=5e-2), (a, b)
    start = load_file(Path(policy_dir) / "model.safetensors")
    w32, w16 = (load_file(tmp_path / name / "hf" / "model.safetensors") for name in ("fp32", "bf16"))
    assert all(w16[k].dtype == torch.float32 for k in w16)
    moved = sum(float((w32[k] - start[k]).abs().sum()) for k in w32)
    apart = sum(float((w16[k] - w32[k]).abs().sum()) for k in w32)
    print(f"bf16 vs fp32: moved {moved:.4g}, apart {apart:.4g}")
    assert moved > 0 and apart < 0.25 * moved, (moved, apart)


def test_a_skipped_update_on_one_rank_does_not_hang_the_other(policy_dir, tmp_path) -> None:
    """Rank 1's loss is NaN at step 1: both ranks skip that update and go on; dynamic sampling runs too."""
    nan = {"class_path": "tests.pipeline.callbacks_for_tests.NanLossOnRank", "init_args": {"rank": 1, "step": 1}}
    args = fit_args(policy_dir, tmp_path, 2, loss="real", extra_callbacks=[nan])
    args += ["--data.schedule.dynamic_sampling", "true", "--data.schedule.max_sampling_rounds", "2"]
    outputs = run_ranks(args, 2, tmp_path / "logs")
    rank0, rank1 = step_records(tmp_path / "steps.jsonl"), step_records(tmp_path / "steps.jsonl.rank1")
    assert sorted(rank0) == sorted(rank1) == [1, 2, 3, 4]
    for records in (rank0, rank1):
        assert records[2]["param_sum"] == records[1]["param_sum"]  # step index 1 changed nothing
        assert records[3]["param_sum"] != records[2]["param_sum"]  # training went on
    assert [r["param_sum"] for r in rank0.values()] == [r["param_sum"] for r in rank1.values()]
    assert "update skipped" in outputs[0]


@pytest.mark.parametrize(
    ("fsdp", "stop", "lora"),
    [
        (False, "sigkill", False),
        (True, "sigkill", False),
        (True, "sigterm", False),
        (True, "sigterm-validation", False),
        (True, "sigkill", True),
    ],
    ids=["ddp-sigkill", "fsdp-sigkill", "fsdp-sigterm", "fsdp-sigterm-validation", "fsdp-lora-sigkill"],
)
def test_two_process_resume_after_a_stop_is_exact(tmp_path, fsdp, stop, lora) -> None:
    """Both ranks SIGKILLed mid rollout batch (after step 3, before its checkpoint), rank 0 alone SIGTERMed
    during step 3 (both ranks finish it, write last.ckpt at step 3 and exit 143), or rank 0 alone SIGTERMed in
    the validation after step 2 (both ranks abandon it, write last.ckpt at step 2), resumed with --ckpt_path last:
    every rank's steps bit-identical (FSDP2: from a distributed checkpoint, a directory of shards; with LoRA its
    shards hold the adapters and their optimizer states only, the base loads from the policy). HF generation
    on the shipped policy, rank 1 capped at 4 new tokens: the ranks' generate calls end at different lengths (a
    sharded policy must keep every rank decoding until all are done)."""
    checkpoint = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"every_n_train_steps": 1, "save_last": True},
    }
    kill = {"class_path": "tests.pipeline.callbacks_for_tests.KillAtStep", "init_args": {"step": 3}}
    if stop == "sigterm":
        kill = {"class_path": "tests.pipeline.callbacks_for_tests.SignalAtStep", "init_args": {"step": 3, "rank": 0}}
    if stop == "sigterm-validation":
        kill = {
            "class_path": "tests.pipeline.callbacks_for_tests.SignalInValidation",
            "init_args": {"step": 2, "rank": 0},
        }
    common = ["--data.schedule.prompts_per_minibatch", "2", "--trainer.enable_checkpointing", "true"]
    if stop == "sigterm-validation":
        common += ["--trainer.val_check_interval", "2"]
    common += ["--data.verifier.reward", "math"]
    if lora:
        common += ["-c", str(REPO / "configs" / "lora.yaml")]
    shorter = {
        "class_path": "tests.pipeline.callbacks_for_tests.ShorterGenerationOnRank",
        "init_args": {"rank": 1, "max_new_tokens": 4},
    }

    def args(name: str, callbacks: list[dict]) -> list[str]:
        return fit_args(BUILTIN, tmp_path / name, 2, loss="real", extra_callbacks=callbacks, fsdp=fsdp) + common

    straight = args("straight", [shorter, checkpoint])
    run_ranks(straight, 2, tmp_path / "straight" / "logs")
    broken = args("broken", [shorter, kill, checkpoint])
    outputs = run_ranks(broken, 2, tmp_path / "broken" / "logs", exit_code=-9 if stop == "sigkill" else 143)
    if stop.startswith("sigterm"):
        stopped_at = 2 if stop == "sigterm-validation" else 3
        assert f"Stopped by SIGTERM after step {stopped_at}" in outputs[0] and "--ckpt_path last" in outputs[0], (
            outputs[0][-2000:]
        )
    names = ("steps.jsonl", "steps.jsonl.rank1")
    for name in names:
        (tmp_path / "broken" / name).rename(tmp_path / "broken" / f"killed_{name}")
    resumed = args("broken", [shorter, checkpoint])
    run_ranks([*resumed, "--ckpt_path", "last"], 2, tmp_path / "broken" / "logs2")
    for name in names:
        expected, after = step_records(tmp_path / "straight" / name), step_records(tmp_path / "broken" / name)
        if stop == "sigkill":
            assert sorted(after) == [3, 4]  # resumed from the checkpoint of step 2: mini-batch 2 of rollout batch 0
            assert after[3]["request"] == [2, 0, 2]
        elif stop == "sigterm":
            assert sorted(after) == [4]  # from the stop's checkpoint of step 3
        else:
            assert sorted(after) == [3, 4]  # from the stop's checkpoint of step 2, written during its validation
        for step in after:
            assert after[step] == expected[step], f"{name}, step {step}"
    # rank 1 generated at most 4 tokens, rank 0 up to 12: their generate calls ended at different lengths
    lengths = {n: [r["longest_response"] for r in step_records(tmp_path / "straight" / n).values()] for n in names}
    assert max(lengths["steps.jsonl.rank1"]) <= 4 < max(lengths["steps.jsonl"]), lengths
    # the final weights, gathered at fit's end (export_dir) and exported later from the last checkpoint, agree
    last = next((tmp_path / "straight").rglob("last.ckpt"))
    assert last.is_dir() == fsdp  # FSDP writes a distributed checkpoint: a directory of shards + meta.pt
    if lora:  # its shards hold the adapters (and their optimizer states), not the frozen base
        policy_keys = [k for k in read_checkpoint(last)["state_dict"] if k.startswith("policy.")]
        assert policy_keys and all(".lora_" in k for k in policy_keys), policy_keys[:5]
    exported = export_checkpoint(last, tmp_path / "exported")
    at_fit_end, later = (load_file(d / "model.safetensors") for d in (tmp_path / "straight" / "hf", exported))
    assert at_fit_end.keys() == later.keys() and all(torch.equal(at_fit_end[k], later[k]) for k in later)
    reloaded = AutoModelForCausalLM.from_pretrained(exported)
    assert torch.equal(reloaded.model.embed_tokens.weight, at_fit_end["model.embed_tokens.weight"])


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_health_stop_on_stops_every_rank_with_a_checkpoint_that_resumes(tmp_path, fsdp) -> None:
    """Two new tokens are too few for any answer: `truncation` starts at step 2 (patience 2) and, being in
    ``--health.stop_on``, ends the run on both ranks after a checkpoint (a distributed one under FSDP2);
    ``--ckpt_path last`` continues to the end without stopping again."""
    checkpoint = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"every_n_train_steps": 100, "save_last": True},
    }
    args = fit_args(BUILTIN, tmp_path, 2, loss="real", extra_callbacks=[checkpoint], fsdp=fsdp)
    args += ["--trainer.enable_checkpointing", "true", "--trainer.max_steps", "5"]
    args += ["--data.engine.init_args.max_new_tokens", "2", "--data.verifier.reward", "math"]
    args += ["--health.patience", "2", "--health.stop_on", "[truncation]"]
    outputs = run_ranks(args, 2, tmp_path / "logs")
    assert "Run health — stopping at step 2 (truncation is in stop_on)" in outputs[0]
    names = ("steps.jsonl", "steps.jsonl.rank1")
    for name in names:
        assert sorted(step_records(tmp_path / name)) == [1, 2], name
        (tmp_path / name).rename(tmp_path / f"stopped_{name}")
    (last,) = tmp_path.rglob("last.ckpt")
    assert last.is_dir() == fsdp
    outputs = run_ranks([*args, "--ckpt_path", "last"], 2, tmp_path / "logs2")
    assert "stopping" not in outputs[0]
    for name in names:
        assert sorted(step_records(tmp_path / name)) == [3, 4, 5], name
    report = json.loads(next(tmp_path.rglob("health.json")).read_text())
    assert report["steps"] == 5 and "truncation" in [f["name"] for f in report["findings"]]


@pytest.mark.xdist_group("stall")  # the two stall-watchdog tests run one after the other (pytest -n 2 --dist loadgroup)
def test_a_stopped_rank_makes_the_others_exit_naming_it(policy_dir, tmp_path) -> None:
    """Rank 1 is SIGSTOPped at the start of step 2 (a hung GPU, a frozen node): within the stall timeout rank 0
    prints where each rank is, names rank 1 as the one that did not arrive, dumps its stacks and exits 124 —
    instead of waiting in its collective forever."""
    stop = {"class_path": "tests.pipeline.callbacks_for_tests.SignalAtStep", "init_args": {"step": 2}}
    stop["init_args"] |= {"signal": "SIGSTOP", "rank": 1}
    args = fit_args(policy_dir, tmp_path, 2, loss="real", extra_callbacks=[stop])
    # no validation before fit: on a loaded machine its first scoring (a reward worker pool starting) can itself
    # outlast a short stall timeout, and the test is about the step-2 collective
    args += ["--health.stall_timeout_s", "15", "--validate_before_fit", "false"]
    started = time.monotonic()
    with pytest.raises(AssertionError) as failure:
        run_ranks(args, 2, tmp_path / "logs", timeout_s=120)
    assert time.monotonic() - started < 90
    message = str(failure.value)
    assert "rank(s) [1] stalled" in message and "rank(s) [0] failed with exit codes [124]" in message, message
    rank0 = (tmp_path / "logs" / "rank0.log").read_text()
    assert "rank(s) [1] did not arrive" in rank0 and "stopped or dead" in rank0, rank0[-3000:]
    assert "Stall: no progress for" in rank0 and "most recent call first" in rank0  # the report, then the stacks


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_two_process_resume_with_a_rollout_producer_is_exact(tmp_path, fsdp) -> None:
    """max_staleness 2 (fixed), a producer process per rank, one optimizer step per rollout batch: both ranks
    SIGKILLed after step 3 (before its checkpoint), resumed from the checkpoint of step 2 — which holds the batches
    the producers had sampled ahead — every rank's steps 3 and 4 bit-identical to the run never stopped."""
    checkpoint = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"every_n_train_steps": 1, "save_last": True},
    }
    kill = {"class_path": "tests.pipeline.callbacks_for_tests.KillAtStep", "init_args": {"step": 3}}
    common = ["--trainer.enable_checkpointing", "true", "--data.schedule.ppo_epochs", "1"]
    common += ["--data.schedule.max_staleness", "2", "--model.importance_sampling", "token"]

    def args(name: str, callbacks: list[dict]) -> list[str]:
        return fit_args(BUILTIN, tmp_path / name, 2, loss="real", extra_callbacks=callbacks, fsdp=fsdp) + common

    run_ranks(args("straight", [checkpoint]), 2, tmp_path / "straight" / "logs")
    run_ranks(args("broken", [kill, checkpoint]), 2, tmp_path / "broken" / "logs", exit_code=-9)
    names = ("steps.jsonl", "steps.jsonl.rank1")
    for name in names:
        (tmp_path / "broken" / name).rename(tmp_path / "broken" / f"killed_{name}")
    run_ranks([*args("broken", [checkpoint]), "--ckpt_path", "last"], 2, tmp_path / "broken" / "logs2")
    for name in names:
        expected, after = step_records(tmp_path / "straight" / name), step_records(tmp_path / "broken" / name)
        assert sorted(expected) == [1, 2, 3, 4] and sorted(after) == [3, 4]
        for step in after:
            assert after[step] == expected[step], f"{name}, step {step}"
