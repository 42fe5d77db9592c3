"""``VLLMServerEngine``: rollouts from a fleet of ordinary ``vllm serve`` processes, fed new weights by the trainer.

The servers run apart from training (their own GPUs or nodes). The engine sends whole prompt groups to them as
``POST /v1/completions`` (token ids in, token ids and the sampled tokens' log-probs out; one request per prompt
with ``n`` samples and the prompt's own seed), spreads the groups by outstanding tokens, and pushes each policy
version through a :mod:`~real_lightning.rollout.server.transfer` (filesystem or NCCL) from one rank. Every call has
a timeout and retries; a server that is down, slow or answers wrongly fails the run with an error naming its URL
and what it was asked.

Start each server with ``VLLM_SERVER_DEV_MODE=1`` (the pause, reload and version routes) and
``--logprobs-mode processed_logprobs`` (log-probs after temperature: the behaviour log-probs); see the README's
*Scale out* section for launch recipes.
"""

from __future__ import annotations

import copy
import os
import tempfile
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from real_lightning.policy.weights import with_tied_head
from real_lightning.rollout.engine import Generation, SamplingOptions, engine_sampling
from real_lightning.rollout.requests import derive_seed
from real_lightning.rollout.server.client import ServerClient, ServerError, wait_until_up
from real_lightning.rollout.server.transfer import (
    FilesystemTransfer,
    NCCLTransfer,
    WeightTransfer,
    server_version,
    sync_weights,
)


