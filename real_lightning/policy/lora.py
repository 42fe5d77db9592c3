"""Low-rank adapters (LoRA, through PEFT) on the policy: ``model.lora``.

With adapters the base weights are frozen and only the adapters train: the optimizer, its states and the
gradients hold a few percent of the parameters, the reference policy π_ref of the KL term is the same model with
the adapters turned off (no second copy), and a checkpoint holds the adapters and what resume needs, not the base.
Engines receive *merged* weights under the base model's own parameter names (W + (α/r)·B·A for each adapted
linear layer), so any engine (HFEngine's copy, VLLMEngine, the servers) loads them as it loads a full policy.

The adapter of one linear layer of shape [out, in]: A [r, in] (random), B [out, r] (zeros), so training starts
from the base policy exactly; its output is x·Wᵀ + (α/r)·dropout(x)·Aᵀ·Bᵀ.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel


@dataclass
class LoRAConfig:
    """Low-rank adapters on the policy (``model.lora``; overlay ``configs/lora.yaml``).

    Args:
        r: the adapters' rank (> 0).
        alpha: their scale: the adapter's output is multiplied by ``alpha / r`` (PEFT's ``lora_alpha``).
        dropout: dropout on the adapters' input while training, in [0, 1).
        target_modules: the linear layers that get an adapter, by name or name suffix (``q_proj``,
            ``model.layers.0.mlp.up_proj``), or ``all-linear``: every linear layer but the output head.
        export: what ``model.export_dir`` and ``python -m real_lightning.export`` write: ``merged`` (the base with
            the adapters merged in, ``save_pretrained``: loads in transformers and vLLM) or ``adapter`` (PEFT's
            ``adapter_config.json`` and ``adapter_model.safetensors``: loads with ``PeftModel.from_pretrained`` on
            the base model).
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"
    export: str = "merged"

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"model.lora.r must be an integer > 0, got {self.r!r}")
        if not self.alpha > 0:
            raise ValueError(f"model.lora.alpha must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.lora.dropout must be in [0, 1), got {self.dropout!r}")
        if self.export not in ("merged", "adapter"):
            raise ValueError(f"model.lora.export must be 'merged' or 'adapter', got {self.export!r}")
        if isinstance(self.target_modules, str) and self.target_modules != "all-linear":
            self.target_modules = [self.target_modules]
        if not self.target_modules:
            raise ValueError("model.lora.target_modules is empty: name the linear layers to adapt, or all-linear")


def linear_layer_names(model: nn.Module) -> list[str]:
    """Qualified names of the model's ``nn.Linear`` layers, output head excluded (what ``all-linear`` adapts)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head]


def check_targets(model: nn.Module, targets: list[str] | str) -> None:
    """Every target must match a linear layer of ``model`` (its full name or a ``.``-separated suffix of it)."""
    if targets == "all-linear":
        return
    names = linear_layer_names(model)
    for target in targets:
        if not any(n == target or n.endswith("." + target) for n in names):
            kinds = sorted({n.rsplit(".", 1)[-1] for n in names})
            raise ValueError(
                f"model.lora.target_modules: {target!r} matches no linear layer of the policy "
                f"({type(model).__name__}); its linear layers end in {kinds}"
            )


def apply_lora(model: PreTrainedModel, config: LoRAConfig, rng_state: Tensor | None = None) -> PeftModel:
    """``model`` with adapters on ``config.target_modules``: only the adapters require gradients.

    The adapters are drawn from the global RNG (left as it was), or from ``rng_state`` (``torch.get_rng_state()``
    of an earlier call): the same state draws the same adapters, on a model on the meta device or not."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:  # pragma: no cover - peft is in the dev and lora extras
        raise ImportError("model.lora needs PEFT: pip install 'real-lightning[lora]'") from err
    check_targets(model, config.target_modules)
    peft_config = LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=config.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    # adapters are initialised from the global RNG; fork it so that adding them changes no later draw
    with torch.random.fork_rng(devices=[]):
        if rng_state is not None:
            torch.set_rng_state(rng_state)
        adapted = get_peft_model(model, peft_config)
    return adapted


def is_adapted(model: nn.Module) -> bool:
    """Whether ``model`` carries PEFT adapters."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def base_model(model: nn.Module) -> nn.Module:
    """The architecture under the adapters (itself without them): its class and config build plain copies."""
    return model.get_base_model() if is_adapted(model) else model


def trainable_state_dict(model: nn.Module, state: dict[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """The entries of a module ``state`` dict (keys under ``prefix``) that belong to trainable parameters of
    ``model``; with adapters, the adapters only."""
    trainable = {prefix + name for name, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in state.items() if k in trainable or not k.startswith(prefix)}


def _lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in base_model(model).named_modules() if isinstance(m, LoraLayer)}


def _full(tensor: Tensor) -> Tensor:
    """A parameter's full tensor: gathered when FSDP2 shards it (a collective), itself otherwise."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _delta_weight(layer: nn.Module, params: dict[str, Tensor], owner: str) -> Tensor:
    """(α/r)·B·A of the adapted layer ``owner`` (summed over its active adapters), from full tensors: [out, in]
    (transposed for a ``fan_in_fan_out`` layer), as PEFT's ``get_delta_weight`` computes it."""
    total: Tensor | None = None
    for adapter in layer.active_adapters:
        a = _full(params[f"{owner}.lora_A.{adapter}.weight"]).detach()
        b = _full(params[f"{owner}.lora_B.{adapter}.weight"]).detach()
        delta = (b @ a) * layer.scaling[adapter]
        delta = delta.T if layer.fan_in_fan_out else delta
        total = delta if total is None else total + delta
    assert total is not None, f"{owner}: no active adapter"
    return total


