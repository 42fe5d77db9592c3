"""VLLMServerEngine against fake vLLM servers (tests/rollout/fake_vllm_server.py): requests and their seeds, groups
spread over servers, both weight transfers (calls, order, payloads), and every way a server can fail."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from real_lightning.policy.loading import load_tokenizer
from real_lightning.rollout.requests import derive_seed
from real_lightning.rollout.server import ServerError, VLLMServerEngine
from real_lightning.rollout.server.transfer import NCCLTransfer
from tests.rollout.fake_vllm_server import FakeVLLMServer

TIED = SimpleNamespace(config=SimpleNamespace(tie_word_embeddings=True))
WEIGHTS = [
    ("model.embed_tokens.weight", torch.arange(12.0).reshape(4, 3)),
    ("model.norm.weight", torch.ones(3, dtype=torch.bfloat16)),
]
SYNC = ["/pause", "/reset_prefix_cache", "/update_weight_version", "/resume"]


@pytest.fixture
def servers():
    made = [FakeVLLMServer(), FakeVLLMServer()]
    yield made
    for server in made:
        server.stop()


def engine_on(servers, tmp_path: Path, **options) -> VLLMServerEngine:
    options = {"max_new_tokens": 3, "weights_dir": str(tmp_path / "weights"), "retries": 0, **options}
    engine = VLLMServerEngine([s.url for s in servers], **options)
    engine.setup(TIED, load_tokenizer("builtin:tiny"))
    return engine


def test_groups_are_spread_over_the_servers_with_their_own_seeds(servers, tmp_path) -> None:
    engine = engine_on(servers, tmp_path, temperature=0.7, top_k=5)
    for server in servers:  # every request is still outstanding when the last one is placed
        server.delay_s = 0.3
    prompts = [[1, 2], [3, 4, 5], [6], [7, 8]]
    generation = engine.generate(prompts, n=2, seed=11)
    bodies = [body for s in servers for _, route, _, body in s.calls if route == "/v1/completions"]
    assert len(bodies) == 4 and all(len(s.routes()) >= 2 for s in servers)  # both servers sampled
    assert sorted(b["seed"] for b in bodies) == sorted(derive_seed(11, p) % 2**31 for p in range(4))
    body = bodies[0]
    assert body["model"] == "tiny" and body["n"] == 2 and body["max_tokens"] == 3 and body["logprobs"] == 0
    assert body["return_token_ids"] and body["temperature"] == 0.7 and body["top_k"] == 5
    assert engine.served == {servers[0].url: 2, servers[1].url: 2}
    # rows p·n + j in prompt order, whichever server answered; choices sorted by index
    for p in range(len(prompts)):
        seed = derive_seed(11, p) % 2**31
        for j in range(2):
            row = generation.input_ids[p * 2 + j, generation.prompt_length :]
            assert row.tolist() == [seed % 7 + j + 3 + k for k in range(3)]
    assert generation.truncated.all() and generation.response_mask.all()
    assert torch.allclose(generation.behaviour_logprobs, torch.tensor([[-0.1, -0.2, -0.3]] * 8))


def test_filesystem_transfer_pauses_loads_tags_and_resumes_every_server(servers, tmp_path) -> None:
    engine = engine_on(servers, tmp_path)
    engine.update_weights(iter(WEIGHTS), version=3)
    folder = tmp_path / "weights" / "v3"
    for server in servers:
        asked_for_the_model = ["/v1/models"] if server is servers[0] else []  # the first server names it
        assert server.routes() == [*asked_for_the_model, "/pause", "/collective_rpc", *SYNC[1:]]
        pause = next(q for _, r, q, _ in server.calls if r == "/pause")
        assert pause == {"mode": "wait"}
        rpc = next(b for _, r, _, b in server.calls if r == "/collective_rpc")
        assert rpc == {"method": "reload_weights", "kwargs": {"weights_path": str(folder)}}
        assert server.version == "3"
    loaded = load_file(str(folder / "model-00000.safetensors"))
    assert set(loaded) == {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}  # tied head sent
    assert torch.equal(loaded["lm_head.weight"], WEIGHTS[0][1]) and loaded["model.norm.weight"].dtype == torch.bfloat16
    assert sorted(json.loads((folder / "READY").read_text())["tensors"]) == sorted(loaded)
    engine.update_weights(iter(WEIGHTS), version=3)  # the same version: nothing sent
    assert servers[0].routes().count("/collective_rpc") == 1
    engine.update_weights(iter(WEIGHTS), version=5)
    assert not folder.exists() and (tmp_path / "weights" / "v5" / "READY").exists()  # the old version removed
    engine.teardown()
    assert not (tmp_path / "weights" / "v5").exists()


def test_filesystem_shards_hold_at_most_the_limit(tmp_path) -> None:
    from real_lightning.rollout.server.transfer import FilesystemTransfer

    big = [(f"layer{i}.weight", torch.full((256,), float(i))) for i in range(5)]  # 1 KiB each
    folder = FilesystemTransfer(tmp_path, shard_bytes=2048).write(iter(big), version=0)
    shards = sorted(folder.glob("*.safetensors"))
    assert [len(load_file(str(s))) for s in shards] == [2, 2, 1]
    assert torch.equal(load_file(str(shards[2]))["layer4.weight"], big[4][1])


class Recorder:
    """The trainer's NCCL endpoint in tests: records what it broadcasts."""

    def __init__(self) -> None:
        self.sent: list[torch.Tensor] = []
        self.closed = False

    def broadcast(self, tensor: torch.Tensor) -> None:
        self.sent.append(tensor.clone())

    def close(self) -> None:
        self.closed = True


