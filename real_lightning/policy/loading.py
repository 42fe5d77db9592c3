"""Load a policy and its tokenizer from a local path or hub name, or the shipped tiny policy."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

TINY_POLICY_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny-arithmetic-policy"
"""The shipped warm-started tiny policy (built by ``python -m real_lightning.policy.warmstart``)."""

BUILTIN = "builtin:tiny"
BUILTINS = (BUILTIN,)
"""Every ``builtin:`` policy name."""


def looks_like_path(pretrained: str) -> bool:
    """Whether ``pretrained`` can only be a local path: it starts with ``/``, ``.`` or ``~``, or has more
    separators than a hub name (``org/name``) has."""
    separators = pretrained.count("/") + (pretrained.count(os.sep) if os.sep != "/" else 0)
    return pretrained.startswith(("/", ".", "~")) or separators > 1


def resolve_pretrained(pretrained: str) -> str:
    """``builtin:tiny`` → the shipped directory; a local path (``~`` expanded) or a hub name as it is.

    Raises:
        ValueError: an unknown ``builtin:`` name (the message lists the valid ones).
        FileNotFoundError: a name that can only be a local path (:func:`looks_like_path`) and does not exist,
            or a missing shipped policy.

    Example:
        >>> resolve_pretrained("Qwen/Qwen2.5-0.5B")
        'Qwen/Qwen2.5-0.5B'
    """
    if pretrained.startswith("builtin:"):
        if pretrained not in BUILTINS:
            raise ValueError(
                f"model.pretrained: unknown built-in policy {pretrained!r}; valid: {', '.join(BUILTINS)} "
                "(or a local directory or a hub name such as Qwen/Qwen2.5-0.5B)"
            )
        if not (TINY_POLICY_DIR / "config.json").is_file():
            raise FileNotFoundError(
                f"the built-in tiny policy is missing from {TINY_POLICY_DIR}; "
                "rebuild it with `python -m real_lightning.policy.warmstart`"
            )
        return str(TINY_POLICY_DIR)
    if looks_like_path(pretrained):
        path = Path(pretrained).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"model.pretrained {pretrained!r} looks like a local path and {path} does not exist; give an "
                "existing model directory, a hub name such as Qwen/Qwen2.5-0.5B, or builtin:tiny"
            )
        return str(path)
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
