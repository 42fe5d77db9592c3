"""Bad input gets a clear answer at startup (issue 21): each case names the file, row, option or function."""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from real_lightning.data.config import VerifierConfig
from real_lightning.data.datamodule import RolloutDataModule
from real_lightning.data.prompts import model_positions, prompt_limit
from real_lightning.data.sources import DatasetSpec, load_dataset_spec
from real_lightning.losses import LOSS_OPTION_RULES, LOSSES, check_loss_options
from real_lightning.module import RealPolicyModule
from real_lightning.policy.loading import BUILTIN, TINY_POLICY_DIR, resolve_pretrained
from real_lightning.rollout.hf import HFEngine
from real_lightning.rollout.schedule import RolloutSchedule

REWARD = "tests.rewards_for_tests:contains_seven"


def _datamodule(train: str, engine: HFEngine | None = None, **kwargs) -> RolloutDataModule:
    """A data module over ``train`` (a file), 2 prompts × 4 rollouts, no validation sets."""
    return RolloutDataModule(
        train=DatasetSpec(source=train),
        engine=engine or HFEngine(max_new_tokens=6),
        schedule=RolloutSchedule(prompts_per_rollout=2, rollouts_per_prompt=4),
        verifier=VerifierConfig(reward=REWARD, workers=1, truncated_is_wrong=False),
        **{"tokenizer_from": BUILTIN, **kwargs},  # the character tokenizer every test policy shares
    )


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


# --- 1. model.pretrained ------------------------------------------------------------------------------------


@pytest.mark.parametrize("pretrained", ["/nonexistent", "./no/such/dir", "~/no-such-policy-dir", "a/b/c"])
def test_missing_local_policy_path_is_named(pretrained: str) -> None:
    with pytest.raises(FileNotFoundError, match=rf"model.pretrained .*{pretrained.lstrip('~/.')}.* does not exist"):
        resolve_pretrained(pretrained)


def test_unknown_builtin_policy_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown built-in policy 'builtin:nothing'; valid: builtin:tiny"):
        resolve_pretrained("builtin:nothing")


