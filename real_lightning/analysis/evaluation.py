"""Evaluation tables: per-benchmark results of a validation, laid out like the REAL paper's Table 1.

:class:`~real_lightning.callbacks.PassAtKLogger` fills one :class:`BenchmarkResult` per validation set and
:func:`write_tables` writes them (rank 0) as ``evaluation/step_<step>.md`` / ``.csv`` and ``latest.md`` /
``latest.csv`` in the run directory. The Markdown file starts with a one-row table of avg@n in percent per
benchmark and their unweighted average (the paper's layout, to paste next to its rows), then the details:
prompts, samples, avg@n, unbiased pass@k, mean response length (tokens) and truncation rate.

Examples:
    >>> a = BenchmarkResult("aime24", prompts=30, samples=16, pass_at={1: 0.3, 16: 0.6}, length=5210.5, truncated=0.04)
    >>> b = BenchmarkResult("math500", prompts=500, samples=16, pass_at={1: 0.8, 16: 0.9}, length=3001.0, truncated=0)
    >>> print(*markdown_table([a, b], label="step 0").splitlines()[:3], sep=chr(10))
    | model | aime24 | math500 | avg. |
    |---|---|---|---|
    | step 0 | 30.0 | 80.0 | 55.0 |
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BenchmarkResult:
    """One validation set's results.

    Attributes:
        name: the validation set's name (``data.val`` key).
        prompts: problems evaluated (all ranks).
        samples: n, responses per problem.
        pass_at: unbiased pass@k by k (pass@1 = avg@n: the mean correctness of the n samples).
        length: mean response length, tokens.
        truncated: fraction of responses cut at the length limit.
    """

    name: str
    prompts: int
    samples: int
    pass_at: dict[int, float]
    length: float
    truncated: float


def average(results: list[BenchmarkResult]) -> BenchmarkResult:
    """The unweighted mean over benchmarks (the paper's "Avg."), of every k all of them report."""
    ks = sorted(set.intersection(*(set(r.pass_at) for r in results)))
    n = len(results)
    return BenchmarkResult(
        name="average",
        prompts=sum(r.prompts for r in results),
        samples=min(r.samples for r in results),
        pass_at={k: sum(r.pass_at[k] for r in results) / n for k in ks},
        length=sum(r.length for r in results) / n,
        truncated=sum(r.truncated for r in results) / n,
    )


def with_average(results: list[BenchmarkResult]) -> list[BenchmarkResult]:
    """The results, then their :func:`average` when there are several."""
    return [*results, average(results)] if len(results) > 1 else list(results)


def _ks(results: list[BenchmarkResult]) -> list[int]:
    return sorted({k for r in results for k in r.pass_at})


def markdown_table(results: list[BenchmarkResult], label: str) -> str:
    """Table 1 row (avg@n in %, one column per benchmark, then their average) and the detail table."""
    rows = with_average(results)
    names = [r.name for r in results] + (["avg."] if len(rows) > len(results) else [])
    lines = ["| model | " + " | ".join(names) + " |", "|" + "---|" * (len(rows) + 1)]
    lines.append(f"| {label} | " + " | ".join(f"{100 * r.pass_at[1]:.1f}" for r in rows) + " |")
    ks = _ks(results)
    n = results[0].samples
    names = [f"avg@{n} %" if k == 1 else f"pass@{k} %" for k in ks]
    lines += ["", f"| benchmark | prompts | samples | {' | '.join(names)} | mean response tokens | truncated |"]
    lines.append("|" + "---|" * (5 + len(ks)))
    for r in rows:
        values = " | ".join(f"{100 * r.pass_at[k]:.2f}" if k in r.pass_at else "–" for k in ks)
        lines.append(f"| {r.name} | {r.prompts} | {r.samples} | {values} | {r.length:.1f} | {100 * r.truncated:.2f}% |")
    return "\n".join(lines) + "\n"


def csv_table(results: list[BenchmarkResult]) -> str:
    """One CSV row per benchmark and the average: fractions, not percent."""
    rows, ks = with_average(results), _ks(results)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = ["benchmark", "prompts", "samples", *(f"pass@{k}" for k in ks), "mean_response_tokens", "truncation_rate"]
    writer.writerow(header)
    for r in rows:
        writer.writerow([r.name, r.prompts, r.samples, *(r.pass_at.get(k, "") for k in ks), r.length, r.truncated])
    return out.getvalue()


def write_tables(results: list[BenchmarkResult], directory: str | Path, step: int, label: str | None = None) -> Path:
    """Write ``step_<step>.md/.csv`` and ``latest.md/.csv`` under ``directory``; returns the Markdown path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    markdown, table = markdown_table(results, label or f"step {step}"), csv_table(results)
    for stem in (f"step_{step}", "latest"):
        (directory / f"{stem}.md").write_text(markdown)
        (directory / f"{stem}.csv").write_text(table)
    return directory / f"step_{step}.md"
