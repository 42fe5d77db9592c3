"""Dataset sources: the built-in task, local parquet/jsonl/json files, Hugging Face datasets by name.

Two row schemas load:

- verl / DeepScaleR: ``prompt`` = chat messages ``[{"role", "content"}, ...]``, ground truth at
  ``reward_model.ground_truth``;
- plain: ``problem`` (text) and ``answer``.

A ground truth is a text or a number, or a list of accepted answers (the verl files of Minerva and
OlympiadBench; any of them scores 1): a list becomes a tuple of its usable answers (one: that answer).
Rows with an empty or unusable ground truth (a list without a usable answer too) are skipped and
counted (``on_bad_row="skip"``) or raise an error naming the row (``"error"``). Rows repeating an earlier
row's prompt and ground truth are kept and counted in a warning; a file that is not UTF-8 raises an error
naming the file, line and byte offset.

Columns named by ``reward_fields`` go with each prompt to the reward function (as keyword arguments): every
row must have them, with JSON-like values (an error names the row and the field otherwise).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from real_lightning.data.arithmetic import ArithmeticTask
from real_lightning.data.benchmarks import BUILTIN_BENCHMARKS, benchmark_path
from real_lightning.data.countdown import CountdownTask
from real_lightning.data.records import GroundTruth, PromptRecord
from real_lightning.utils.registry import Registry

log = logging.getLogger(__name__)

BUILTIN_TASKS: Registry[type[ArithmeticTask | CountdownTask]] = Registry(
    "built-in task", {"arithmetic": ArithmeticTask, "countdown": CountdownTask}
)
BUILTIN_REWARDS = {"arithmetic": "math", "countdown": "countdown"}
"""The registered reward (``data.verifier.reward``) that grades each built-in task."""


def is_builtin_task(source: str) -> bool:
    """Whether ``source`` names a generated built-in task (``builtin:arithmetic``, ``builtin:countdown``), as
    opposed to a shipped evaluation file (``builtin:math500``, ...) or a source of the user's.

    Examples:
        >>> is_builtin_task("builtin:countdown"), is_builtin_task("builtin:math500")
        (True, False)
    """
    return source.startswith("builtin:") and source.removeprefix("builtin:") in BUILTIN_TASKS


def builtin_sources() -> list[str]:
    """Every ``builtin:`` dataset source: the tasks, then the shipped evaluation files."""
    return [f"builtin:{name}" for name in (*BUILTIN_TASKS, *BUILTIN_BENCHMARKS)]


FILE_SUFFIXES = (".parquet", ".jsonl", ".json")
SCHEMAS = {"verl": ("prompt", "reward_model.ground_truth"), "plain": ("problem", "answer")}


@dataclass
class DatasetSpec:
    """Where a dataset comes from and how to read it.

    Args:
        source: ``builtin:arithmetic`` or ``builtin:countdown`` (generated tasks); one of the six shipped
            evaluation sets ``builtin:math500``, ``builtin:aime24``, ``builtin:aime25``, ``builtin:amc23``,
            ``builtin:minerva``, ``builtin:olympiad_bench`` (verl parquet files); a local ``.parquet`` /
            ``.jsonl`` / ``.json`` file; a Hugging Face dataset name (needs the network or a local cache) or a local
            dataset directory.
        split: split of a built-in task (``train``/``test``) or of a hub dataset (files have none).
        prompt_field: column holding the prompt (default: ``prompt`` for verl rows, ``problem`` for plain).
        answer_field: column holding the ground truth, dotted for nested fields (default:
            ``reward_model.ground_truth`` for verl rows, ``answer`` for plain).
        limit: keep only the first ``limit`` usable rows.
        options: keyword arguments of a built-in task (e.g. ``{digits: 2}``).
        on_bad_row: ``skip`` (count and warn) or ``error`` for rows with an empty or unusable ground truth.
        reward_fields: columns of each row passed to the reward function (``data.verifier.reward``) as keyword
            arguments, e.g. ``[tolerance]`` or ``[test_cases]``; the function must take them (a parameter of each
            name, or ``**row``). Every row must have them, with JSON-like values (text, numbers, booleans, null,
            lists and objects of them). Built-in tasks have none.
    """

    source: str
    split: str = "train"
    prompt_field: str | None = None
    answer_field: str | None = None
    limit: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    on_bad_row: Literal["skip", "error"] = "skip"
    reward_fields: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.reward_fields = list(self.reward_fields)
        for name in self.reward_fields:
            if not isinstance(name, str) or not name:
                raise ValueError(f"reward_fields holds column names, got {name!r}")
        if repeated := sorted({n for n in self.reward_fields if self.reward_fields.count(n) > 1}):
            raise ValueError(f"reward_fields names {repeated} more than once")


@dataclass
class LoadedDataset:
    """Records of one dataset, how many rows were skipped (with the first few row indices) and how many
    repeat an earlier row's prompt and ground truth (kept, counted in a warning)."""

    name: str
    records: list[PromptRecord]
    skipped: int = 0
    skipped_rows: list[int] = field(default_factory=list)
    duplicates: int = 0


