"""Two processes (DDP, gloo, CPU) against one: the same steps, the same weights; a skipped rank does not hang."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from real_lightning.export import export_checkpoint
from tests.pipeline.launch import REPO, run_ranks

pytestmark = pytest.mark.distributed
SCRIPTED = {"class_path": "tests.pipeline.scripted_engine.ScriptedEngine", "init_args": {"max_new_tokens": 6}}


def _overlay(root: Path, extra_callbacks: list[dict]) -> Path:
    recorder = {
        "class_path": "tests.pipeline.callbacks_for_tests.StepRecorder",
        "init_args": {"path": str(root / "steps.jsonl")},
    }
    path = root / "overlay.yaml"
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": [recorder, *extra_callbacks]}}))
    return path


def _args(
    policy_dir: str, root: Path, world_size: int, *, loss: str, extra_callbacks: list[dict] = (), fsdp: bool = False
) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    args = [
        "fit",
        "-c", str(REPO / "configs" / "quickstart.yaml"),
        "-c", str(_overlay(root, list(extra_callbacks))),
        "--model.pretrained", policy_dir,
        "--model.loss", loss,
        "--model.loss_kwargs", "{}",
        "--model.lr", "0.01",
        "--model.export_dir", str(root / "hf"),
        "--trainer.max_steps", "4",
        "--trainer.val_check_interval", "4",
        "--trainer.log_every_n_steps", "1",
        "--trainer.enable_checkpointing", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(root),
        "--trainer.logger.init_args.save_dir", str(root),
        "--trainer.accelerator", "cpu",
        "--trainer.devices", str(world_size),
        "--data.schedule.prompts_per_rollout", "4",
        "--data.schedule.rollouts_per_prompt", "4",
        "--data.schedule.ppo_epochs", "2",
        "--data.schedule.max_sequences_per_micro_batch", "4",
        "--data.verifier.reward", "tests.rewards_for_tests:first_char_even",
        "--data.verifier.truncated_is_wrong", "false",
        "--data.val.held_out.limit", "9",
        "--data.validation.prompts_per_batch", "4",
        "--data.validation.samples", "4",
        "--pass_at_k.ks", "[1]",
    ]  # fmt: skip
    if fsdp:
        args[3:3] = ["-c", str(REPO / "configs" / "fsdp.yaml")]
    elif world_size > 1:
        args += ["--trainer.strategy", "ddp"]
    return args


def _records(path: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, path.read_text().splitlines())}


def _pass_at_1(output: str) -> str:
    match = re.search(r"\[held_out\] Pass@1 before: [0-9.]+, after: [0-9.]+", output)
    assert match, output[-3000:]
    return match.group(0)


@pytest.mark.parametrize(("loss", "fsdp"), [("real", False), ("dapo", False), ("real", True), ("grpo", True)])
def test_two_processes_train_like_one(policy_dir, tmp_path, loss, fsdp) -> None:
    """Same rollouts (a scripted engine) on 1 rank (unsharded) and 2 ranks (DDP, or FSDP2 with the policy
    sharded): same per-step loss, same final weights, same Pass@1."""
    outputs = {}
    for world in (1, 2):
        args = _args(policy_dir, tmp_path / f"w{world}", world, loss=loss, fsdp=fsdp and world == 2)
        args += ["--model.dtype", "float64", "--data.engine", json.dumps(SCRIPTED)]
        outputs[world] = run_ranks(args, world, tmp_path / f"w{world}" / "logs")
    one, two = _records(tmp_path / "w1" / "steps.jsonl"), _records(tmp_path / "w2" / "steps.jsonl")
    assert sorted(one) == sorted(two) == [1, 2, 3, 4]
    for step in one:
        a, b = float.fromhex(one[step]["loss"][0]), float.fromhex(two[step]["loss"][0])
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), f"step {step}: loss {a} (1 rank) vs {b} (2 ranks)"
    assert any(float.fromhex(r["loss"][0]) != 0 for r in one.values())
    # rank 1 saw the other half of every rollout batch
    rank1 = _records(tmp_path / "w2" / "steps.jsonl.rank1")
    full = one[1]["local_numel"]
    for records in (two, rank1):  # FSDP: each rank holds about half of the parameters; DDP: all of them
        assert records[1]["local_numel"] <= (0.55 * full if fsdp else full) and records[1]["local_numel"] > 0.45 * full
    for step in one:
        assert sorted(two[step]["prompts"] + rank1[step]["prompts"]) == sorted(one[step]["prompts"])
    w1, w2 = (
        load_file(tmp_path / "w1" / "hf" / "model.safetensors"),
        load_file(tmp_path / "w2" / "hf" / "model.safetensors"),
    )
    start = load_file(Path(policy_dir) / "model.safetensors")
    assert max(float((w1[k].double() - start[k].double()).abs().max()) for k in w1) > 1e-3  # the weights moved
    for key in w1:
        assert float((w1[key].double() - w2[key].double()).abs().max()) <= 1e-6, key
    assert _pass_at_1(outputs[1][0]) == _pass_at_1(outputs[2][0])  # validation sharded over ranks, reduced


def test_a_skipped_update_on_one_rank_does_not_hang_the_other(policy_dir, tmp_path) -> None:
    """Rank 1's loss is NaN at step 1: both ranks skip that update and go on; dynamic sampling runs too."""
    nan = {"class_path": "tests.pipeline.callbacks_for_tests.NanLossOnRank", "init_args": {"rank": 1, "step": 1}}
    args = _args(policy_dir, tmp_path, 2, loss="real", extra_callbacks=[nan])
    args += ["--data.schedule.dynamic_sampling", "true", "--data.schedule.max_sampling_rounds", "2"]
    outputs = run_ranks(args, 2, tmp_path / "logs")
    rank0, rank1 = _records(tmp_path / "steps.jsonl"), _records(tmp_path / "steps.jsonl.rank1")
    assert sorted(rank0) == sorted(rank1) == [1, 2, 3, 4]
    for records in (rank0, rank1):
        assert records[2]["param_sum"] == records[1]["param_sum"]  # step index 1 changed nothing
        assert records[3]["param_sum"] != records[2]["param_sum"]  # training went on
    assert [r["param_sum"] for r in rank0.values()] == [r["param_sum"] for r in rank1.values()]
    assert "update skipped" in outputs[0]


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_two_process_resume_after_sigkill_is_exact(policy_dir, tmp_path, fsdp) -> None:
    """Both ranks SIGKILLed mid rollout batch, resumed with --ckpt_path last: every rank's steps bit-identical
    (FSDP2: from a distributed checkpoint, a directory of shards)."""
    checkpoint = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"every_n_train_steps": 1, "save_last": True},
    }
    kill = {"class_path": "tests.pipeline.callbacks_for_tests.KillAtStep", "init_args": {"step": 3}}
    common = ["--data.schedule.prompts_per_minibatch", "2", "--trainer.enable_checkpointing", "true"]
    straight = (
        _args(policy_dir, tmp_path / "straight", 2, loss="real", extra_callbacks=[checkpoint], fsdp=fsdp) + common
    )
    run_ranks(straight, 2, tmp_path / "straight" / "logs")
    broken = (
        _args(policy_dir, tmp_path / "broken", 2, loss="real", extra_callbacks=[kill, checkpoint], fsdp=fsdp) + common
    )
    run_ranks(broken, 2, tmp_path / "broken" / "logs", exit_code=-9)
    for name in ("steps.jsonl", "steps.jsonl.rank1"):
        (tmp_path / "broken" / name).rename(tmp_path / "broken" / f"killed_{name}")
    resumed = _args(policy_dir, tmp_path / "broken", 2, loss="real", extra_callbacks=[checkpoint], fsdp=fsdp) + common
    run_ranks([*resumed, "--ckpt_path", "last"], 2, tmp_path / "broken" / "logs2")
    for name in ("steps.jsonl", "steps.jsonl.rank1"):
        expected, after = _records(tmp_path / "straight" / name), _records(tmp_path / "broken" / name)
        assert sorted(after) == [3, 4]  # resumed from the checkpoint of step 2: mini-batch 2 of rollout batch 0
        assert after[3]["request"] == [2, 0, 2]
        for step in after:
            assert after[step] == expected[step], f"{name}, step {step}"
    # the final weights, gathered at fit's end (export_dir) and exported later from the last checkpoint, agree
    last = next((tmp_path / "straight").rglob("last.ckpt"))
    assert last.is_dir() == fsdp  # FSDP writes a distributed checkpoint: a directory of shards + meta.pt
    exported = export_checkpoint(last, tmp_path / "exported")
    at_fit_end, later = (load_file(d / "model.safetensors") for d in (tmp_path / "straight" / "hf", exported))
    assert at_fit_end.keys() == later.keys() and all(torch.equal(at_fit_end[k], later[k]) for k in later)
    reloaded = AutoModelForCausalLM.from_pretrained(exported)
    assert torch.equal(reloaded.model.embed_tokens.weight, at_fit_end["model.embed_tokens.weight"])
