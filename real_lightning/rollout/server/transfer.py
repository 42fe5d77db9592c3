"""Weight transfer to a fleet of vLLM servers, once per policy version, from one trainer rank.

Every transfer wraps the load the same way on every server, in parallel: ``POST /pause?mode=wait`` (in-flight
requests finish on the old weights), the load, ``POST /reset_prefix_cache`` (cached prefixes hold keys and values
of the old weights), ``POST /update_weight_version`` (the servers report the version in ``GET /weight_info``,
which other ranks wait for), ``POST /resume``.

* :class:`FilesystemTransfer` (CPU and clusters with a shared filesystem; tested here): the trainer writes the
  weights as safetensors shards into ``<directory>/v<version>/`` and a ``READY`` marker last; each server reloads
  them in place through ``POST /collective_rpc`` → ``reload_weights(weights_path=…)`` (vLLM's layerwise reload,
  checkpoint names). The previous version's folder is removed once every server has loaded the new one.
* :class:`NCCLTransfer` (GPUs): vLLM's native weight-transfer protocol (``vllm serve --weight-transfer-config
  '{"backend": "nccl"}'``): once, ``POST /init_weight_transfer_engine`` on every server (rank offsets after the
  trainer's rank 0) while the trainer joins the NCCL group; per version ``POST /start_weight_update``, ``POST
  /update_weights`` with the names, dtypes and shapes while the trainer broadcasts each tensor, ``POST
  /finish_weight_update`` with the version. Built to vLLM 0.32's documented routes and unit-tested against a fake
  server; not run on GPUs here.

Servers need ``VLLM_SERVER_DEV_MODE=1`` for these routes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from real_lightning.rollout.server.client import ServerClient, ServerError

SHARD_BYTES = 2**30
"""Largest safetensors shard the filesystem transfer writes (bytes): the trainer holds at most one shard on the host."""


class WeightTransfer(Protocol):
    """Loads one version of the weights into every server (the caller pauses and resumes them)."""

    def prepare(self, clients: list[ServerClient]) -> None:
        """Before the first load, with the servers still serving (e.g. join a communicator)."""
        ...

    def load(self, clients: list[ServerClient], named_tensors: Iterable[tuple[str, Tensor]], version: int) -> None:
        """Consume ``named_tensors`` (full tensors, checkpoint names) and make every server hold them."""
        ...

    def close(self, clients: list[ServerClient]) -> None:
        """Free what the transfer holds (files, communicators)."""
        ...


def on_every_server(clients: list[ServerClient], call: Callable[[ServerClient], Any]) -> list[Any]:
    """``call(client)`` for every server at once; the first error is raised (naming its server)."""
    if len(clients) == 1:
        return [call(clients[0])]
    with ThreadPoolExecutor(max_workers=len(clients)) as pool:
        return list(pool.map(call, clients))


def sync_weights(
    clients: list[ServerClient], transfer: WeightTransfer, named_tensors: Iterable[tuple[str, Tensor]], version: int
) -> float:
    """Pause every server, load ``version`` through ``transfer``, reset the prefix caches, tag the version, resume;
    returns the seconds it took."""
    start = time.perf_counter()
    what = f"weights of version {version}"
    transfer.prepare(clients)
    resume = f"resume after the {what}"
    try:
        on_every_server(clients, lambda c: c.post("/pause", params={"mode": "wait"}, what=f"pause before the {what}"))
        transfer.load(clients, named_tensors, version)
        on_every_server(clients, lambda c: c.post("/reset_prefix_cache", what=f"reset the prefix cache ({what})"))
        on_every_server(
            clients, lambda c: c.post("/update_weight_version", {"new_version": str(version)}, what=f"tag the {what}")
        )
    except BaseException:  # leave the servers that still answer serving; the first error names the server at fault
        for client in clients:
            with contextlib.suppress(ServerError):
                client.post("/resume", what=resume)
        raise
    on_every_server(clients, lambda c: c.post("/resume", what=resume))
    return time.perf_counter() - start


def server_version(client: ServerClient) -> str | None:
    """The weight version a server reports (``GET /weight_info``), None before any was set."""
    answer = client.get("/weight_info", what="which weight version it holds")
    if not isinstance(answer, dict) or "weight_version" not in answer:
        raise ServerError(f"vLLM server {client.url} answered GET /weight_info without a weight_version: {answer!r}")
    version = answer["weight_version"]
    return None if version is None else str(version)


# --- filesystem ---------------------------------------------------------------------------------------------------


class FilesystemTransfer:
    """Safetensors in a directory the trainer and every server see, reloaded by the servers.

    Args:
        directory: where ``v<version>/`` folders go (a shared filesystem across nodes; on one machine a folder under
            ``/dev/shm`` keeps the bytes in memory). Created if missing.
        shard_bytes: largest shard written at once.
    """

    def __init__(self, directory: str | os.PathLike[str], shard_bytes: int = SHARD_BYTES) -> None:
        self.directory, self.shard_bytes = Path(directory), shard_bytes
        self.current: Path | None = None

    def prepare(self, clients: list[ServerClient]) -> None:
        """Nothing to prepare: the servers read what :meth:`load` writes."""

    def write(self, named_tensors: Iterable[tuple[str, Tensor]], version: int) -> Path:
        """Write ``v<version>/model-0000k.safetensors`` shards, then ``READY`` (JSON: version, names, bytes)."""
        from safetensors.torch import save_file

        folder = self.directory / f"v{version}"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        names, total = [], 0
        for index, shard in enumerate(_shards(named_tensors, self.shard_bytes)):
            save_file(shard, str(folder / f"model-{index:05d}.safetensors"))
            names += list(shard)
            total += sum(t.numel() * t.element_size() for t in shard.values())
        marker = folder / "READY"
        with open(marker, "w") as f:
            json.dump({"version": version, "tensors": names, "bytes": total}, f)
            f.flush()
            os.fsync(f.fileno())
        return folder

    def load(self, clients: list[ServerClient], named_tensors: Iterable[tuple[str, Tensor]], version: int) -> None:
        folder = self.write(named_tensors, version)
        body = {"method": "reload_weights", "kwargs": {"weights_path": str(folder)}}
        on_every_server(clients, lambda c: c.post("/collective_rpc", body, what=f"reload the weights in {folder}"))
        if self.current is not None and self.current != folder:
            shutil.rmtree(self.current, ignore_errors=True)
        self.current = folder

    def close(self, clients: list[ServerClient]) -> None:
        if self.current is not None:
            shutil.rmtree(self.current, ignore_errors=True)
            self.current = None


def _shards(named_tensors: Iterable[tuple[str, Tensor]], limit: int) -> Iterator[dict[str, Tensor]]:
    """Host copies of the tensors, grouped into dicts of at most ``limit`` bytes (one tensor may exceed it)."""
    shard: dict[str, Tensor] = {}
    size = 0
    for name, tensor in named_tensors:
        host = tensor.detach().to("cpu", copy=True).contiguous()
        nbytes = host.numel() * host.element_size()
        if shard and size + nbytes > limit:
            yield shard
            shard, size = {}, 0
        shard[name], size = host, size + nbytes
    if shard:
        yield shard


# --- NCCL ---------------------------------------------------------------------------------------------------------


class Broadcaster(Protocol):
    """The trainer's end of the NCCL group: rank 0, sending."""

    def broadcast(self, tensor: Tensor) -> None: ...

    def close(self) -> None: ...


