"""A shrunk shipped config run on 2 ranks under the collective tracer (``tests/pipeline/shipped_configs.py``)."""

from __future__ import annotations

from pathlib import Path

from tests.pipeline.collective_trace import first_divergence, read_trace
from tests.pipeline.launch import run_ranks
from tests.pipeline.shipped_configs import fit_args


def traced_run(
    chain: list[str],
    root: Path,
    timeout_s: float = 300,
    callbacks: list[dict] = (),
    args: list[str] = (),
    command: str = "fit",
    keep_vllm: bool = False,
) -> tuple[list[str], dict[int, list[dict]]]:
    """Run the shrunk chain (``fit``, or ``command``) on 2 traced ranks; on a failure or a hang, say where the
    collectives first differ."""
    traces = root / "collectives"
    try:
        outputs = run_ranks(
            [*fit_args(chain, root, callbacks, command, keep_vllm), *args],
            2,
            root / "logs",
            timeout_s,
            module=["tests.pipeline.collective_trace", str(traces)],
        )
    except AssertionError as error:
        found = {r: read_trace(traces / f"rank{r}.jsonl") for r in (0, 1) if (traces / f"rank{r}.jsonl").exists()}
        divergence = first_divergence(found) if len(found) == 2 else "(no traces)"
        raise AssertionError(f"{error}\n\ncollectives: {divergence or 'the same on both ranks'}") from None
    return outputs, {r: read_trace(traces / f"rank{r}.jsonl") for r in (0, 1)}