def _read_file(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"dataset file {path} does not exist")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = _read_utf8(path)
    if path.suffix == ".jsonl":
        rows = []
        for line_number, line in enumerate(text.split("\n"), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}: line {line_number} is not valid JSON: {err}") from err
        return rows
    data = json.loads(text)
    if isinstance(data, dict) and "data" in data:  # {"data": [...]} wrapper
        data = data["data"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of rows (or {{'data': [...]}}), got {type(data).__name__}")
    return data


def _read_utf8(path: Path) -> str:
    """The file's text; a byte that is not UTF-8 raises ``ValueError`` naming the file, line and byte offset."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ValueError(
            f"{path}: line {line} is not valid UTF-8 (byte offset {err.start}: {raw[err.start : err.end]!r}); "
            "re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
        ) from err


def _read_hub(name: str, split: str) -> list[dict[str, Any]]:
    import datasets

    return list(datasets.load_dataset(name, split=split))


def _get(row: dict[str, Any], dotted: str) -> Any:
    value: Any = row
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


_MISSING = object()


def _detect_schema(first: dict[str, Any], spec: DatasetSpec, name: str) -> tuple[str, str]:
    if spec.prompt_field and spec.answer_field:
        fields = (spec.prompt_field, spec.answer_field)
    else:
        kind = "verl" if "prompt" in first and "reward_model" in first else "plain"
        default_prompt, default_answer = SCHEMAS[kind]
        fields = (spec.prompt_field or default_prompt, spec.answer_field or default_answer)
    for column in fields:
        if _get(first, column) is _MISSING:
            raise ValueError(
                f"{name}: column {column!r} not found (columns: {', '.join(sorted(first))}); expected the verl "
                "schema (prompt + reward_model.ground_truth) or the plain one (problem + answer), or set "
                "prompt_field / answer_field"
            )
    return fields


def _scalar_truth(value: Any) -> str | None:
    """One answer as text, or None when it is empty or unusable."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value.strip() or None
    return None


def _ground_truth(value: Any) -> GroundTruth | None:
    """The ground truth: a text, or the tuple of the usable accepted answers of a list (one: its text); None
    when it is empty or unusable (a list with no usable answer included)."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ndarray":
        answers = tuple(dict.fromkeys(a for a in map(_scalar_truth, list(value)) if a is not None))
        if not answers:
            return None
        return answers[0] if len(answers) == 1 else answers
    return _scalar_truth(value)


def _prompt(value: Any) -> str | tuple[dict[str, str], ...] | None:
    if isinstance(value, str):
        return value if value.strip() else None
    if (
        isinstance(value, (list, tuple))
        and value
        and all(
            isinstance(m, dict) and isinstance(m.get("content"), str) and isinstance(m.get("role"), str) for m in value
        )
    ):
        return tuple({"role": m["role"], "content": m["content"]} for m in value)
    return None


def _json_like(value: Any) -> bool:
    """Whether ``value`` is text, a number, a boolean, ``None``, or a list or string-keyed dict of such values."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_json_like(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_like(v) for k, v in value.items())
    return False


def _row_fields(row: dict[str, Any], fields: list[str], name: str, index: int) -> dict[str, Any]:
    """The row's ``fields`` (the source's ``reward_fields``); a missing one or a value that is not JSON-like
    raises ``ValueError`` naming the source, the row and the field."""
    values = {}
    for field_name in fields:
        if field_name not in row:
            raise ValueError(
                f"{name}: row {index} has no field {field_name!r}, which reward_fields names (its columns: "
                f"{', '.join(sorted(map(str, row)))}); every row needs the fields the reward function takes"
            )
        value = row[field_name]
        if not _json_like(value):
            raise ValueError(
                f"{name}: row {index} field {field_name!r} holds a {type(value).__name__} ({_short(value)}); a "
                "field for the reward function must be JSON-like (text, numbers, booleans, null, lists and objects "
                "of them), as it is sent to the verifier's worker processes"
            )
        values[field_name] = value
    return values


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def records_from_rows(rows: Iterable[dict[str, Any]], spec: DatasetSpec, name: str) -> LoadedDataset:
    """Validate rows and turn them into records (see :class:`DatasetSpec` for schemas and bad rows)."""
    rows = list(rows)
    if not rows:
        raise ValueError(f"{name}: the dataset has no rows")
    prompt_field, answer_field = _detect_schema(rows[0], spec, name)
    loaded = LoadedDataset(name=name, records=[])
    for index, row in enumerate(rows):
        prompt, truth = _prompt(_get(row, prompt_field)), _ground_truth(_get(row, answer_field))
        if prompt is None or truth is None:
            bad_field = prompt_field if prompt is None else answer_field
            if spec.on_bad_row == "error":
                raise ValueError(
                    f"{name}: row {index} has an empty or unusable {bad_field!r}: {row.get(bad_field.split('.')[0])!r}"
                )
            loaded.skipped += 1
            if len(loaded.skipped_rows) < 10:
                loaded.skipped_rows.append(index)
            continue
        source = row.get("data_source") if isinstance(row.get("data_source"), str) and row["data_source"] else name
        fields = _row_fields(row, spec.reward_fields, name, index)
        loaded.records.append(
            PromptRecord(prompt=prompt, ground_truth=truth, data_source=source, index=index, row_fields=fields)
        )
        if spec.limit is not None and len(loaded.records) >= spec.limit:
            break
    if loaded.skipped:
        log.warning(
            "%s: skipped %d rows with an empty or unusable prompt/ground truth (first: %s)",
            name,
            loaded.skipped,
            loaded.skipped_rows,
        )
    _count_duplicates(loaded)
    if not loaded.records:
        raise ValueError(f"{name}: no usable rows ({loaded.skipped} skipped)")
    return loaded


def _count_duplicates(loaded: LoadedDataset) -> None:
    """Count the records whose prompt and ground truth repeat an earlier one's, and warn with the first pair.

    Duplicates are kept (a repeated row is sampled more often); the warning makes them visible.
    """
    first_seen: dict[tuple[object, GroundTruth, str], int] = {}
    example: tuple[int, int] | None = None
    for record in loaded.records:
        prompt = record.prompt if isinstance(record.prompt, str) else tuple(tuple(m.items()) for m in record.prompt)
        fields = json.dumps(record.row_fields, sort_keys=True) if record.row_fields else ""
        earlier = first_seen.setdefault((prompt, record.ground_truth, fields), record.index)
        if earlier != record.index:
            loaded.duplicates += 1
            example = example or (record.index, earlier)
    if example is not None:
        log.warning(
            "%s: %d duplicate rows (same prompt and ground truth; first: row %d repeats row %d); they are kept",
            loaded.name,
            loaded.duplicates,
            *example,
        )


def load_dataset_spec(spec: DatasetSpec, name: str | None = None) -> LoadedDataset:
    """Load the records a :class:`DatasetSpec` names."""
    name = name or spec.source
    builtin = spec.source.removeprefix("builtin:") if spec.source.startswith("builtin:") else None
    if builtin is not None and builtin not in BUILTIN_TASKS and builtin not in BUILTIN_BENCHMARKS:
        raise ValueError(f"unknown built-in source {spec.source!r}; valid: {', '.join(builtin_sources())}")
    if builtin in BUILTIN_BENCHMARKS:  # a shipped evaluation file
        if spec.options:
            raise ValueError(f"{name}: options are for the built-in tasks, not the evaluation file {spec.source}")
        return records_from_rows(_read_file(benchmark_path(builtin)), spec, name)
    if builtin is not None:
        task = BUILTIN_TASKS[builtin](**spec.options)
        if spec.reward_fields:
            raise ValueError(
                f"{name}: built-in tasks have no row fields for the reward function, got reward_fields "
                f"{spec.reward_fields}"
            )
        if spec.split not in ("train", "test"):
            raise ValueError(f"{name}: built-in tasks have splits 'train' and 'test', got {spec.split!r}")
        records = task.records(spec.split)
        return LoadedDataset(name=name, records=records[: spec.limit] if spec.limit else records)
    path = Path(spec.source).expanduser()
    if path.suffix in FILE_SUFFIXES:
        return records_from_rows(_read_file(path), spec, str(path))
    if path.is_file():
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(FILE_SUFFIXES)}")
    # a hub name, or a local dataset directory (data files or a saved hub snapshot): the same loader
    return records_from_rows(_read_hub(str(path) if path.is_dir() else spec.source, spec.split), spec, name)
