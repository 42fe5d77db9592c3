"""Untrusted checkpoint directories: a distributed checkpoint whose ``.metadata``, entries or ``meta.pt`` would run
code is refused (by export, by ``fit --ckpt_path`` and by FSDP2Strategy) without running it; a genuine one loads."""

from __future__ import annotations

import builtins
import os
import pickle
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from real_lightning.checkpoints.safety import UntrustedCheckpointError, check_checkpoint_dir
from real_lightning.fsdp import FSDP2Strategy
from real_lightning.policy.export import export_checkpoint
from real_lightning.policy.export import main as export_main
from real_lightning.policy.loading import load_policy


class _Shell:
    """Pickles as a call that creates ``marker``: what a crafted checkpoint would do."""

    def __init__(self, marker: Path, via: str) -> None:
        self.marker, self.via = marker, via

    def __reduce__(self):
        if self.via == "eval":
            return builtins.eval, (f"open({str(self.marker)!r}, 'w').close()",)
        return os.system, (f"touch {self.marker}",)


def _save(state: dict, directory: Path) -> None:
    with warnings.catch_warnings():  # "torch.distributed is disabled ... assuming ... a single process"
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=directory, no_dist=True)


@pytest.fixture(scope="module")
def genuine(tmp_path_factory) -> Path:
    """A distributed checkpoint as FSDP2Strategy writes one: the tiny policy's weights and an optimizer's
    param groups in shards (``.metadata`` + ``.distcp``), the rest in Lightning's ``meta.pt``."""
    directory = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    weights = {f"policy.{k}": v.clone() for k, v in load_policy("builtin:tiny").state_dict().items()}
    groups = [{"lr": 0.01, "betas": (0.9, 0.999), "weight_decay": 0.0, "params": sorted(weights)}]
    _save({"state_dict": weights, "optimizer_0": {"param_groups": groups}}, directory)
    meta = {"global_step": 3, "hyper_parameters": {"pretrained": "builtin:tiny", "dtype": None, "lr": 0.01}}
    torch.save(meta, directory / "meta.pt")
    return directory


def _copy(genuine: Path, tmp_path: Path) -> Path:
    directory = tmp_path / "last.ckpt"
    shutil.copytree(genuine, directory)
    return directory


def test_a_genuine_directory_is_checked_and_exported(genuine, tmp_path) -> None:
    metadata = check_checkpoint_dir(genuine)
    assert "optimizer_0.param_groups" in str(list(metadata.state_dict_metadata))
    export_main([str(genuine), str(tmp_path / "hf")])
    from safetensors.torch import load_file

    exported = load_file(tmp_path / "hf" / "model.safetensors")
    original = load_policy("builtin:tiny").state_dict()
    assert exported and all(torch.equal(exported[k], original[k]) for k in exported)


@pytest.mark.parametrize("via", ["system", "eval"])
def test_crafted_metadata_is_refused_without_running(genuine, tmp_path, via) -> None:
    directory, marker = _copy(genuine, tmp_path), tmp_path / "pwned"
    (directory / ".metadata").write_bytes(pickle.dumps(_Shell(marker, via)))
    with pytest.raises(UntrustedCheckpointError) as error:
        export_main([str(directory), str(tmp_path / "hf")])
    message = str(error.value)
    assert f"refusing to load the distributed checkpoint {directory}/.metadata" in message
    assert ("system" if via == "system" else "builtins.eval") in message and "not checkpoint metadata" in message
    assert not marker.exists() and not (tmp_path / "hf").exists()


def test_a_crafted_rank_metadata_is_refused_too(genuine, tmp_path) -> None:
    """torch falls back to ``__<rank>.metadata`` when ``.metadata`` fails: every metadata file is checked."""
    directory, marker = _copy(genuine, tmp_path), tmp_path / "pwned"
    (directory / "__0.metadata").write_bytes(pickle.dumps(_Shell(marker, "system")))
    with pytest.raises(UntrustedCheckpointError, match=r"__0\.metadata: it names"):
        check_checkpoint_dir(directory)
    assert not marker.exists()


def test_a_crafted_entry_is_refused_without_running(tmp_path) -> None:
    """A non-tensor entry of a shard, which torch would load with ``weights_only=False``."""
    directory, marker = tmp_path / "last.ckpt", tmp_path / "pwned"
    _save({"state_dict": {"w": torch.zeros(2)}, "extra": _Shell(marker, "system")}, directory)
    with pytest.raises(UntrustedCheckpointError, match=r"entry 'extra' is not plain data"):
        export_checkpoint(directory, tmp_path / "hf", pretrained="builtin:tiny")
    assert not marker.exists()


def test_a_crafted_meta_is_refused_without_running(genuine, tmp_path) -> None:
    directory, marker = _copy(genuine, tmp_path), tmp_path / "pwned"
    torch.save({"global_step": 3, "x": _Shell(marker, "system")}, directory / "meta.pt")
    with pytest.raises(UntrustedCheckpointError, match=r"meta\.pt: it is not plain data"):
        check_checkpoint_dir(directory)
    assert not marker.exists()


def test_fsdp2_strategy_checks_before_loading(genuine, tmp_path) -> None:
    directory, marker = _copy(genuine, tmp_path), tmp_path / "pwned"
    (directory / ".metadata").write_bytes(pickle.dumps(_Shell(marker, "system")))
    with pytest.raises(UntrustedCheckpointError):
        FSDP2Strategy().load_checkpoint(directory)
    assert not marker.exists()


def test_fit_refuses_a_crafted_directory_before_training(genuine, tmp_path) -> None:
    from real_lightning.cli import main
    from tests.test_resume_truth import _args

    directory, marker = _copy(genuine, tmp_path), tmp_path / "pwned"
    (directory / ".metadata").write_bytes(pickle.dumps(_Shell(marker, "eval")))
    with pytest.raises(UntrustedCheckpointError, match=r"builtins\.eval"):
        main(_args(tmp_path, "--ckpt_path", str(directory)))
    assert not marker.exists() and not (tmp_path / "job").exists()


@pytest.mark.slow
def test_a_real_fsdp2_checkpoint_passes_resumes_and_exports(tmp_path) -> None:
    """One CPU process under FSDP2Strategy (gloo) writes a distributed checkpoint: the check accepts it,
    ``--ckpt_path last`` resumes from it with a new lr, and export reads it."""
    from real_lightning.cli import main
    from tests.test_resume_truth import CONFIGS, _args, _lrs

    fsdp = ("-c", str(CONFIGS / "fsdp.yaml"))
    main(_args(tmp_path, before=fsdp))
    last = tmp_path / "job" / "pinned" / "checkpoints" / "last.ckpt"
    assert last.is_dir() and (last / ".metadata").is_file()
    check_checkpoint_dir(last)
    main(_args(tmp_path, "--model.lr", "0.001", "--trainer.max_steps", "3", "--ckpt_path", "last", before=fsdp))
    assert _lrs(tmp_path) == {0: 0.01, 1: 0.01, 2: 0.001}
    assert (export_checkpoint(last, tmp_path / "hf") / "model.safetensors").is_file()
