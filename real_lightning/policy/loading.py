"""Load a policy and its tokenizer from a local path or hub name, or the shipped tiny policy."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

TINY_POLICY_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny-arithmetic-policy"
"""The shipped warm-started tiny policy (built by ``python -m real_lightning.policy.warmstart``)."""

BUILTIN = "builtin:tiny"


def resolve_pretrained(pretrained: str) -> str:
    """``builtin:tiny`` → the shipped directory; anything else is a local path or hub name."""
    if pretrained == BUILTIN:
        if not (TINY_POLICY_DIR / "config.json").is_file():
            raise FileNotFoundError(
                f"the built-in tiny policy is missing from {TINY_POLICY_DIR}; "
                "rebuild it with `python -m real_lightning.policy.warmstart`"
            )
        return str(TINY_POLICY_DIR)
    return pretrained


def load_tokenizer(pretrained: str) -> PreTrainedTokenizerBase:
    """Tokenizer with left padding (for generation) and a pad token (EOS when it has none)."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(pretrained))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(pretrained: str, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """``AutoModelForCausalLM.from_pretrained`` of a local path, hub name or ``builtin:tiny``."""
    return AutoModelForCausalLM.from_pretrained(resolve_pretrained(pretrained), dtype=dtype)
