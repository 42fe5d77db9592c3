"""The six evaluation sets shipped as ``builtin:<name>`` and the paper's training set (DeepScaleR) in both its forms.

The row counts, schemas and answers of each set are checked in tests/data/test_sources.py; here: what a built-in
source is, the files being the official ones, the licence notes, and the errors a wrong name or option gets.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd
import pytest

from real_lightning.data.benchmarks import BENCHMARK_DIR, BUILTIN_BENCHMARKS, benchmark_path
from real_lightning.data.config import VerifierConfig
from real_lightning.data.datamodule import RolloutDataModule
from real_lightning.data.prompts import prompt_text
from real_lightning.data.sources import BUILTIN_TASKS, DatasetSpec, is_builtin_task, load_dataset_spec
from real_lightning.policy.loading import BUILTIN

REPO = Path(__file__).resolve().parents[2]
OFFICIAL_COPY = REPO.parent / "shared" / "data"  # the development checkout's copy of the official files
INSTRUCTION = " Let's think step by step and output the final answer within \\boxed{}."


def test_the_kinds_of_builtin_sources_are_told_apart() -> None:
    assert set(BUILTIN_TASKS) == {"arithmetic", "countdown"}
    assert all(is_builtin_task(f"builtin:{name}") for name in BUILTIN_TASKS)
    assert not any(is_builtin_task(f"builtin:{name}") for name in BUILTIN_BENCHMARKS)
    assert not is_builtin_task("data/arithmetic.parquet") and not is_builtin_task("arithmetic")


@pytest.mark.parametrize("name", BUILTIN_BENCHMARKS)
def test_each_shipped_file_is_in_the_installed_package_with_its_stated_rows(name: str) -> None:
    path = benchmark_path(name)
    assert path.parent == BENCHMARK_DIR and "real_lightning" in path.parts
    loaded = load_dataset_spec(DatasetSpec(source=f"builtin:{name}"))
    assert len(loaded.records) == BUILTIN_BENCHMARKS[name].rows and loaded.name == f"builtin:{name}"
    assert {r.data_source for r in loaded.records} == {f"builtin:{name}"}  # the files' data_source is empty


@pytest.mark.parametrize("name", BUILTIN_BENCHMARKS)
def test_shipped_files_are_the_official_ones_byte_for_byte(name: str) -> None:
    """Where the development checkout has the official REAL code's copy, the shipped file is identical to it."""
    official = OFFICIAL_COPY / f"{name}.parquet"
    if not official.is_file():
        pytest.skip(f"{official} not here (only the development checkout has it)")
    digest = hashlib.sha256
    assert digest(benchmark_path(name).read_bytes()).digest() == digest(official.read_bytes()).digest()


def test_licences_and_provenance_are_stated_for_every_file() -> None:
    notes = (BENCHMARK_DIR / "README.md").read_text()
    for name, benchmark in BUILTIN_BENCHMARKS.items():
        row = next(line for line in notes.splitlines() if line.startswith(f"| `builtin:{name}` |"))
        assert f"| {benchmark.rows} |" in row and benchmark.licence.split(" ")[0] in row, row
    assert "CC BY-NC-SA 4.0" in BUILTIN_BENCHMARKS["minerva"].licence


def test_a_wrong_builtin_name_lists_every_builtin_source_and_options_are_for_tasks_only() -> None:
    with pytest.raises(ValueError, match=r"unknown built-in source 'builtin:math5000'; valid: builtin:arithmetic, "):
        load_dataset_spec(DatasetSpec(source="builtin:math5000"))
    with pytest.raises(ValueError, match=r"options are for the built-in tasks, not the evaluation file builtin:aime24"):
        load_dataset_spec(DatasetSpec(source="builtin:aime24", options={"digits": 2}))


def test_a_shipped_file_takes_a_files_options_limit_and_reward_fields() -> None:
    loaded = load_dataset_spec(DatasetSpec(source="builtin:math500", limit=3, reward_fields=["extra_info"]))
    assert len(loaded.records) == 3 and loaded.records[2].row_fields == {"extra_info": {"index": 2, "split": "test"}}


@pytest.mark.parametrize(("train", "truncated_is_wrong"), [("builtin:arithmetic", True), ("builtin:math500", False)])
def test_truncation_scores_zero_by_default_for_generated_tasks_only(train: str, truncated_is_wrong: bool) -> None:
    datamodule = RolloutDataModule(train=DatasetSpec(source=train), verifier=VerifierConfig(workers=1))
    assert datamodule.scorer.truncated_is_wrong is truncated_is_wrong


