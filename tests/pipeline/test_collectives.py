"""Every shipped config, as users compose it, on 2 processes: every rank issues the same collectives in the same
order for a whole fit that passes every callback's period twice (``tests/pipeline/shipped_configs.py``)."""

from __future__ import annotations

import pytest

from tests.pipeline.collective_trace import first_divergence, from_sampling
from tests.pipeline.shipped_configs import EVAL, PERIOD, QUICKSTART, RUNS, composed, uses_fsdp
from tests.pipeline.traced_runs import traced_run

pytestmark = pytest.mark.distributed


@pytest.mark.parametrize("chain", [chain for _, chain in RUNS], ids=[name for name, _ in RUNS])
def test_every_rank_issues_the_same_collectives(tmp_path, chain) -> None:
    outputs, traces = traced_run(chain, tmp_path)
    assert first_divergence(traces) is None, first_divergence(traces)
    assert len(traces[0]) > 10  # the tracer saw the run's collectives
    inside = from_sampling(traces[0], engine_may_gather=uses_fsdp(chain))
    assert not inside, [(r["op"], r["stack"][:4]) for r in inside[:3]]  # sampling and grading issue none
    # every periodic callback of the chain acted at both periods, and validation ran at both
    callbacks = [c["class_path"].rsplit(".", 1)[-1] for c in composed(chain)["trainer"].get("callbacks", [])]
    run = next(tmp_path.glob("run/version_*"))
    if "ModelCheckpoint" in callbacks:
        saved = sorted(p.name for p in (run / "checkpoints").iterdir())  # save_top_k 1: the newest is kept
        assert "last.ckpt" in saved and any(f"step={2 * PERIOD}" in name for name in saved), saved
    dynamic = composed(chain)["data"].get("schedule", {}).get("dynamic_sampling")
    if "GradientWeightMonitor" in callbacks and not dynamic:  # dynamic sampling may leave a step without rollouts
        records = sorted(p.name for p in (run / "gradient_weights").iterdir())
        expected = [f"step_{s:07d}_rank{r}.parquet" for s in (PERIOD, 2 * PERIOD) for r in (0, 1)]
        assert records == sorted(expected), records
    assert outputs[0].count("Validate metric") >= 1 or "Pass@1 before" in outputs[0]
    assert "Pass@1 before" in outputs[0] or "validate_before_fit" not in str(composed(chain))


@pytest.mark.xdist_group("stall")  # the two stall-watchdog tests run one after the other (pytest -n 2 --dist loadgroup)
def test_a_collective_on_rank_0_alone_is_caught_and_named(tmp_path) -> None:
    """The bug class this suite exists for, made on purpose (rank 0 alone reads ``trainer.log_dir``, a broadcast,
    at step 2): the run does not hang — the stall watchdog ends it — and the failure names the first collective
    where the ranks differ and the line that issued it."""
    bug = {"class_path": "tests.pipeline.callbacks_for_tests.RankZeroLogDir", "init_args": {"step": 2}}
    with pytest.raises(AssertionError) as failure:
        traced_run(QUICKSTART, tmp_path, 120, [bug], ["--health.stall_timeout_s", "20"])
    message = str(failure.value)
    assert "the ranks' collectives differ at call" in message, message
    assert "rank 0: broadcast_object_list" in message and "callbacks_for_tests.py" in message, message


def test_the_paper_evaluation_issues_the_same_collectives(tmp_path) -> None:
    """``real-lightning validate -c configs/paper/eval.yaml`` on 2 processes: six benchmarks × 16 samples, the
    prompts spread over the ranks, Pass@k gathered — the same collectives on both ranks, the report written."""
    outputs, traces = traced_run(EVAL, tmp_path, command="validate")
    assert first_divergence(traces) is None, first_divergence(traces)
    assert len(traces[0]) > 10
    report = next(tmp_path.glob("run/version_*/evaluation/latest.md")).read_text()
    assert all(name in report for name in ("aime24", "aime25", "math500", "amc23", "minerva", "olympiad_bench"))
    assert "val/average/pass@16" in outputs[0]


def test_a_collective_inside_the_collector_is_flagged() -> None:
    """What dynamic sampling's all-reduce looked like when it ran inside the collector's sampling loop."""
    inside = {
        "op": "all_reduce",
        "stack": [
            "real_lightning/utils/distributed.py:33 all_reduce",
            "real_lightning/rollout/collector.py:177 _collect",
            "real_lightning/module.py:243 training_step",
        ],
    }
    at_boundary = {
        "op": "all_reduce",
        "stack": [inside["stack"][0], "real_lightning/module.py:250 _sample_rollout_batch"],
    }
    checkpoint = {"op": "all_gather_object", "stack": ["real_lightning/rollout/collector.py:290 state_dict"]}
    engine = {"op": "all_gather_into_tensor", "stack": ["real_lightning/rollout/decode.py:57 _any_rank"]}
    assert from_sampling([inside, at_boundary, checkpoint, engine], engine_may_gather=False) == [inside, engine]
    assert from_sampling([inside, at_boundary, checkpoint, engine], engine_may_gather=True) == [inside]
