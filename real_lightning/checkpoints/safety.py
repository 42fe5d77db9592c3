"""Reading a distributed checkpoint directory without running code from it.

A distributed checkpoint (FSDP2: a directory with ``.metadata``, ``__*_*.distcp`` shards and Lightning's
``meta.pt``) is read by ``torch.distributed.checkpoint``, which unpickles ``.metadata`` with
``pickle.load`` and every non-tensor entry of the shards (optimizer ``param_groups`` values, ...) with
``torch.load(weights_only=False)``: a crafted directory runs code when loaded. A single-file ``.ckpt`` is
loaded with ``weights_only=True`` and is safe.

:func:`check_checkpoint_dir` reads a directory the way torch will, without executing anything: ``.metadata``
with an unpickler that only builds the checkpoint-metadata classes (:data:`ALLOWED_METADATA_GLOBALS`, torch
dtypes, layouts and memory formats), every non-tensor entry with ``torch.load(weights_only=True)`` and
``meta.pt`` likewise; anything else is refused with :class:`UntrustedCheckpointError` before torch reads the
directory. ``fit --ckpt_path DIR`` (:class:`~real_lightning.fsdp.FSDP2Strategy` and the CLI) checks first;
``python -m real_lightning.export DIR`` reads it with :func:`load_distributed_checkpoint`, whose reader and
planner use the same restrictions (nothing is read twice).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata, StorageMeta

META_FILENAME = "meta.pt"  # Lightning's non-tensor part of a distributed checkpoint (lightning.fabric.utilities.load)

_DCP_METADATA = "torch.distributed.checkpoint.metadata"
ALLOWED_METADATA_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        *(
            (_DCP_METADATA, name)
            for name in (
                "Metadata",
                "StorageMeta",
                "TensorStorageMetadata",
                "ChunkStorageMetadata",
                "BytesStorageMetadata",
                "MetadataIndex",
                "TensorProperties",
                "_MEM_FORMAT_ENCODING",
            )
        ),
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),  # torch.layout's reduce: a lookup by name
        ("collections", "OrderedDict"),
        *((module, cls) for module in ("pathlib", "pathlib._local") for cls in ("PosixPath", "WindowsPath", "Path")),
        *((module, cls) for module in ("pathlib", "pathlib._local") for cls in ("PurePosixPath", "PureWindowsPath")),
    }
)
"""``(module, name)`` globals a ``.metadata`` pickle may name (what ``torch.distributed.checkpoint.save`` writes),
besides ``torch.<dtype>``, ``torch.<layout>`` and ``torch.<memory_format>`` constants."""


class UntrustedCheckpointError(ValueError):
    """A checkpoint directory holds something that loading it would execute or build: it is not read."""


def _refuse(path: Path, what: str) -> UntrustedCheckpointError:
    return UntrustedCheckpointError(
        f"refusing to load the distributed checkpoint {path}: {what}. Loading it would run code from the "
        "checkpoint (torch.distributed.checkpoint unpickles it). Only load checkpoint directories you wrote "
        "yourself; a single-file .ckpt (FSDP2Strategy(save_distributed_checkpoint=false)) is always loaded "
        "with weights_only=True."
    )


def _torch_constant(name: str) -> bool:
    return isinstance(getattr(torch, name, None), torch.dtype | torch.layout | torch.memory_format)


class _MetadataUnpickler(pickle.Unpickler):
    """Builds only :data:`ALLOWED_METADATA_GLOBALS` and torch constants; raises on any other global."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_METADATA_GLOBALS or (module == "torch" and _torch_constant(name)):
            return super().find_class(module, name)
        raise _refuse(self._path, f"it names {module}.{name}, which is not checkpoint metadata")

    def persistent_load(self, pid: Any) -> Any:
        raise _refuse(self._path, "it holds a persistent reference")


def read_metadata(path: Path) -> Metadata:
    """One ``.metadata`` file, unpickled with the restricted unpickler (:class:`UntrustedCheckpointError` else)."""
    try:
        with path.open("rb") as f:
            metadata = _MetadataUnpickler(f, path).load()
    except (UntrustedCheckpointError, OSError):
        raise
    except Exception as error:  # a truncated or garbled file
        raise _refuse(path, f"it cannot be read as checkpoint metadata ({type(error).__name__}: {error})") from error
    if not isinstance(metadata, Metadata):
        raise _refuse(path, f"it holds a {type(metadata).__name__}, not checkpoint metadata")
    return metadata