def test_nccl_transfer_follows_vllms_protocol(tmp_path) -> None:
    servers = [FakeVLLMServer(world_size=2), FakeVLLMServer(world_size=1)]
    try:
        engine = engine_on(servers, tmp_path, transfer="nccl", nccl_address="10.0.0.5", nccl_port=29777)
        recorder = Recorder()
        connected = []
        engine._transfer = NCCLTransfer("10.0.0.5", 29777, connect=lambda *a: connected.append(a) or recorder)
        engine.update_weights(iter(WEIGHTS), version=7)
        engine.update_weights(iter(WEIGHTS), version=8)
        assert connected == [("10.0.0.5", 29777, 4)]  # the trainer, then 2 + 1 workers: once
        for server, offset in zip(servers, (1, 3), strict=True):
            routes = [r for r in server.routes() if r != "/v1/models"]
            one_version = ["/pause", "/start_weight_update", "/update_weights", "/finish_weight_update", *SYNC[1:]]
            assert routes == ["/get_world_size", "/init_weight_transfer_engine", *one_version, *one_version]
            init = next(b for _, r, _, b in server.calls if r == "/init_weight_transfer_engine")["init_info"]
            assert init == {"master_address": "10.0.0.5", "master_port": 29777, "rank_offset": offset,
                            "world_size": 4, "packed": False}  # fmt: skip
            update = next(b for _, r, _, b in server.calls if r == "/update_weights")["update_info"]
            assert update == {
                "names": ["model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"],
                "dtype_names": ["float32", "float32", "bfloat16"],
                "shapes": [[4, 3], [4, 3], [3]],
            }
            finishes = [b for _, r, _, b in server.calls if r == "/finish_weight_update"]
            assert finishes == [{"weight_version": "7"}, {"weight_version": "8"}]
        assert len(recorder.sent) == 6 and torch.equal(recorder.sent[1], WEIGHTS[0][1])
        engine.teardown()
        assert recorder.closed and all(s.routes()[-1] == "/shutdown_weight_transfer_engine" for s in servers)
    finally:
        for server in servers:
            server.stop()


def test_a_rank_that_does_not_send_waits_for_the_servers_version(servers, tmp_path) -> None:
    engine = engine_on(servers, tmp_path, generate_timeout_s=5.0)
    engine._sender = False
    walked = []
    engine.update_weights((walked.append(name) or (name, t) for name, t in WEIGHTS), version=4)
    assert walked == [name for name, _ in WEIGHTS]  # every tensor walked (an FSDP2 gather on every rank)
    assert "/collective_rpc" not in servers[0].routes()  # but nothing sent

    def rank_zero_sends() -> None:
        time.sleep(0.3)
        for server in servers:
            server.version = "4"

    threading.Thread(target=rank_zero_sends).start()
    start = time.monotonic()
    engine.generate([[1, 2]], n=1, seed=0)
    assert time.monotonic() - start >= 0.25
    engine.generate_timeout_s = 0.5
    engine.update_weights(iter(WEIGHTS), version=6)
    with pytest.raises(ServerError, match=r"still holds weight version 4 after 0.5 s; rank 0 sends version 6"):
        engine.generate([[1, 2]], n=1, seed=0)


