"""The six evaluation sets of the paper, shipped in the package as ``builtin:<name>`` sources.

``builtin:math500``, ``builtin:aime24``, ``builtin:aime25``, ``builtin:amc23``, ``builtin:minerva`` and
``builtin:olympiad_bench`` are the verl-schema parquet files of the official REAL code (Red-RL/REAL,
``datasets/deepscaler/data/``), byte for byte, in ``real_lightning/assets/benchmarks/``. They load like a
local file of that schema (``prompt`` chat messages, ``reward_model.ground_truth``; Minerva and OlympiadBench
hold lists of accepted answers), so every option of :class:`~real_lightning.data.sources.DatasetSpec` but
``split`` and ``options`` applies. Their provenance and licences are in
``real_lightning/assets/benchmarks/README.md`` and :data:`BUILTIN_BENCHMARKS`. Which ``builtin:`` name is a task
and which a file: :func:`real_lightning.data.sources.is_builtin_task`.

Examples:
    >>> benchmark_path("aime24").name
    'aime24.parquet'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BENCHMARK_DIR = Path(__file__).resolve().parent.parent / "assets" / "benchmarks"
"""Where the shipped evaluation files lie."""


@dataclass(frozen=True)
class Benchmark:
    """One shipped evaluation set.

    Attributes:
        rows: problems in the file.
        origin: where the problems come from.
        licence: the licence its source states (or that none was found), to be honoured by whoever uses it.
    """

    rows: int
    origin: str
    licence: str


BUILTIN_BENCHMARKS: dict[str, Benchmark] = {
    "math500": Benchmark(
        500,
        "MATH500: the 500 test problems of MATH (Hendrycks et al., 2021) chosen in PRM800K (Lightman et al., 2023)",
        "MIT (MATH and PRM800K)",
    ),
    "aime24": Benchmark(
        30, "AIME 2024 I and II (Mathematical Association of America)", "problem texts © MAA; hub copies Apache-2.0"
    ),
    "aime25": Benchmark(
        30, "AIME 2025 I and II (Mathematical Association of America)", "problem texts © MAA; no licence stated"
    ),
    "amc23": Benchmark(
        83,
        "the 'AMC23' set of the Qwen2.5-Math evaluation: AMC 12 2022 and 2023 problems (MAA)",
        "problem texts © MAA; hub copies Apache-2.0",
    ),
    "minerva": Benchmark(
        272,
        "Minerva Math (Lewkowycz et al., 2022): problems from MIT OpenCourseWare courses",
        "CC BY-NC-SA 4.0 (MIT OpenCourseWare): non-commercial use, share alike",
    ),
    "olympiad_bench": Benchmark(
        675,
        "OlympiadBench (He et al., 2024): the English, text-only, open-ended math problems",
        "Apache-2.0 (OpenBMB/OlympiadBench)",
    ),
}
"""The shipped evaluation sets by ``builtin:`` name."""


def benchmark_path(name: str) -> Path:
    """The shipped parquet file of the evaluation set ``name`` (e.g. ``"math500"``).

    Raises:
        ValueError: ``name`` is not a shipped set (the message lists them).
        FileNotFoundError: the file is missing from the installed package.
    """
    if name not in BUILTIN_BENCHMARKS:
        raise ValueError(f"unknown evaluation set {name!r}; valid: {', '.join(BUILTIN_BENCHMARKS)}")
    path = BENCHMARK_DIR / f"{name}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"the shipped evaluation file {path} is missing; reinstall real-lightning")
    return path
