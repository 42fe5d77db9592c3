"""Export a RealPolicyModule checkpoint to a Hugging Face directory (model + tokenizer), on demand.

    python -m real_lightning.export runs/quickstart/version_0/checkpoints/last.ckpt runs/quickstart/hf-last

The directory loads with ``AutoModelForCausalLM`` / ``AutoTokenizer`` (and vLLM), and with
``real-lightning validate --model.pretrained DIR``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from real_lightning.module import RealPolicyModule


def export_checkpoint(checkpoint: str | Path, directory: str | Path) -> Path:
    """Load the module from ``checkpoint`` (CPU) and ``save_pretrained`` its policy and tokenizer."""
    module = RealPolicyModule.load_from_checkpoint(str(checkpoint), map_location="cpu", weights_only=False)
    return module.export_hf(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("directory", type=Path)
    args = parser.parse_args()
    print(f"exported to {export_checkpoint(args.checkpoint, args.directory)}")


if __name__ == "__main__":
    main()