def _check_storage(directory: Path, metadata: Metadata) -> None:
    """Every shard reference stays inside ``directory``; every non-tensor entry loads with ``weights_only=True``."""
    root = directory.resolve()
    for index, info in (metadata.storage_data or {}).items():
        relative = getattr(info, "relative_path", None)
        shard = (root / str(relative)).resolve()
        if relative is None or not shard.is_relative_to(root):
            raise _refuse(directory, f"entry {index.fqn!r} points outside the directory ({relative!r})")
        if not isinstance(metadata.state_dict_metadata.get(index.fqn), BytesStorageMetadata):
            continue  # tensors: torch loads them with weights_only=True itself
        if getattr(info, "transform_descriptors", None):
            raise _refuse(directory, f"entry {index.fqn!r} is stored with transforms {info.transform_descriptors}")
        with shard.open("rb") as f:
            f.seek(info.offset)
            raw = f.read(info.length)
        _check_bytes(directory, index.fqn, io.BytesIO(raw))


def _check_bytes(directory: Path, fqn: str, value: io.BytesIO) -> None:
    try:
        torch.load(value, map_location="cpu", weights_only=True)
    except Exception as error:
        raise _refuse(directory, f"entry {fqn!r} is not plain data ({type(error).__name__}: {error})") from error
    finally:
        value.seek(0)


def load_meta(directory: Path) -> dict[str, Any]:
    """Lightning's ``meta.pt`` of a distributed checkpoint ({} when absent), with ``weights_only=True``."""
    meta = directory / META_FILENAME
    if not meta.is_file():
        return {}
    try:
        return torch.load(meta, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError as error:
        raise _refuse(meta, f"it is not plain data ({error})") from error


def check_checkpoint_dir(directory: str | Path) -> Metadata:
    """Read a distributed checkpoint directory as torch would, building nothing but plain data.

    Returns the directory's metadata; raises :class:`UntrustedCheckpointError` naming what it refused.
    """
    directory = Path(directory)
    main = directory / ".metadata"
    if not main.is_file():
        raise FileNotFoundError(f"{directory} is not a distributed checkpoint (no .metadata in it)")
    metadata = read_metadata(main)
    for other in sorted(directory.glob("*.metadata")):  # __<rank>.metadata: torch falls back to these
        if other.name != main.name:
            read_metadata(other)
    _check_storage(directory, metadata)
    load_meta(directory)
    return metadata


class SafeFileSystemReader(FileSystemReader):
    """``FileSystemReader`` that reads ``.metadata`` with the restricted unpickler and checks the shards."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        rank = kwargs.get("rank")
        directory = Path(str(self.path))
        metadata = read_metadata(Path(str(self._get_metadata_path(rank))))
        _check_storage(directory, metadata)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _SafeEmptyStateDictLoadPlanner(_EmptyStateDictLoadPlanner):
    """Loads every non-tensor entry with ``weights_only=True`` (the default planner uses ``weights_only=False``)."""

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self._directory = directory

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        _check_bytes(self._directory, read_item.dest_index.fqn, value)
        super().load_bytes(read_item, value)


def load_distributed_checkpoint(directory: str | Path) -> dict[str, Any]:
    """A distributed checkpoint as one full dict (in this process, no process group), read safely: what
    Lightning's ``_load_distributed_checkpoint`` returns, with the restrictions of :func:`check_checkpoint_dir`."""
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    directory = Path(directory)
    check_checkpoint_dir(directory)  # one clear error before torch reads (and falls back to other metadata)
    checkpoint: dict[str, Any] = {}
    _load_state_dict(
        checkpoint,
        storage_reader=SafeFileSystemReader(directory),
        planner=_SafeEmptyStateDictLoadPlanner(directory),
        no_dist=True,
    )
    checkpoint.update(load_meta(directory))
    return checkpoint
