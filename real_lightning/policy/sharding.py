"""FSDP2 for the policy: shard it per decoder layer over the data-parallel mesh, load it without N full
copies, gather it back for export, and measure its gradient norm.

Used by :class:`~real_lightning.module.RealPolicyModule` under :class:`~real_lightning.fsdp.FSDP2Strategy`
(Lightning's ``ModelParallelStrategy`` with every rank in the data-parallel dimension). Works on CUDA (NCCL) and
on CPU (gloo).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from real_lightning.policy.loading import load_policy, resolve_pretrained
from real_lightning.policy.lora import base_model
from real_lightning.utils.dtypes import torch_dtype


@dataclass
class FSDPConfig:
    """How the policy is sharded (``model.fsdp``; the strategy must be :class:`~real_lightning.fsdp.FSDP2Strategy`).

    Args:
        param_dtype: dtype of the gathered parameters in forward/backward (mixed precision, e.g.
            ``bfloat16``); None: the parameters' own dtype. The sharded master weights and the optimizer
            stay in the loaded dtype.
        reduce_dtype: dtype of the gradient reduce-scatter (``float32`` keeps the sum exact-ish under bf16
            compute); None: ``param_dtype``.
        reshard_after_forward: free each layer's gathered parameters after its forward (ZeRO-3: least
            memory, one more all-gather in backward); False keeps them until the backward (ZeRO-2-like).
    """

    param_dtype: Literal["float32", "bfloat16", "float16"] | None = None
    reduce_dtype: Literal["float32", "bfloat16", "float16"] | None = None
    reshard_after_forward: bool = True


def is_sharded(module: nn.Module) -> bool:
    """The module (or a submodule) is managed by FSDP2 (``fully_shard``)."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in module.modules())


def has_meta_parameters(module: nn.Module) -> bool:
    return any(p.is_meta for p in module.parameters())


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Create modules' parameters on the meta device (no memory, no init), their buffers for real.

    Non-persistent buffers (rotary ``inv_freq``) are computed in ``__init__`` and are not in checkpoints,
    so they must exist before the weights are loaded.
    """
    register = nn.Module.register_parameter

    def on_meta(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(self, name, param)
        if param is not None and not param.is_meta:  # a meta parameter registered again (tied) stays itself
            self._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def empty_policy(pretrained: str, dtype: torch.dtype | None) -> PreTrainedModel:
    """The policy's architecture with parameters on the meta device (weights load later, once, sharded)."""
    config = AutoConfig.from_pretrained(resolve_pretrained(pretrained))
    with parameters_on_meta():
        policy = AutoModelForCausalLM.from_config(config, dtype=dtype or getattr(config, "dtype", None))
    return policy


def shard_policy(policy: PreTrainedModel, mesh: DeviceMesh, config: FSDPConfig) -> None:
    """``fully_shard`` every decoder layer, then the root (embeddings, final norm and the tied head). With adapters
    (``model.lora``) each layer's frozen base weights and trainable adapters share its unit: FSDP2 reduce-scatters
    the gradients of the parameters that have them."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mixed = MixedPrecisionPolicy(
        param_dtype=torch_dtype(config.param_dtype),
        reduce_dtype=torch_dtype(config.reduce_dtype),
    )
    kwargs: dict[str, Any] = {"mesh": mesh, "mp_policy": mixed, "reshard_after_forward": config.reshard_after_forward}
    layers = getattr(getattr(base_model(policy), "model", None), "layers", None)
    if layers is None:
        raise ValueError(f"{type(policy).__name__} has no model.layers to shard (a decoder-only causal LM expected)")
    for layer in layers:
        fully_shard(layer, **kwargs)
    fully_shard(policy, **kwargs)


def load_weights(
    policy: nn.Module,
    pretrained: str,
    dtype: torch.dtype | None,
    device: torch.device,
    full_policy: Callable[[], nn.Module] | None = None,
) -> None:
    """Materialise a (sharded) policy built by :func:`empty_policy` and load its checkpoint: rank 0 reads it
    and broadcasts, every rank keeps its shard (one full copy on rank 0, never one per rank).

    ``full_policy`` builds rank 0's full copy when ``pretrained`` alone does not (an adapted policy: the base
    with its adapters initialised as the unsharded path initialises them); default ``load_policy``."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    buffers = {name: buffer.clone() for name, buffer in policy.named_buffers()}
    policy.to_empty(device=device)
    with torch.no_grad():
        for name, buffer in policy.named_buffers():
            buffer.copy_(buffers[name])
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank0 = not distributed or torch.distributed.get_rank() == 0
    build = full_policy or (lambda: load_policy(pretrained, dtype))
    full = build().state_dict() if rank0 else {}
    if not is_sharded(policy):
        policy.load_state_dict(full)
        base_model(policy).tie_weights()
        return
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(policy, full, options=options)


def materialize(
    policy: nn.Module,
    mesh: DeviceMesh | None,
    config: FSDPConfig | None,
    pretrained: str,
    dtype: torch.dtype | None,
    device: torch.device,
    full_policy: Callable[[], nn.Module] | None = None,
) -> None:
    """Shard ``policy`` over ``mesh`` (unless None or done) and load its weights if still on the meta device;
    what a built-on-meta policy needs once the process group exists (``full_policy``: see :func:`load_weights`).
    Idempotent."""
    if mesh is not None and not is_sharded(policy):
        shard_policy(policy, mesh, config or FSDPConfig())
    if has_meta_parameters(policy):
        load_weights(policy, pretrained, dtype, device, full_policy)


def full_state_dict(policy: nn.Module) -> dict[str, Tensor]:
    """The policy's full weights on CPU on rank 0 ({} on the other ranks; a collective under FSDP), without
    the second name of a tied parameter (``lm_head.weight`` with tied embeddings), as ``save_pretrained`` writes."""
    tied = {n for n, _ in policy.named_parameters(remove_duplicate=False)} - {n for n, _ in policy.named_parameters()}
    if is_sharded(policy):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        full = {name: tensor.detach().cpu() for name, tensor in policy.state_dict().items()}
    return {name: tensor for name, tensor in full.items() if name not in tied}


def total_grad_norm(parameters: Iterator[nn.Parameter] | list[nn.Parameter]) -> Tensor | None:
    """2-norm of all gradients together, also over shards (a collective under FSDP); None without gradients."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return None
    total = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    return total.full_tensor() if hasattr(total, "full_tensor") else total
