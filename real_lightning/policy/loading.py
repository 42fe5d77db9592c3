"""Load a policy and its tokenizer from a local path or hub name, or the shipped tiny policy."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

TINY_POLICY_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny-arithmetic-policy"
"""The shipped warm-started tiny policy (built by ``python -m real_lightning.policy.warmstart``)."""

PLAIN_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")
"""``tokenizer_class`` values of a tokenizer saved as a plain ``tokenizer.json`` (transformers 5 and 4)."""

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

    Examples:
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
    """Tokenizer with left padding (for generation) and a pad token (EOS when it has none).

    A tokenizer saved as a plain ``tokenizer.json`` (``tokenizer_class`` ``TokenizersBackend`` or
    ``PreTrainedTokenizerFast``, as the character tokenizer of the tiny policies is) is loaded exactly as saved:
    ``AutoTokenizer`` would build the class of the model's type instead (``Qwen2Tokenizer`` for a Qwen2 config),
    whose own pre-tokenizer and normalizer replace the saved ones (the character tokenizer then drops spaces).
    """
    source = resolve_pretrained(pretrained)
    if saved_as_plain_tokenizer_json(source):
        tokenizer = PreTrainedTokenizerFast.from_pretrained(source)
    else:
        tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def saved_as_plain_tokenizer_json(source: str) -> bool:
    """Whether the local directory ``source`` holds a tokenizer saved without a model-specific class."""
    config = Path(source).expanduser() / "tokenizer_config.json"
    if not config.is_file():
        return False
    return json.loads(config.read_text()).get("tokenizer_class") in PLAIN_TOKENIZER_CLASSES


def load_policy(pretrained: str, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """``AutoModelForCausalLM.from_pretrained`` of a local path, hub name or ``builtin:tiny``."""
    return AutoModelForCausalLM.from_pretrained(resolve_pretrained(pretrained), dtype=dtype)