class VLLMServerEngine:
    """Sample n responses per prompt from ``vllm serve`` processes, with the semantics of the other engines.

    Args:
        urls: the servers, ``http://host:port`` each (one ``vllm serve`` per URL; a server may span several GPUs).
        max_new_tokens: as :class:`~real_lightning.rollout.HFEngine`'s.
        temperature: as :class:`~real_lightning.rollout.HFEngine`'s.
        top_p: as :class:`~real_lightning.rollout.HFEngine`'s.
        top_k: as :class:`~real_lightning.rollout.HFEngine`'s.
        stop: as :class:`~real_lightning.rollout.HFEngine`'s.
        ignore_eos: as :class:`~real_lightning.rollout.HFEngine`'s.
        transfer: how weights reach the servers: ``filesystem`` (safetensors in ``weights_dir``, reloaded by the
            servers; CPU and shared filesystems) or ``nccl`` (vLLM's NCCL weight transfer; GPUs, untested here).
        weights_dir: ``filesystem``: a directory the trainer and every server see (default: a new folder under
            ``/dev/shm`` when it exists, else the temporary directory: right for servers on this machine only).
        nccl_address: ``nccl``: the address of the rendezvous of the trainer (rank 0) and the servers' workers.
        nccl_port: ``nccl``: the port of that rendezvous.
        model: the served model's name (default: the first one ``GET /v1/models`` lists).
        timeout_s: seconds any call but a generation may take; also the wait for another rank's weight sync.
        generate_timeout_s: seconds one prompt's generation may take.
        retries: further tries after a refused connection or a 5xx answer.
        startup_timeout_s: seconds :meth:`setup` waits for every server to answer ``GET /health``.
        max_concurrent: requests in flight at once, over all servers.
    """

    def __init__(
        self,
        urls: list[str],
        max_new_tokens: int = 512,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        stop: list[str] | None = None,
        ignore_eos: bool = False,
        transfer: Literal["filesystem", "nccl"] = "filesystem",
        weights_dir: str | None = None,
        nccl_address: str = "127.0.0.1",
        nccl_port: int = 29600,
        model: str | None = None,
        timeout_s: float = 120.0,
        generate_timeout_s: float = 1800.0,
        retries: int = 2,
        startup_timeout_s: float = 600.0,
        max_concurrent: int = 256,
    ) -> None:
        SamplingOptions(max_new_tokens, temperature, top_p, top_k, tuple(stop or ()), ignore_eos)  # validated
        if not urls:
            raise ValueError("VLLMServerEngine needs at least one server URL (urls: [http://host:port, ...])")
        if transfer not in ("filesystem", "nccl"):
            raise ValueError(f"VLLMServerEngine.transfer must be filesystem or nccl, got {transfer!r}")
        if max_concurrent < 1:
            raise ValueError(f"VLLMServerEngine.max_concurrent must be >= 1, got {max_concurrent}")
        self.urls = list(urls)
        self.clients = [ServerClient(url, timeout_s=timeout_s, retries=retries) for url in self.urls]
        self.max_new_tokens, self.temperature, self.top_p, self.top_k = max_new_tokens, temperature, top_p, top_k
        self.stop, self.ignore_eos = list(stop or []), ignore_eos
        self.transfer, self.weights_dir = transfer, weights_dir
        self.nccl_address, self.nccl_port = nccl_address, nccl_port
        self.model, self.timeout_s, self.generate_timeout_s = model, timeout_s, generate_timeout_s
        self.startup_timeout_s, self.max_concurrent = startup_timeout_s, max_concurrent
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._transfer: WeightTransfer | None = None
        self._sender = True
        self._tied_embeddings = False
        self._version = -1
        self._made_dir: str | None = None
        self._lent = False  # the servers sample for a rollout producer: this engine must not push weights
        self.sync_seconds = 0.0
        """Seconds the last weight sync took (on the sending rank)."""
        self.served: dict[str, int] = {}
        """Prompt groups each server sampled so far, by URL."""

    @property
    def policy_version(self) -> int:
        return self._version

    @property
    def sampling(self) -> SamplingOptions:
        """The sampling options (one record type for every engine)."""
        return engine_sampling(self)

    # --- lifecycle ----------------------------------------------------------------------------------------------

    def setup(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        """Wait for every server, learn the served model's name; rank 0 of a process group (or a process with none)
        is the one that sends weights."""
        self._tokenizer = tokenizer
        self._tied_embeddings = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
        self._sender = _rank() == 0
        for client in self.clients:
            wait_until_up(client, self.startup_timeout_s)
        if self.model is None:
            answer = self.clients[0].get("/v1/models", what="which model it serves")
            try:
                self.model = answer["data"][0]["id"]
            except (KeyError, IndexError, TypeError):
                raise ServerError(
                    f"vLLM server {self.urls[0]} answered GET /v1/models with no model: {answer!r}"
                ) from None
        self.served = dict.fromkeys(self.urls, 0)
        if self._transfer is None:
            self._transfer = self._make_transfer()

    def _make_transfer(self) -> WeightTransfer:
        if self.transfer == "nccl":
            return NCCLTransfer(self.nccl_address, self.nccl_port)
        directory = self.weights_dir
        if directory is None:
            base = "/dev/shm" if os.path.isdir("/dev/shm") else None
            directory = self._made_dir = tempfile.mkdtemp(prefix="real-lightning-weights-", dir=base)
        return FilesystemTransfer(directory)

    def producer_engine(self) -> VLLMServerEngine:
        """A fresh engine on the same servers for a rollout producer (which then sends the weights it samples with).

        Raises:
            ValueError: on several ranks: their producers would share one fleet, which holds one version at a time.
        """
        if _world_size() > 1:
            raise ValueError(
                "VLLMServerEngine with data.schedule.max_staleness > 0 runs on one trainer process for now: the "
                "producers of several ranks would share one server fleet, which holds one weight version at a time"
            )
        self._lent = True
        fresh = copy.copy(self)
        fresh._lent = False
        fresh.stop = list(self.stop)
        fresh.clients = [copy.copy(c) for c in self.clients]
        fresh._tokenizer, fresh._transfer, fresh._version, fresh._made_dir = None, None, -1, None
        return fresh

    def teardown(self) -> None:
        """Release the transfer (its files, its communicator); the servers keep running."""
        if self._transfer is not None:
            try:
                self._transfer.close(self.clients)
            finally:
                self._transfer = None
        if self._made_dir is not None:
            import shutil

            shutil.rmtree(self._made_dir, ignore_errors=True)
            self._made_dir = None
        self._version = -1

    # --- weights ------------------------------------------------------------------------------------------------

    def update_weights(self, named_tensors: Iterable[tuple[str, Tensor]], version: int) -> None:
        """Make the servers sample from these weights. The sending rank pauses them, transfers, resets their prefix
        caches, tags ``version`` and resumes them; every other rank only walks the tensors (under FSDP2 each full
        tensor is an all-gather every rank joins) and waits for that version before it generates."""
        if self._lent:
            raise ValueError(
                "with data.schedule.max_staleness > 0 the vLLM servers sample for the rollout producer, which pushes "
                "the weights it samples with; validation cannot push others meanwhile: give validation an engine of "
                "its own (data.val_engine: an HFEngine, a VLLMEngine, or a VLLMServerEngine on other servers)"
            )
        if version == self._version:
            for _ in named_tensors:
                pass
            return
        if self._sender:
            if self._transfer is None:
                raise RuntimeError("VLLMServerEngine.update_weights before setup(model, tokenizer)")
            weights = with_tied_head(named_tensors) if self._tied_embeddings else named_tensors
            self.sync_seconds = sync_weights(self.clients, self._transfer, weights, version)
        else:
            for _ in named_tensors:
                pass
        self._version = version

    def _check_version(self) -> None:
        """Every server must hold this engine's version before it samples: the sending rank checks once (a server
        that restarted, or weights another engine pushed, fail naming the server); another rank waits up to
        ``generate_timeout_s`` for rank 0's sync to land."""
        if self._version < 0:
            return
        wanted = str(self._version)
        deadline = time.monotonic() + (0.0 if self._sender else self.generate_timeout_s)
        for client in self.clients:
            while (held := server_version(client)) != wanted:
                if self._sender:
                    raise ServerError(
                        f"vLLM server {client.url} holds weight version {held}, not {wanted} which this run pushed to "
                        "it: it restarted, or another engine or run pushed weights to it (resume with --ckpt_path "
                        "last once every server serves only this run)"
                    )
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"vLLM server {client.url} still holds weight version {held} after {self.generate_timeout_s:g} "
                        f"s; rank 0 sends version {wanted} (is it alive?)"
                    )
                time.sleep(0.05)

    # --- sampling -----------------------------------------------------------------------------------------------

    def request_body(self, prompt: list[int], n: int, seed: int) -> dict[str, Any]:
        """The ``/v1/completions`` body of one prompt: n samples, seeded (vLLM seeds sample j with seed + j)."""
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt,
            "n": n,
            "seed": seed,
            "max_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k if self.top_k > 0 else -1,
            "logprobs": 0,
            "return_token_ids": True,
            "skip_special_tokens": True,
            "ignore_eos": self.ignore_eos,
        }
        if self.stop:
            body |= {"stop": self.stop, "include_stop_str_in_output": True}
        return body

    def generate(self, prompts: list[list[int]], n: int, seed: int) -> Generation:
        """Sample ``n`` responses per prompt (row ``p·n + j``); prompt p is seeded by (seed, p), as in VLLMEngine."""
        if not prompts:
            raise ValueError("generate needs at least one prompt")
        tokenizer = self._tokenizer
        if tokenizer is None:
            raise RuntimeError("VLLMServerEngine.generate before setup(model, tokenizer)")
        self._check_version()
        balance = _Balance(self.clients)
        cost = [len(p) + n * self.max_new_tokens for p in prompts]

        def one(index: int) -> tuple[list[list[int]], list[bool], list[str], list[list[float]]]:
            client = balance.take(cost[index])
            try:
                body = self.request_body(prompts[index], n, derive_seed(seed, index) % (2**31))
                what = f"{n} samples of a {len(prompts[index])}-token prompt"
                answer = client.post("/v1/completions", body, what=what, timeout_s=self.generate_timeout_s)
                return _choices(answer, n, client, what)
            finally:
                balance.done(client, cost[index])

        with ThreadPoolExecutor(max_workers=min(self.max_concurrent, len(prompts))) as pool:
            results = list(pool.map(one, range(len(prompts))))
        for url, count in balance.groups.items():
            self.served[url] = self.served.get(url, 0) + count
        responses = [r for result in results for r in result[0]]
        truncated = [t for result in results for t in result[1]]
        logprobs = [lp for result in results for lp in result[3]]
        texts = [t for result in results for t in result[2]]
        if not self.stop:
            texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
        return Generation.from_token_lists(
            prompts, n, responses, truncated, texts, tokenizer.pad_token_id, behaviour_logprobs=logprobs
        )


