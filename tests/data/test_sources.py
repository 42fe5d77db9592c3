"""Dataset sources: both schemas, real benchmark files, bad rows and files with clear errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from real_lightning.data.arithmetic import ArithmeticTask
from real_lightning.data.prompts import prompt_text, tokenize_prompts
from real_lightning.data.sources import DatasetSpec, load_dataset_spec
from real_lightning.rewards.answers import accepted_answers
from real_lightning.rewards.grading import score_batch

BENCHMARKS = {"math500": 500, "aime24": 30, "aime25": 30, "amc23": 83, "minerva": 272, "olympiad_bench": 675}
"""The shipped evaluation sets (``builtin:<name>``) and their rows."""


@pytest.mark.parametrize(("name", "rows"), BENCHMARKS.items())
def test_verl_schema_benchmark_files_load(name: str, rows: int) -> None:
    loaded = load_dataset_spec(DatasetSpec(source=f"builtin:{name}"))
    assert len(loaded.records) == rows and loaded.skipped == 0
    first = loaded.records[0]
    assert isinstance(first.prompt, tuple) and first.prompt[0]["role"] == "user"
    assert "\\boxed{}" in first.prompt[-1]["content"] and first.ground_truth


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_ground_truth_verifies_in_boxed_form(name: str) -> None:
    """Each accepted answer of every row, written as the official prompt asks (``\\boxed{answer}``), scores 1
    under the math reward against the row's ground truth."""
    records = load_dataset_spec(DatasetSpec(source=f"builtin:{name}")).records
    rows = [(r, answer) for r in records for answer in accepted_answers(r.ground_truth)]
    responses = [f"The final answer is $\\boxed{{{answer}}}$." for _, answer in rows]
    scores = score_batch(responses, [r.ground_truth for r, _ in rows], num_workers=2, timeout_s=20.0)
    failed = [
        (r.index, answer, status)
        for (r, answer), status in zip(rows, scores.statuses, strict=True)
        if status != "correct"
    ]
    assert not failed, f"{name}: {len(failed)} of {len(rows)} answers do not verify, e.g. {failed[:5]}"
    if name in ("minerva", "olympiad_bench"):
        assert any(isinstance(r.ground_truth, str) for r in records)  # one-answer lists are plain answers


def test_list_ground_truths_load_from_every_format(tmp_path) -> None:
    """Lists of accepted answers in jsonl, json, parquet and a hub-style dataset folder, verl and plain schemas:
    a tuple of the usable answers (stripped, deduplicated; one left: that answer)."""
    verl = [
        {"prompt": [{"role": "user", "content": "q1"}], "reward_model": {"ground_truth": ["9.6\n", "48/5"]}},
        {"prompt": [{"role": "user", "content": "q2"}], "reward_model": {"ground_truth": ["2", " 2 "]}},
        {"prompt": [{"role": "user", "content": "q3"}], "reward_model": {"ground_truth": [None, 3]}},
    ]
    plain = [{"problem": r["prompt"][0]["content"], "answer": r["reward_model"]["ground_truth"]} for r in verl]
    expected = [("9.6", "48/5"), "2", "3"]
    folder = tmp_path / "hub"
    folder.mkdir()
    pd.DataFrame({"problem": ["q1", "q2"], "answer": [["9.6", "48/5"], ["2"]]}).to_parquet(folder / "train.parquet")
    for schema, rows in (("verl", verl), ("plain", plain)):
        (tmp_path / f"{schema}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        (tmp_path / f"{schema}.json").write_text(json.dumps(rows))
        for suffix in ("jsonl", "json"):
            loaded = load_dataset_spec(DatasetSpec(source=str(tmp_path / f"{schema}.{suffix}")))
            assert [r.ground_truth for r in loaded.records] == expected, (schema, suffix)
    pd.DataFrame(plain[:2]).to_parquet(tmp_path / "plain.parquet")
    loaded = load_dataset_spec(DatasetSpec(source=str(tmp_path / "plain.parquet")))
    assert [r.ground_truth for r in loaded.records] == expected[:2]
    assert [r.ground_truth for r in load_dataset_spec(DatasetSpec(source=str(folder))).records] == expected[:2]


def test_amc_float_ground_truths_stay_exact_text() -> None:
    loaded = load_dataset_spec(DatasetSpec(source="builtin:amc23"))
    assert all(r.ground_truth.replace(".", "", 1).replace("-", "", 1).isdigit() for r in loaded.records)


def test_plain_schema_jsonl_json_and_limit(tmp_path) -> None:
    rows = [{"problem": f"{i}+1=", "answer": str(i + 1)} for i in range(5)]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "d.json").write_text(json.dumps(rows))
    for path in (jsonl, tmp_path / "d.json"):
        loaded = load_dataset_spec(DatasetSpec(source=str(path), limit=3))
        assert [r.ground_truth for r in loaded.records] == ["1", "2", "3"]
        assert loaded.records[0].prompt == "0+1="


