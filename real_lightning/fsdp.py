"""The FSDP2 strategy, by the class path configs name: ``trainer.strategy: real_lightning.fsdp.FSDP2Strategy``
(``configs/fsdp.yaml``). How the policy is sharded, loaded and gathered is :mod:`real_lightning.policy.sharding`."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from lightning.pytorch.strategies import ModelParallelStrategy

from real_lightning.checkpoints.safety import check_checkpoint_dir


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
        if Path(checkpoint_path).is_dir():
            check_checkpoint_dir(checkpoint_path)
        return super().load_checkpoint(checkpoint_path, weights_only=True if weights_only is None else weights_only)