class _Balance:
    """Sends each prompt group to the server with the fewest outstanding tokens (prompt + n·max_new_tokens)."""

    def __init__(self, clients: list[ServerClient]) -> None:
        self.outstanding = {c.url: 0 for c in clients}
        self.clients = {c.url: c for c in clients}
        self.groups = dict.fromkeys(self.outstanding, 0)
        self.lock = threading.Lock()

    def take(self, tokens: int) -> ServerClient:
        with self.lock:
            url = min(self.outstanding, key=lambda u: (self.outstanding[u], self.groups[u]))
            self.outstanding[url] += tokens
            self.groups[url] += 1
            return self.clients[url]

    def done(self, client: ServerClient, tokens: int) -> None:
        with self.lock:
            self.outstanding[client.url] -= tokens


def _choices(
    answer: Any, n: int, client: ServerClient, what: str
) -> tuple[list[list[int]], list[bool], list[str], list[list[float]]]:
    """Token ids, truncation, texts and sampled-token log-probs of the n choices of one completion, in index order."""

    def wrong(reason: str) -> ServerError:
        return ServerError(f"vLLM server {client.url} answered POST /v1/completions ({what}) wrongly: {reason}")

    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list) or len(choices) != n:
        raise wrong(f"expected {n} choices, got {answer!r:.300}")
    tokens, truncated, texts, logprobs = [], [], [], []
    for choice in sorted(choices, key=lambda c: c.get("index", 0)):
        ids = choice.get("token_ids")
        values = (choice.get("logprobs") or {}).get("token_logprobs")
        if not isinstance(ids, list) or not isinstance(values, list) or len(values) != len(ids):
            raise wrong(
                "a choice lacks token_ids or one log-prob per token (does the server support return_token_ids, "
                f"and logprobs=0?): {choice!r:.300}"
            )
        tokens.append(ids)
        truncated.append(choice.get("finish_reason") == "length")
        texts.append(choice.get("text", ""))
        logprobs.append([float(v) for v in values])
    return tokens, truncated, texts, logprobs


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def _world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))