def test_missing_column_names_file_and_column(tmp_path) -> None:
    path = tmp_path / "bad.parquet"
    pd.DataFrame({"question": ["1+1"], "solution": ["2"]}).to_parquet(path)
    with pytest.raises(ValueError, match=r"bad\.parquet: column 'problem' not found \(columns: question, solution\)"):
        load_dataset_spec(DatasetSpec(source=str(path)))
    loaded = load_dataset_spec(DatasetSpec(source=str(path), prompt_field="question", answer_field="solution"))
    assert loaded.records[0].ground_truth == "2"


def test_bad_rows_are_skipped_and_counted_or_raise(tmp_path) -> None:
    rows = [
        {"problem": "a", "answer": "1"},
        {"problem": "b", "answer": ""},
        {"problem": "c", "answer": None},
        {"problem": "", "answer": "3"},
        {"problem": "d", "answer": []},
        {"problem": "e", "answer": 7},
        {"problem": "f", "answer": [None, " ", {"x": 1}]},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    loaded = load_dataset_spec(DatasetSpec(source=str(path)))
    assert [r.ground_truth for r in loaded.records] == ["1", "7"]
    assert loaded.skipped == 5 and loaded.skipped_rows == [1, 2, 3, 4, 6]
    with pytest.raises(ValueError, match=r"rows\.jsonl: row 1 has an empty or unusable 'answer'"):
        load_dataset_spec(DatasetSpec(source=str(path), on_bad_row="error"))


def test_malformed_jsonl_names_the_line(tmp_path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text('{"problem": "a", "answer": "1"}\n{"problem": \n')
    with pytest.raises(ValueError, match=r"broken\.jsonl: line 2 is not valid JSON"):
        load_dataset_spec(DatasetSpec(source=str(path)))


def test_missing_file_and_unknown_builtin() -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.parquet does not exist"):
        load_dataset_spec(DatasetSpec(source="nope.parquet"))
    with pytest.raises(ValueError, match="unknown built-in source 'builtin:chess'; valid: builtin:arithmetic, "):
        load_dataset_spec(DatasetSpec(source="builtin:chess"))


def test_builtin_task_is_deterministic_with_disjoint_splits() -> None:
    train = load_dataset_spec(DatasetSpec(source="builtin:arithmetic")).records
    test = load_dataset_spec(DatasetSpec(source="builtin:arithmetic", split="test")).records
    assert len(test) == 256 and len(train) == 90 * 90 - 256
    assert not {r.prompt for r in train} & {r.prompt for r in test}
    assert test == ArithmeticTask().records("test")
    for r in test + train:
        a, b = r.prompt.rstrip("=").split("+")
        assert len(a) == len(b) == 2 and int(a) + int(b) == int(r.ground_truth)
    mixed = ArithmeticTask(digits=1, operations=("+", "-", "*"), num_held_out=10).records("train")
    assert {r.prompt[1] for r in mixed if not r.prompt[1].isdigit()} == {"+", "-", "*"}
    with pytest.raises(ValueError, match="operations must be"):
        ArithmeticTask(operations=("/",))


def test_prompt_formatting_and_length_filter(char_tokenizer) -> None:
    record = load_dataset_spec(DatasetSpec(source="builtin:arithmetic", limit=1)).records[0]
    text, templated = prompt_text(record, char_tokenizer, suffix="")
    assert text == record.prompt and not templated
    kept = tokenize_prompts([record], char_tokenizer, max_length=len(record.prompt))
    assert len(kept) == 1 and char_tokenizer.decode(kept[0].ids) == record.prompt
    kept = tokenize_prompts([record, record], char_tokenizer, max_length=len(record.prompt) + 5, suffix="xxxxx")
    assert len(kept) == 2
    with pytest.raises(ValueError, match=r"every prompt is longer than prompts.max_length=2"):
        tokenize_prompts([record], char_tokenizer, max_length=2, name="t")


def test_chat_template_is_used_when_present(char_tokenizer) -> None:
    import copy

    tokenizer = copy.deepcopy(char_tokenizer)
    tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    records = load_dataset_spec(DatasetSpec(source="builtin:aime24", limit=1)).records
    text, templated = prompt_text(records[0], tokenizer)
    assert templated and text.startswith("<user>") and text.endswith("<assistant>")


def test_dataset_directory_goes_through_the_hub_loader(tmp_path) -> None:
    """``datasets.load_dataset`` on a local folder: the code path of a hub name, offline."""
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    pd.DataFrame({"problem": ["1+1=", "2+2="], "answer": ["2", "4"]}).to_parquet(folder / "train.parquet")
    pd.DataFrame({"problem": ["3+3="], "answer": ["6"]}).to_parquet(folder / "test.parquet")
    train = load_dataset_spec(DatasetSpec(source=str(folder), split="train"))
    test = load_dataset_spec(DatasetSpec(source=str(folder), split="test"))
    assert [r.ground_truth for r in train.records] == ["2", "4"] and test.records[0].prompt == "3+3="


def test_unsupported_file_type(tmp_path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("problem,answer\n1+1=,2\n")
    with pytest.raises(ValueError, match=r"unsupported file type '\.csv'"):
        load_dataset_spec(DatasetSpec(source=str(path)))
