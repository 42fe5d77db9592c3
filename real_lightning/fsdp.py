"""The FSDP2 strategy, by the class path configs name: ``trainer.strategy: real_lightning.fsdp.FSDP2Strategy``
(``configs/fsdp.yaml``). How the policy is sharded, loaded and gathered is :mod:`real_lightning.policy.sharding`."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy

from real_lightning.checkpoints.safety import META_FILENAME, check_checkpoint_dir


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` as pure FSDP2: all ranks of all nodes shard the policy
    (data-parallel size = world size, no tensor parallelism), distributed checkpoints by default.

    ``real-lightning fit -c configs/<any>.yaml -c configs/fsdp.yaml --trainer.devices N [--trainer.num_nodes M]``
    """

    def __init__(
        self,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = timedelta(minutes=30),
    ) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes  # "auto" would mean num_nodes
        super().setup_environment()

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Lightning's loading, after :func:`~real_lightning.checkpoints.safety.check_checkpoint_dir` has read a
        checkpoint directory without running code from it (torch unpickles its ``.metadata``); ``meta.pt`` and
        single files load with ``weights_only=True`` unless asked otherwise."""
        weights_only = True if weights_only is None else weights_only
        if Path(checkpoint_path).is_dir():
            check_checkpoint_dir(checkpoint_path)
            if any(not p.requires_grad for p in self.lightning_module.parameters()):
                return self._load_trainable(Path(self.broadcast(checkpoint_path)), weights_only)
        return super().load_checkpoint(checkpoint_path, weights_only=weights_only)

    def _load_trainable(self, path: Path, weights_only: bool) -> dict[str, Any]:
        """Lightning's distributed-checkpoint loading for a module whose checkpoints hold its trainable parameters
        only (``model.lora``: the adapters; the frozen base is loaded from ``model.pretrained``): the module's
        trainable entries and the optimizers' states are read from the shards, the metadata returned."""
        from torch.distributed.checkpoint import load
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        module = self.lightning_module
        trainable = {name for name, p in module.named_parameters() if p.requires_grad}
        state = {k: v for k, v in get_model_state_dict(module).items() if k in trainable}
        load({"state_dict": state}, checkpoint_id=path)
        set_model_state_dict(module, state, options=StateDictOptions(strict=False))
        for index, optimizer in enumerate(self.optimizers):
            key = f"optimizer_{index}"
            optimizer_state = {key: get_optimizer_state_dict(module, optimizer)}
            load(optimizer_state, checkpoint_id=path)
            set_optimizer_state_dict(
                module, optimizer, optim_state_dict=optimizer_state[key], options=StateDictOptions(cpu_offload=True)
            )
        return torch.load(path / META_FILENAME, weights_only=weights_only)
