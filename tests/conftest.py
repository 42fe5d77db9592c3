"""Shared fixtures: a tiny random Qwen2 policy with the character tokenizer."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2ForCausalLM

from real_lightning.policy.tiny import build_char_tokenizer, tiny_qwen2_config


@pytest.fixture(scope="session")
def char_tokenizer():
    return build_char_tokenizer()


def random_tiny_policy(tokenizer) -> Qwen2ForCausalLM:
    """A randomly initialised tiny Qwen2 (hidden 32, 2 layers), seeded: fast, not trained."""
    torch.manual_seed(0)
    config = tiny_qwen2_config(
        len(tokenizer),
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=64,
    )
    return Qwen2ForCausalLM(config)


@pytest.fixture
def tiny_policy(char_tokenizer):
    return random_tiny_policy(char_tokenizer).eval()


@pytest.fixture(scope="session")
def policy_dir(tmp_path_factory, char_tokenizer):
    """The random tiny policy saved with its tokenizer, loadable by ``from_pretrained``."""
    path = tmp_path_factory.mktemp("policy")
    random_tiny_policy(char_tokenizer).save_pretrained(path)
    char_tokenizer.save_pretrained(path)
    return str(path)