def _deepscaler_rows() -> list[dict[str, str]]:
    """Three rows in the schema of agentica-org/DeepScaleR-Preview-Dataset (problem, answer, solution)."""
    return [
        {"problem": "What is $2^{10}$?", "answer": "1024", "solution": "$2^{10} = 1024$."},
        {"problem": "Solve $3x + 5 = 11$ for $x$.", "answer": "2", "solution": "$3x = 6$, so $x = 2$."},
        {"problem": "Simplify $\\frac{6}{8}$.", "answer": "\\frac{3}{4}", "solution": "Divide by 2."},
    ]


def test_deepscaler_from_the_hub_schema_and_from_the_official_verl_file_give_the_same_prompts(
    tmp_path, char_tokenizer
) -> None:
    """The paper recipe's training set: the hub dataset's columns (problem, answer; a local folder goes through the
    same loader as the hub name) with the recipe's prompts.suffix, and the verl parquet the official code builds
    from it (the instruction inside the chat row), give the same prompt texts and ground truths."""
    rows = _deepscaler_rows()
    folder = tmp_path / "DeepScaleR-Preview-Dataset"
    folder.mkdir()
    pd.DataFrame(rows).to_parquet(folder / "train.parquet")
    verl = [
        {
            "data_source": "",
            "prompt": [{"role": "user", "content": row["problem"] + INSTRUCTION}],
            "ability": "math",
            "reward_model": {"ground_truth": row["answer"], "style": "rule"},
            "extra_info": {"index": i, "split": "train"},
        }
        for i, row in enumerate(rows)
    ]
    pd.DataFrame(verl).to_parquet(tmp_path / "train.parquet")
    hub = load_dataset_spec(DatasetSpec(source=str(folder), split="train")).records
    official = load_dataset_spec(DatasetSpec(source=str(tmp_path / "train.parquet"))).records
    assert [r.ground_truth for r in hub] == [r.ground_truth for r in official] == ["1024", "2", "\\frac{3}{4}"]
    for tokenizer in (char_tokenizer, _with_chat_template(char_tokenizer)):
        texts = [prompt_text(r, tokenizer, INSTRUCTION)[0] for r in hub]
        assert texts == [prompt_text(r, tokenizer, INSTRUCTION)[0] for r in official]
    assert prompt_text(hub[0], char_tokenizer, INSTRUCTION)[0] == "What is $2^{10}$?" + INSTRUCTION


def test_the_paper_recipe_names_deepscaler_and_the_instruction_its_eval_files_carry() -> None:
    import yaml

    recipe = yaml.safe_load((REPO / "configs" / "paper" / "real_r1_distill_qwen_1.5b.yaml").read_text())
    assert recipe["data"]["train"]["source"] == "agentica-org/DeepScaleR-Preview-Dataset"
    assert recipe["data"]["prompts"]["suffix"] == INSTRUCTION
    aime = load_dataset_spec(DatasetSpec(source="builtin:aime24", limit=1)).records[0]
    assert aime.prompt[-1]["content"].endswith(INSTRUCTION)  # the same instruction as the shipped evaluation rows


def _with_chat_template(tokenizer):
    import copy

    templated = copy.deepcopy(tokenizer)
    templated.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    return templated


def test_no_config_or_document_names_the_development_data_folder() -> None:
    """Users have no ``../shared`` beside their checkout: no config, document, notebook or code may read it."""
    skipped = {".git", ".tox", ".venv", ".ci-venv", "build", "runs", "site", "node_modules", "__pycache__"}
    offenders = []
    for folder, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in skipped and not d.endswith(".egg-info")]
        for name in files:
            path = Path(folder, name)
            readable = path.suffix in {".yaml", ".md", ".py", ".ipynb", ".toml", ".ini", ".cfg"}
            if readable and path != Path(__file__) and "../shared" in path.read_text(errors="ignore"):
                offenders.append(str(path.relative_to(REPO)))
    assert not offenders


def test_tokenizer_builtin_is_not_a_dataset_source() -> None:
    with pytest.raises(ValueError, match="unknown built-in source 'builtin:tiny'"):
        load_dataset_spec(DatasetSpec(source=BUILTIN))