def test_hub_names_and_existing_paths_pass_through(tmp_path: Path) -> None:
    assert resolve_pretrained("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert resolve_pretrained("gpt2") == "gpt2"
    assert resolve_pretrained(str(tmp_path)) == str(tmp_path)
    assert resolve_pretrained("builtin:tiny") == str(TINY_POLICY_DIR)


def test_module_refuses_a_missing_policy_path() -> None:
    with pytest.raises(FileNotFoundError, match="/nonexistent"):
        RealPolicyModule(pretrained="/nonexistent")


# --- 2. non-UTF-8 bytes in data files -----------------------------------------------------------------------


def test_non_utf8_byte_in_jsonl_names_file_line_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"problem": "1+1", "answer": "2"}\n{"problem": "caf\xe9", "answer": "3"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 2 is not valid UTF-8 \(byte offset 50"):
        load_dataset_spec(DatasetSpec(source=str(path)))


def test_non_utf8_byte_in_json_names_file_line_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(b'[\n{"problem": "1+1", "answer": "2"},\n{"problem": "\xff", "answer": "3"}\n]\n')
    with pytest.raises(ValueError, match=r"bad\.json: line 3 is not valid UTF-8 \(byte offset 50"):
        load_dataset_spec(DatasetSpec(source=str(path)))


# --- 3. loss options at construction ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loss", "kwargs", "message"),
    [
        ("real", {"tau": 0}, "model.loss_kwargs.tau must be > 0, got 0"),
        ("real_bce", {"tau": -0.5}, "model.loss_kwargs.tau must be > 0, got -0.5"),
        ("real_product", {"tau": float("nan")}, "model.loss_kwargs.tau must be > 0, got nan"),
        ("grpo", {"clip_low": -0.1}, "model.loss_kwargs.clip_low must be >= 0, got -0.1"),
        ("dapo", {"clip_high": -1}, "model.loss_kwargs.clip_high must be >= 0, got -1"),
        ("gspo", {"log_ratio_clamp": 0}, r"model.loss_kwargs.log_ratio_clamp must be > 0 or null, got 0"),
        ("grpo", {"adv_eps": -1e-6}, "model.loss_kwargs.adv_eps must be >= 0"),
        ("grpo", {"adv_eps": 0}, "model.loss_kwargs.adv_eps must be > 0 while scale_adv_by_std"),
        ("dapo", {"scale_adv_by_std": "yes"}, "model.loss_kwargs.scale_adv_by_std must be true or false"),
        ("real", {"tau": "0.5"}, "model.loss_kwargs.tau must be a number"),
    ],
)
def test_bad_loss_options_are_refused_at_construction(loss: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_loss_options(loss, kwargs)


def test_module_checks_loss_options_before_loading_the_policy() -> None:
    with pytest.raises(ValueError, match=r"model.loss_kwargs.tau must be > 0, got 0"):
        RealPolicyModule(pretrained="builtin:tiny", loss="real", loss_kwargs={"tau": 0})


def test_valid_loss_options_pass() -> None:
    check_loss_options("grpo", {"adv_eps": 0, "scale_adv_by_std": False, "clip_low": 0})
    check_loss_options("gspo", {"log_ratio_clamp": None})
    check_loss_options("real", {"tau": 1})


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_every_loss_option_has_a_rule(loss: str) -> None:
    """A new hyper-parameter must come with its range check."""
    params = inspect.signature(LOSSES[loss]).parameters
    hparams = {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY and p.default is not p.empty}
    assert hparams - {"counts", "importance_weights"} <= set(LOSS_OPTION_RULES)


# --- 4. group size 1 and temperature 0 refused for training -------------------------------------------------


def test_one_rollout_per_prompt_is_refused() -> None:
    with pytest.raises(ValueError, match=r"data.schedule.rollouts_per_prompt must be >= 2 .*contrast"):
        RolloutSchedule(rollouts_per_prompt=1)


def test_greedy_training_engine_is_refused_when_fitting_only(tmp_path: Path, char_tokenizer) -> None:
    train = _jsonl(tmp_path / "t.jsonl", [{"problem": "1+1", "answer": "2"}, {"problem": "2+2", "answer": "4"}])
    dm = _datamodule(train, engine=HFEngine(max_new_tokens=6, temperature=0.0))
    dm.attach_tokenizer(char_tokenizer)
    dm.setup("validate")  # greedy validation is fine
    with pytest.raises(ValueError, match=r"data.engine.init_args.temperature=0.*identical.*data.val_engine"):
        dm.setup("fit")


def test_greedy_validation_engine_next_to_a_sampling_one_trains(tmp_path: Path, char_tokenizer) -> None:
    train = _jsonl(tmp_path / "t.jsonl", [{"problem": "1+1", "answer": "2"}, {"problem": "2+2", "answer": "4"}])
    dm = _datamodule(train, val_engine=HFEngine(max_new_tokens=6, temperature=0.0))
    dm.attach_tokenizer(char_tokenizer)
    dm.setup("fit")
    assert len(dm.collector.prompts) == 2


# --- 5. mini-batches that do not divide the rollout batch ---------------------------------------------------


def test_minibatch_that_does_not_divide_the_rollout_batch_is_refused() -> None:
    message = (
        r"data.schedule.prompts_per_minibatch=4 does not divide data.schedule.prompts_per_rollout=6.*"
        r"divisor of 6: 1, 2, 3, 6"
    )
    with pytest.raises(ValueError, match=message):
        RolloutSchedule(prompts_per_rollout=6, prompts_per_minibatch=4)
    assert RolloutSchedule(prompts_per_rollout=6, prompts_per_minibatch=3).minibatches_per_epoch == 2


# --- 6. prompts longer than the model's positions -----------------------------------------------------------


def test_prompt_limit_takes_the_model_positions_into_account() -> None:
    assert prompt_limit(1024, None, 16)[0] == 1024
    limit, reason = prompt_limit(1024, 64, 6)
    assert limit == 58 and "64 positions" in reason and "max_new_tokens=6" in reason
    assert prompt_limit(20, 64, 6)[0] == 20
    assert prompt_limit(1024, 64, 512)[0] == 64  # responses run past the positions anyway: keep what fits


def test_model_positions_come_from_the_tokenizers_directory(policy_dir: str, char_tokenizer) -> None:
    assert model_positions(AutoTokenizer.from_pretrained(policy_dir)) == 64
    assert model_positions(char_tokenizer) is None  # built in memory: no config to read


def test_prompts_longer_than_the_model_positions_are_dropped_and_counted(
    tmp_path: Path, policy_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [{"problem": "1+1", "answer": "2"}, {"problem": "1+" * 40 + "1", "answer": "41"}]
    dm = _datamodule(_jsonl(tmp_path / "t.jsonl", rows))
    dm.attach_tokenizer(AutoTokenizer.from_pretrained(policy_dir))
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert [p.record.index for p in dm.collector.prompts] == [0]
    assert "dropped 1 of 2 prompts longer than 58 tokens" in caplog.text
    assert "64 positions" in caplog.text


def test_validation_prompts_past_the_positions_are_kept_and_counted(
    tmp_path: Path, policy_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A benchmark keeps all its problems (Pass@k over all of them); the warning says how many run long."""
    rows = [{"problem": "1+1", "answer": "2"}, {"problem": "1+" * 40 + "1", "answer": "41"}]
    path = _jsonl(tmp_path / "v.jsonl", rows)
    dm = _datamodule(path, val={"bench": DatasetSpec(source=path)})
    dm.attach_tokenizer(AutoTokenizer.from_pretrained(policy_dir))
    with caplog.at_level(logging.WARNING):
        dm.setup("validate")
    assert len(dm.collector.val_prompts["bench"]) == 2
    assert "bench: 1 of 2 prompts are longer than 58 tokens" in caplog.text


# --- 7. duplicate rows ------------------------------------------------------------------------------------


def test_duplicate_rows_are_counted_with_the_first_example(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [
        {"problem": "1+1", "answer": "2"},
        {"problem": "2+2", "answer": "4"},
        {"problem": "1+1", "answer": "2"},
        {"problem": "1+1", "answer": "3"},  # same prompt, another ground truth: not a duplicate
        {"problem": "2+2", "answer": "4"},
    ]
    with caplog.at_level(logging.WARNING):
        loaded = load_dataset_spec(DatasetSpec(source=_jsonl(tmp_path / "d.jsonl", rows)))
    assert loaded.duplicates == 2 and len(loaded.records) == 5  # counted, not dropped
    assert "2 duplicate rows (same prompt and ground truth; first: row 2 repeats row 0)" in caplog.text
