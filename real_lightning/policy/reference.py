"""The frozen reference policy π_ref of the KL penalty (``model.kl_coef > 0``): the starting policy.

It is kept outside the LightningModule's submodules, so it is not in checkpoints (it is the starting weights,
loaded again on resume), not in the optimizer, and not wrapped by DDP. Under FSDP2 it is sharded like the
policy (per decoder layer, rank 0 loads and broadcasts), so it costs 1/N of its weights per rank; without
sharding it is a full copy per process (2 bytes per parameter in bf16, 4 in fp32).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributed.device_mesh import DeviceMesh

from real_lightning.logprobs import sequence_logprobs
from real_lightning.policy.loading import load_policy
from real_lightning.policy.sharding import FSDPConfig, empty_policy, is_sharded, materialize
from real_lightning.rollout.batch import RolloutBatch


def frozen_logprobs(model: torch.nn.Module, batch: RolloutBatch, chunk_size: int, fused_head: bool) -> Tensor:
    """[B, T] log-probs of the batch's response tokens under ``model`` at the batch's sampling temperature, without
    gradients (what both kinds of π_ref compute)."""
    with torch.no_grad():
        logprobs, _ = sequence_logprobs(
            model,
            batch.input_ids,
            batch.attention_mask,
            batch.prompt_length,
            temperature=batch.temperature if batch.temperature > 0 else 1.0,
            chunk_size=chunk_size,
            fused_head=fused_head,
        )
    return logprobs


class ReferencePolicy:
    """π_ref: ``pretrained`` loaded in eval mode without gradients.

    Args:
        pretrained: the policy's starting checkpoint (``model.pretrained``).
        dtype: its dtype (None: as saved).
        sharded: build it on the meta device, to be sharded and loaded by :meth:`configure` (FSDP2).
    """

    def __init__(self, pretrained: str, dtype: torch.dtype | None, sharded: bool) -> None:
        self.pretrained, self.dtype = pretrained, dtype
        self.model = empty_policy(pretrained, dtype) if sharded else load_policy(pretrained, dtype)
        self.model.eval().requires_grad_(False)

    def configure(self, mesh: DeviceMesh | None, fsdp: FSDPConfig | None, device: torch.device) -> None:
        """Shard it over ``mesh`` (when the policy is sharded) and load it, or move it to ``device``; once."""
        materialize(self.model, mesh, fsdp, self.pretrained, self.dtype, device)
        if not is_sharded(self.model):
            self.model.to(device)

    def logprobs(self, batch: RolloutBatch, chunk_size: int, fused_head: bool = False) -> Tensor:
        """[B, T] log π_ref of the response tokens at the batch's sampling temperature (no grad)."""
        return frozen_logprobs(self.model, batch, chunk_size, fused_head)


class AdaptersOffReference:
    """π_ref of an adapted policy (``model.lora``): the policy itself with its adapters turned off, which is the
    frozen starting policy exactly (the base never trains), at no memory cost.

    Args:
        policy: the PEFT-wrapped policy (the module's, so that it follows the module's device).
    """

    def __init__(self, policy: torch.nn.Module) -> None:
        self.model = policy

    def configure(self, mesh: DeviceMesh | None, fsdp: FSDPConfig | None, device: torch.device) -> None:
        """Nothing to load or shard: the weights are the policy's."""

    def logprobs(self, batch: RolloutBatch, chunk_size: int, fused_head: bool = False) -> Tensor:
        """[B, T] log π_ref of the response tokens at the batch's sampling temperature (no grad)."""
        with self.model.disable_adapter():
            return frozen_logprobs(self.model, batch, chunk_size, fused_head)
