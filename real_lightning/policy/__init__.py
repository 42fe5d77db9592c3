"""Policies: the built-in tiny policy and loading of any Hugging Face causal LM."""

from real_lightning.policy.loading import TINY_POLICY_DIR, load_policy
from real_lightning.policy.tiny import build_char_tokenizer, tiny_qwen2_config

__all__ = ["TINY_POLICY_DIR", "build_char_tokenizer", "load_policy", "tiny_qwen2_config"]
