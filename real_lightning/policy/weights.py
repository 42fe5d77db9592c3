"""The policy's weights as engines receive them: (name, full tensor) pairs, one at a time.

The seam between a trained policy and whatever samples from it (:meth:`RolloutEngine.update_weights
<real_lightning.rollout.engine.RolloutEngine.update_weights>`): a sharded parameter (FSDP2's ``DTensor``) is
gathered into its full tensor — a collective, so every rank iterates all of them in the same order — and only
one full tensor is alive at a time. An adapted policy (LoRA) yields its merged weights under the base model's names.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from torch import Tensor, nn

from real_lightning.policy.lora import is_adapted, merged_layout, merged_named_weights


def named_full_weights(policy: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """``(name, tensor)`` for every parameter of ``policy`` in ``named_parameters`` order, sharded parameters
    gathered (detached; the parameter's dtype and device). With adapters (``model.lora``): the base architecture's
    parameters with the adapters merged in (:func:`~real_lightning.policy.lora.merged_named_weights`)."""
    if is_adapted(policy):
        yield from merged_named_weights(policy)
        return
    for name, param in policy.named_parameters():
        full = param.full_tensor() if hasattr(param, "full_tensor") else param
        yield name, full.detach()


def named_weight_layout(policy: nn.Module) -> list[tuple[str, Tensor]]:
    """The names, global shapes and dtypes :func:`named_full_weights` will yield, without gathering anything (the
    parameters themselves; with adapters, meta tensors of the merged weights)."""
    return list(merged_layout(policy)) if is_adapted(policy) else list(policy.named_parameters())


def with_tied_head(named_tensors: Iterable[tuple[str, Tensor]]) -> Iterator[tuple[str, Tensor]]:
    """The pairs, plus the input embedding again as ``lm_head.weight``: with tied embeddings the trainer has one
    parameter, while a vLLM model may keep its own copy of the output head (it does on CPU)."""
    for name, tensor in named_tensors:
        yield name, tensor
        if name.endswith("embed_tokens.weight"):
            yield name.replace("model.embed_tokens.weight", "lm_head.weight"), tensor