def test_the_sending_rank_refuses_servers_that_lost_its_weights(servers, tmp_path) -> None:
    engine = engine_on(servers, tmp_path)
    engine.update_weights(iter(WEIGHTS), version=2)
    engine.generate([[1]], n=1, seed=0)
    servers[1].version = None  # it restarted
    with pytest.raises(ServerError, match=rf"{servers[1].url} holds weight version None, not 2 which this run pushed"):
        engine.generate([[1]], n=1, seed=0)


def test_an_engine_lent_to_a_producer_does_not_push_weights(servers, tmp_path) -> None:
    engine = engine_on(servers, tmp_path)
    producer = engine.producer_engine()
    assert producer.urls == engine.urls and producer._transfer is None and producer.policy_version == -1
    with pytest.raises(ValueError, match="give validation an engine of its own"):
        engine.update_weights(iter(WEIGHTS), version=0)
    producer.setup(TIED, load_tokenizer("builtin:tiny"))
    producer.update_weights(iter(WEIGHTS), version=0)  # the producer's copy pushes
    assert all(s.version == "0" for s in servers)


def test_a_server_that_is_down_slow_or_wrong_fails_the_run_naming_it(servers, tmp_path) -> None:
    engine = engine_on(servers, tmp_path, generate_timeout_s=0.5)
    servers[1].delay_s = 2.0
    with pytest.raises(ServerError, match=rf"{servers[1].url} failed POST /v1/completions \(2 samples of a "
                                          r"1-token prompt\): no answer within 0.5 s"):  # fmt: skip
        engine.generate([[1], [2]], n=2, seed=0)
    servers[1].delay_s, servers[0].wrong = 0.0, True
    with pytest.raises(ServerError, match=rf"{servers[0].url} answered POST /v1/completions .* wrongly: a choice "
                                          "lacks token_ids"):  # fmt: skip
        engine.generate([[1], [2]], n=2, seed=0)
    servers[0].wrong = False
    down = servers[0].url
    servers[0].stop()
    with pytest.raises(ServerError, match=rf"{down} failed POST /pause \(pause before the weights of version 1\): "
                                          "no answer"):  # fmt: skip
        engine.update_weights(iter(WEIGHTS), version=1)
    assert servers[1].routes()[-1] == "/resume"  # the server still up serves again


def test_a_5xx_answer_is_retried_and_a_4xx_is_not(servers, tmp_path) -> None:
    engine = engine_on(servers[:1], tmp_path, retries=2)
    for client in engine.clients:
        client.backoff_s = 0.01
    servers[0].fail, servers[0].failures = {"/v1/completions": 503}, 2
    assert len(engine.generate([[1]], n=1, seed=0)) == 1  # third try answers
    servers[0].fail, servers[0].failures = {"/v1/completions": 400}, 5
    with pytest.raises(ServerError, match="HTTP 400"):
        engine.generate([[1]], n=1, seed=0)
    assert servers[0].failures == 4  # tried once


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="at least one server URL"):
        VLLMServerEngine([])
    with pytest.raises(ValueError, match="must look like http://host:port"):
        VLLMServerEngine(["localhost:8000"])
    with pytest.raises(ValueError, match="transfer must be filesystem or nccl"):
        VLLMServerEngine(["http://127.0.0.1:8000"], transfer="ipc")
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        VLLMServerEngine(["http://127.0.0.1:8000"], temperature=-1)


def test_a_server_that_never_comes_up_fails_setup_naming_it() -> None:
    engine = VLLMServerEngine(["http://127.0.0.1:9"], startup_timeout_s=1.0)
    with pytest.raises(ServerError, match=r"vLLM server http://127.0.0.1:9 did not come up within 1 s"):
        engine.setup(TIED, load_tokenizer("builtin:tiny"))
