"""Rewards with row data: a reward function that takes row fields (``data.train.reward_fields``,
``data.val.<name>.reward_fields``) gets each prompt's, inline and in the verifier's worker processes; bad rows and
functions that cannot take the fields asked for are refused at startup; the math reward is unaffected."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from real_lightning.cli import main
from real_lightning.data.config import VerifierConfig
from real_lightning.data.datamodule import RolloutDataModule
from real_lightning.data.sources import DatasetSpec, load_dataset_spec
from real_lightning.rewards import math_reward, score_batch
from real_lightning.rewards import timeouts as timeouts_module
from real_lightning.rewards.registry import ANY_FIELD, check_reward_fields, reward_fn_fields
from real_lightning.rollout import scoring
from tests import rewards_for_tests
from tests.rewards import helpers

REPO = Path(__file__).resolve().parents[2]
TOLERANCE = "tests.rewards_for_tests:tolerance_reward"
TOLERANCE_FROM_ROW = "tests.rewards_for_tests:tolerance_reward_from_row"


def _rows(prefix: str, count: int) -> list[dict[str, Any]]:
    """Plain rows with a distinct answer and an extra column, ``tolerance``, distinct per row."""
    return [
        {"problem": f"Say something ({prefix}{i}).", "answer": f"{prefix}{i}", "tolerance": round(0.05 + 0.1 * i, 2)}
        for i in range(count)
    ]


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _expected(response: str, tolerance: float) -> float:
    return tolerance if rewards_for_tests.first_char_even(response, "") else 1.0 - tolerance


# --- which functions take row fields --------------------------------------------------------------------------


def _two(response, ground_truth):
    return 1.0


def _named(response, ground_truth, tolerance, unit="m"):
    return 1.0


def _keyword_only(response, ground_truth, /, *, cases):
    return 1.0


def _star(*args, **row):
    return 1.0


class _Grader:
    def grade(self, response: str, ground_truth: str, *, tolerance: float = 0.1) -> float:
        return 1.0


def test_the_signature_says_which_fields_a_function_takes() -> None:
    assert reward_fn_fields(_two) == (frozenset(), frozenset(), frozenset({"response", "ground_truth"}))
    assert reward_fn_fields(_named)[:2] == ({"tolerance", "unit"}, {"tolerance"})
    assert reward_fn_fields(_keyword_only) == ({"cases"}, {"cases"}, frozenset())
    assert reward_fn_fields(_star) == (ANY_FIELD, frozenset(), frozenset())
    assert reward_fn_fields(rewards_for_tests.tolerance_reward_from_row).accepted == ANY_FIELD
    assert reward_fn_fields(_Grader().grade)[:2] == ({"tolerance"}, frozenset())  # bound: self is not a field
    assert reward_fn_fields(functools.partial(_named, unit="s"))[:2] == ({"tolerance", "unit"}, {"tolerance"})
    assert reward_fn_fields(math_reward) == (frozenset(), frozenset(), frozenset())  # its options are no fields
    assert reward_fn_fields(rewards_for_tests.first_char_even).accepted == frozenset()


def test_fields_a_function_cannot_take_are_refused_naming_the_option_and_the_function() -> None:
    option = "data.train.reward_fields"
    with pytest.raises(ValueError, match=rf"{option} asks for the row fields \['tolerance'\], but the reward "
                       r"function tests.rewards.test_row_fields:_two takes none"):  # fmt: skip
        check_reward_fields(_two, ["tolerance"], option)
    with pytest.raises(ValueError, match=r"math_reward takes none"):
        check_reward_fields(math_reward, ["tolerance"], option)
    with pytest.raises(ValueError, match=r"\['units'\], which the reward function .*:_named has no parameter for"):
        check_reward_fields(_named, ["tolerance", "units"], option)
    with pytest.raises(ValueError, match=rf":_named requires the row fields \['tolerance'\], which {option} does"):
        check_reward_fields(_named, ["unit"], option)
    with pytest.raises(ValueError, match=r"\['response'\], which are the names of the response and ground-truth"):
        check_reward_fields(rewards_for_tests.tolerance_reward_from_row, ["response"], option)
    for fn, fields in [(_two, []), (math_reward, []), (_named, ["tolerance"]), (_star, ["a", "b"]), (_star, [])]:
        check_reward_fields(fn, fields, option)


# --- grading --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reward_fn", [rewards_for_tests.tolerance_reward, rewards_for_tests.tolerance_reward_from_row])
@pytest.mark.parametrize("num_workers", [1, 2])
def test_a_reward_function_gets_each_responses_row_fields(reward_fn, num_workers, monkeypatch) -> None:
    pool_calls = []
    pool_map = timeouts_module.WorkerPool.map

    def recording_map(self, fn, args_list, *args, **kwargs):
        pool_calls.append([tuple(a) for a in args_list])
        return pool_map(self, fn, args_list, *args, **kwargs)

    monkeypatch.setattr(timeouts_module.WorkerPool, "map", recording_map)
    responses = ["b", "a", "b", "a"]  # "b" has an even code point
    fields = [{"tolerance": 0.1}, {"tolerance": 0.1}, {"tolerance": 0.3}, {"tolerance": 0.25}]
    scores = score_batch(responses, ["x"] * 4, reward_fn=reward_fn, num_workers=num_workers, row_fields=fields)
    assert scores.rewards == pytest.approx([0.1, 0.9, 0.3, 0.75])
    assert scores.statuses == ["correct"] * 4
    # with two workers the calls (and their fields) went to the worker processes
    assert pool_calls == ([] if num_workers == 1 else [list(zip(responses, ["x"] * 4, fields, strict=True))])


def test_accepted_answers_each_get_the_rows_fields() -> None:
    scores = score_batch(
        ["b"], [("x", "y")], reward_fn=rewards_for_tests.tolerance_reward, row_fields=[{"tolerance": 0.4}]
    )
    assert scores.rewards == pytest.approx([0.4])


def test_row_fields_the_function_cannot_take_are_an_error() -> None:
    with pytest.raises(ValueError, match="3 responses but 2 row fields"):
        score_batch(["a"] * 3, ["a"] * 3, reward_fn=helpers.exact_reward, row_fields=[{}, {}])
    with pytest.raises(ValueError, match=r"row_fields asks for the row fields \['tolerance'\].*exact_reward"):
        score_batch(["a"], ["a"], reward_fn=helpers.exact_reward, row_fields=[{"tolerance": 1}])
    with pytest.raises(ValueError, match=r"math_reward takes none"):
        score_batch([r"\boxed{2}"], ["2"], row_fields=[{"tolerance": 1}])


def test_math_reward_and_two_argument_functions_are_unaffected(tmp_path) -> None:
    """Rows with extra columns and no reward_fields: no fields, the same scores as without any."""
    path = _jsonl(tmp_path / "math.jsonl", [{"problem": "1+1?", "answer": "2", "tolerance": 0.5, "unit": "m"}] * 2)
    records = load_dataset_spec(DatasetSpec(source=str(path))).records
    assert [r.row_fields for r in records] == [{}, {}]
    responses = [r"\boxed{2}", "the answer is 3", r"\boxed{\frac{4}{2}}", "none"]
    truths = ["2", "3", "2", "4"]
    for kwargs in [{"num_workers": 1}, {"num_workers": 2}]:
        plain = score_batch(responses, truths, **kwargs)
        assert plain.rewards == [1.0, 1.0, 1.0, 0.0]
        assert score_batch(responses, truths, row_fields=[{}] * 4, **kwargs) == plain
        user = score_batch(responses, truths, reward_fn=helpers.exact_reward, **kwargs)
        assert score_batch(responses, truths, reward_fn=helpers.exact_reward, row_fields=[{}] * 4, **kwargs) == user


# --- bad rows and options at startup --------------------------------------------------------------------------


def test_a_row_without_a_field_is_refused_naming_the_file_row_and_field(tmp_path) -> None:
    rows = _rows("a", 4)
    del rows[2]["tolerance"]
    path = _jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(ValueError, match=r"rows\.jsonl: row 2 has no field 'tolerance', which reward_fields names"):
        load_dataset_spec(DatasetSpec(source=str(path), reward_fields=["tolerance"]))
    loaded = load_dataset_spec(DatasetSpec(source=str(path), reward_fields=["tolerance"], limit=2))
    assert [r.row_fields for r in loaded.records] == [{"tolerance": 0.05}, {"tolerance": 0.15}]


def test_a_field_that_is_not_json_like_is_refused_naming_the_row_and_field(tmp_path) -> None:
    path = tmp_path / "rows.parquet"
    table = pa.table(
        {
            "problem": ["p0", "p1"],
            "answer": ["0", "1"],
            "cases": [[{"input": "1", "output": "2"}], [{"input": "3", "output": "4"}]],
            "blob": pa.array([b"\x00", b"\x01"], type=pa.binary()),
        }
    )
    pq.write_table(table, path)
    loaded = load_dataset_spec(DatasetSpec(source=str(path), reward_fields=["cases"]))
    assert loaded.records[1].row_fields == {"cases": [{"input": "3", "output": "4"}]}
    with pytest.raises(ValueError, match=r"rows\.parquet: row 0 field 'blob' holds a bytes .*must be JSON-like"):
        load_dataset_spec(DatasetSpec(source=str(path), reward_fields=["cases", "blob"]))


def test_reward_fields_options_are_checked_when_the_data_module_is_built(tmp_path) -> None:
    path = str(_jsonl(tmp_path / "rows.jsonl", _rows("a", 2)))
    with_fields = DatasetSpec(source=path, reward_fields=["tolerance"])
    with pytest.raises(ValueError, match=r"data\.train\.reward_fields asks for .*rewards_for_tests:contains_seven"):
        RolloutDataModule(train=with_fields, verifier=VerifierConfig(reward="tests.rewards_for_tests:contains_seven"))
    with pytest.raises(ValueError, match=r"data\.train\.reward_fields asks for .*math_reward takes none"):
        RolloutDataModule(train=with_fields)
    with pytest.raises(ValueError, match=r"requires the row fields \['tolerance'\], which data\.val\.bench\.reward"):
        RolloutDataModule(
            train=with_fields, val={"bench": DatasetSpec(source=path)}, verifier=VerifierConfig(reward=TOLERANCE)
        )
    with pytest.raises(ValueError, match=r"data\.val\.held_out\.reward_fields: the built-in task builtin:arithmetic"):
        RolloutDataModule(
            train=with_fields,
            val={"held_out": DatasetSpec(source="builtin:arithmetic", reward_fields=["tolerance"])},
            verifier=VerifierConfig(reward=TOLERANCE_FROM_ROW),
        )
    with pytest.raises(ValueError, match=r"reward_fields names \['tolerance'\] more than once"):
        DatasetSpec(source=path, reward_fields=["tolerance", "tolerance"])
    RolloutDataModule(train=with_fields, verifier=VerifierConfig(reward=TOLERANCE))


# --- a short fit of the tiny policy ---------------------------------------------------------------------------


def _fit_args(root: Path, train: Path, val: Path, reward: str, workers: int, *extra: str) -> list[str]:
    """A 2-step fit of the shipped tiny policy on ``train`` (4 prompts × 4 rollouts of 6 tokens a step), with one
    validation batch of ``val`` before it; ``tolerance`` goes to the reward function in both."""
    overlay = root / "overlay.yaml"
    overlay.write_text(
        yaml.safe_dump(
            {
                "trainer": {"logger": False, "callbacks": [], "enable_checkpointing": False},
                "data": {"val": {"bench": {"source": str(val), "reward_fields": ["tolerance"]}}},
            }
        )
    )
    return [
        "fit",
        "-c", str(REPO / "configs" / "quickstart.yaml"),
        "-c", str(overlay),
        "--model.pretrained", "builtin:tiny",
        "--model.export_dir", "null",
        "--validate_before_fit", "true",
        "--trainer.max_steps", "2",
        "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(root),
        "--data.train.source", str(train),
        "--data.train.reward_fields", "[tolerance]",
        "--data.schedule.prompts_per_rollout", "4",
        "--data.schedule.rollouts_per_prompt", "4",
        "--data.validation.samples", "2",
        "--data.validation.prompts_per_batch", "3",
        "--data.engine.init_args.max_new_tokens", "6",
        "--data.verifier.reward", reward,
        "--data.verifier.workers", str(workers),
        "--data.verifier.truncated_is_wrong", "false",
        "--pass_at_k.ks", "[1]",
        *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(("reward", "workers"), [(TOLERANCE, 1), (TOLERANCE_FROM_ROW, 2)], ids=["inline", "workers"])
def test_a_fit_grades_with_each_rows_field(tmp_path, monkeypatch, reward, workers) -> None:
    """Training and validation rewards are what the function returns for each prompt's own ``tolerance``."""
    train_rows, val_rows = _rows("t", 8), _rows("v", 3)
    tolerance = {row["answer"]: row["tolerance"] for row in train_rows + val_rows}
    graded: list[tuple[str, str, float]] = []
    score, pool_map = scoring.Scorer.score, timeouts_module.WorkerPool.map
    pool_calls: list[int] = []

    def recording_score(self, responses, ground_truths, truncated, row_fields=None):
        scores = score(self, responses, ground_truths, truncated, row_fields)
        graded.extend(zip(responses, ground_truths, scores.rewards.tolist(), strict=True))
        return scores

    def recording_map(self, fn, args_list, *args, **kwargs):
        pool_calls.append(len(args_list))
        return pool_map(self, fn, args_list, *args, **kwargs)

    monkeypatch.setattr(scoring.Scorer, "score", recording_score)
    monkeypatch.setattr(timeouts_module.WorkerPool, "map", recording_map)
    train, val = _jsonl(tmp_path / "train.jsonl", train_rows), _jsonl(tmp_path / "val.jsonl", val_rows)
    main(_fit_args(tmp_path, train, val, reward, workers))

    assert {truth[0] for _, truth, _ in graded} == {"t", "v"}  # training and validation both graded
    assert len(graded) == 3 * 2 + 2 * 4 * 4  # validation before fit, then 2 rollout batches
    for response, truth, reward_value in graded:
        assert reward_value == pytest.approx(_expected(response, tolerance[truth]), abs=1e-6), (response, truth)
    # the rewards follow the rows' tolerances, not only the responses: many distinct values
    assert len({round(value, 4) for _, _, value in graded}) >= 6
    assert (sum(pool_calls) == len(graded)) if workers > 1 else not pool_calls


def test_a_fit_refuses_a_row_without_the_field_before_training(tmp_path) -> None:
    rows = _rows("t", 8)
    del rows[5]["tolerance"]
    train, val = _jsonl(tmp_path / "train.jsonl", rows), _jsonl(tmp_path / "val.jsonl", _rows("v", 3))
    with pytest.raises(ValueError, match=r"train\.jsonl: row 5 has no field 'tolerance'"):
        main(_fit_args(tmp_path, train, val, TOLERANCE, 1))


def test_a_fit_refuses_reward_fields_for_a_two_argument_function(tmp_path) -> None:
    train, val = _jsonl(tmp_path / "train.jsonl", _rows("t", 8)), _jsonl(tmp_path / "val.jsonl", _rows("v", 3))
    with pytest.raises(ValueError, match=r"data\.train\.reward_fields asks .*tests\.rewards_for_tests:first_char_even"):
        main(_fit_args(tmp_path, train, val, "tests.rewards_for_tests:first_char_even", 1))
