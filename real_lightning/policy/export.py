"""Export a training checkpoint as a Hugging Face model directory (loadable by transformers and vLLM).

    python -m real_lightning.export runs/x/version_0/checkpoints/last.ckpt runs/x/hf [--pretrained PATH]

The checkpoint is a Lightning ``.ckpt`` file or a distributed checkpoint (a directory of shards written
under FSDP); it is read in one process, without a process group. A LoRA run's checkpoint holds the adapters: they
are put on the base (``model.pretrained``) and written merged, or alone as PEFT adapter files, as its
``model.lora.export`` says. The architecture and tokenizer come
from the run's ``model.pretrained`` (stored in the checkpoint) unless ``--pretrained`` names another copy.
A directory is read without running anything from it (:mod:`real_lightning.checkpoints.safety`): one whose
metadata or entries name anything but checkpoint metadata and plain data is refused.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from real_lightning.checkpoints.safety import load_distributed_checkpoint
from real_lightning.policy.loading import load_policy, load_tokenizer
from real_lightning.policy.lora import LoRAConfig, apply_lora, save_adapted
from real_lightning.utils.dtypes import torch_dtype

_PREFIX = "policy."


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A Lightning checkpoint as a dict (``state_dict``, ``hyper_parameters``, ...), sharded or not."""
    if path.is_dir():  # read without unpickling anything but checkpoint metadata and plain data
        return load_distributed_checkpoint(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, pretrained: str | None = None) -> Path:
    """Write the checkpoint's policy and tokenizer to ``out_dir`` with ``save_pretrained``."""
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    state = read_checkpoint(checkpoint)
    hparams = state.get("hyper_parameters", {})
    source = pretrained or hparams.get("pretrained")
    if not source:
        raise ValueError(f"{checkpoint} names no model.pretrained: pass --pretrained")
    dtype = torch_dtype(hparams.get("dtype"))
    weights = {k[len(_PREFIX) :]: v for k, v in state["state_dict"].items() if k.startswith(_PREFIX)}
    if not weights:
        raise ValueError(f"{checkpoint} holds no policy weights (keys starting with {_PREFIX!r})")
    policy = load_policy(source, dtype)
    out_dir.mkdir(parents=True, exist_ok=True)
    if hparams.get("lora"):  # the checkpoint holds the adapters; the frozen base is ``source``
        export_adapted(policy, LoRAConfig(**hparams["lora"]), weights, out_dir, checkpoint)
    else:
        policy.load_state_dict(weights)  # strict: every weight of the architecture, nothing else
        policy.save_pretrained(out_dir)
    load_tokenizer(source).save_pretrained(out_dir)
    return out_dir


def export_adapted(
    policy: torch.nn.Module, config: LoRAConfig, adapters: dict[str, Any], out_dir: Path, checkpoint: Path
) -> None:
    """Adapters of a LoRA run's checkpoint onto the base ``policy``; writes the merged model or the adapter alone
    (``config.export``). Every adapter must be in the checkpoint, and nothing else."""
    adapted = apply_lora(policy, config)
    expected = {n for n, p in adapted.named_parameters() if p.requires_grad}
    if set(adapters) != expected:
        missing, unexpected = sorted(expected - set(adapters)), sorted(set(adapters) - expected)
        raise ValueError(
            f"{checkpoint}: adapters do not match model.lora: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    adapted.load_state_dict(adapters, strict=False)
    save_adapted(adapted, config.export, out_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a .ckpt file or a distributed checkpoint directory")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--pretrained", help="architecture and tokenizer (default: the run's model.pretrained)")
    args = parser.parse_args(argv)
    print(f"exported {args.checkpoint} to {export_checkpoint(args.checkpoint, args.out_dir, args.pretrained)}")


if __name__ == "__main__":
    main()