def nccl_broadcaster(master_address: str, master_port: int, world_size: int) -> Broadcaster:
    """vLLM's trainer endpoint (rank 0 of a stateless NCCL group with the servers' workers); needs vLLM and a GPU."""
    from vllm.distributed.weight_transfer.nccl_common import stateless_init_process_group

    communicator = stateless_init_process_group(master_address, master_port, 0, world_size, torch.cuda.current_device())

    class _NCCL:
        def broadcast(self, tensor: Tensor) -> None:
            communicator.broadcast(tensor.contiguous(), src=0, stream=torch.cuda.current_stream())

        def close(self) -> None:
            torch.cuda.current_stream().synchronize()

    return _NCCL()


class NCCLTransfer:
    """vLLM's NCCL weight transfer (see the module docstring): unpacked, one broadcast per tensor.

    Args:
        master_address, master_port: the rendezvous of the NCCL group (the trainer's host, a free port).
        connect: builds the trainer's endpoint from (address, port, world size); tests pass a recorder.
    """

    def __init__(
        self,
        master_address: str = "127.0.0.1",
        master_port: int = 29600,
        connect: Callable[[str, int, int], Broadcaster] = nccl_broadcaster,
    ) -> None:
        self.master_address, self.master_port, self.connect = master_address, master_port, connect
        self.broadcaster: Broadcaster | None = None

    def prepare(self, clients: list[ServerClient]) -> None:
        """Once: every server's workers join the group after the trainer (rank 0), in URL order."""
        if self.broadcaster is not None:
            return
        sizes = [_world_size(c) for c in clients]
        world = 1 + sum(sizes)
        offsets = [1 + sum(sizes[:i]) for i in range(len(clients))]

        def join(pair: tuple[ServerClient, int]) -> Any:
            client, offset = pair
            info = {
                "master_address": self.master_address,
                "master_port": self.master_port,
                "rank_offset": offset,
                "world_size": world,
                "packed": False,
            }
            return client.post("/init_weight_transfer_engine", {"init_info": info}, what="join the NCCL group")

        with ThreadPoolExecutor(max_workers=len(clients)) as pool:  # they block until the trainer joins too
            joined = [pool.submit(join, pair) for pair in zip(clients, offsets, strict=True)]
            self.broadcaster = self.connect(self.master_address, self.master_port, world)
            for future in joined:
                future.result()

    def load(self, clients: list[ServerClient], named_tensors: Iterable[tuple[str, Tensor]], version: int) -> None:
        if self.broadcaster is None:
            raise RuntimeError("NCCLTransfer.load before prepare(): the trainer has not joined the NCCL group")
        tensors = [(name, t.detach().contiguous()) for name, t in named_tensors]
        info = {
            "names": [name for name, _ in tensors],
            "dtype_names": [str(t.dtype).split(".")[-1] for _, t in tensors],
            "shapes": [list(t.shape) for _, t in tensors],
        }
        on_every_server(clients, lambda c: c.post("/start_weight_update", what=f"start loading version {version}"))
        with ThreadPoolExecutor(max_workers=len(clients)) as pool:  # the servers receive while the trainer sends
            receiving = [
                pool.submit(c.post, "/update_weights", {"update_info": info}, f"receive version {version}")
                for c in clients
            ]
            for _, tensor in tensors:
                self.broadcaster.broadcast(tensor)
            for future in receiving:
                future.result()
        finish = {"weight_version": str(version)}
        on_every_server(clients, lambda c: c.post("/finish_weight_update", finish, what=f"finish version {version}"))

    def close(self, clients: list[ServerClient]) -> None:
        if self.broadcaster is not None:
            self.broadcaster.close()
            on_every_server(clients, lambda c: c.post("/shutdown_weight_transfer_engine", what="leave the NCCL group"))
            self.broadcaster = None


def _world_size(client: ServerClient) -> int:
    answer = client.get("/get_world_size", what="how many workers receive weights")
    if not isinstance(answer, dict) or not isinstance(answer.get("world_size"), int):
        raise ServerError(f"vLLM server {client.url} answered GET /get_world_size without a world_size: {answer!r}")
    return answer["world_size"]