def _base_entries(model: nn.Module) -> Iterator[tuple[str, Tensor, str | None]]:
    """``(name, parameter, owner)`` for each parameter of the plain architecture, under its own name, in parameter
    order: ``owner`` is the adapted layer's name where the parameter is the weight an adapter adds to, else None."""
    for name, param in base_model(model).named_parameters():
        if ".lora_" in name:
            continue
        owner, _, leaf = name.rpartition(".")
        if owner.endswith(".base_layer"):
            owner = owner[: -len(".base_layer")]
            yield f"{owner}.{leaf}", param, owner if leaf == "weight" else None
        else:
            yield name, param, None


@torch.no_grad()
def merged_named_weights(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """``(name, tensor)`` of the plain architecture with every adapter merged (W + (α/r)·B·A), under the base
    model's own parameter names (``model.layers.0.self_attn.q_proj.weight``), in its parameter order; adapter
    tensors themselves are not yielded. One merged tensor is built at a time. Under FSDP2 each tensor is gathered
    first (a collective: every rank iterates them all, in the same order). A merged weight is in the wider of the
    base's and the adapters' dtypes (a bfloat16 base with float32 adapters merges in float32)."""
    layers = _lora_layers(model)
    params = dict(base_model(model).named_parameters())
    for name, param, owner in _base_entries(model):
        tensor = _full(param).detach()
        if owner is not None:
            delta = _delta_weight(layers[owner], params, owner)
            tensor = tensor.to(torch.promote_types(tensor.dtype, delta.dtype)) + delta
        yield name, tensor


def merged_layout(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """What :func:`merged_named_weights` yields, as meta tensors of its names, (global) shapes and dtypes: nothing
    gathered or computed (a rollout producer sizes its weight buffers with it)."""
    layers = _lora_layers(model)
    params = dict(base_model(model).named_parameters())
    for name, param, owner in _base_entries(model):
        dtype = param.dtype
        if owner is not None:
            adapter = layers[owner].active_adapters[0]
            dtype = torch.promote_types(dtype, params[f"{owner}.lora_A.{adapter}.weight"].dtype)
        yield name, torch.empty(param.shape, dtype=dtype, device="meta")


def export_state(model: nn.Module, export: str, keep: bool = True) -> dict[str, Tensor]:
    """What :func:`save_adapted` writes, on CPU: the merged weights (``export`` ``merged``) or the adapters
    (``adapter``, under PEFT's names). Gathered under FSDP2, so call it on every rank; ranks with ``keep`` False
    take part and return {}."""
    if export == "adapter":
        items: Iterator[tuple[str, Tensor]] = (
            (name, _full(p).detach()) for name, p in model.named_parameters() if p.requires_grad
        )
    else:
        items = merged_named_weights(model)
    return {name: tensor.cpu() for name, tensor in items if keep}


def merged_copy(model: nn.Module, state: dict[str, Tensor] | None = None) -> nn.Module:
    """A plain model of the base architecture holding the merged weights (``state``, from :func:`export_state`;
    computed here when None, unsharded only), for export; eval mode, no grad."""
    base = base_model(model)
    state = dict(merged_named_weights(model)) if state is None else state
    with torch.random.fork_rng(devices=[]):
        plain = type(base)._from_config(base.config, dtype=next(iter(state.values())).dtype)
    missing, unexpected = plain.load_state_dict(state, strict=False)
    tied = set(getattr(plain, "_tied_weights_keys", None) or [])
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"merging the adapters: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return plain.eval().requires_grad_(False)


def save_adapted(model: nn.Module, export: str, directory: Path, state: dict[str, Tensor] | None = None) -> None:
    """Write an adapted policy to ``directory`` as ``model.lora.export`` says: ``merged`` (``save_pretrained`` of the
    base architecture with the adapters merged in) or ``adapter`` (PEFT's ``adapter_config.json`` and
    ``adapter_model.safetensors``). ``state``: :func:`export_state`'s, gathered beforehand on every rank (FSDP2);
    None computes it here (unsharded)."""
    state = export_state(model, export) if state is None else state
    if export == "adapter":
        model.save_pretrained(directory, state_dict=state)
    else:
        merged_copy(model, state).save_pretrained(directory)
