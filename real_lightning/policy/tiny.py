"""The built-in tiny policy: a real ``Qwen2ForCausalLM`` (~1M parameters) with a character-level tokenizer.

Both load with ``AutoTokenizer`` / ``AutoModelForCausalLM.from_pretrained`` (and vLLM), so the
quickstart runs the same code path as a real model, offline.
"""

from __future__ import annotations

import string

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|endoftext|>"


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable ASCII character (and newline), plus pad and EOS: 98 tokens.

    Saved with ``save_pretrained`` it is a plain ``tokenizer.json``. Decoding concatenates the
    characters (no spaces inserted).
    """
    chars = [c for c in string.printable if c not in "\t\n\r\x0b\x0c"] + ["\n"]
    vocab = {token: i for i, token in enumerate([PAD_TOKEN, EOS_TOKEN, *chars])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in (PAD_TOKEN, EOS_TOKEN)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, padding_side="left"
    )


def tiny_qwen2_config(
    vocab_size: int,
    eos_token_id: int,
    pad_token_id: int,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 512,
    max_positions: int = 64,
) -> Qwen2Config:
    """Qwen2 config of the tiny policy: hidden 128, 4 layers, 4 heads (2 KV), MLP 512, tied embeddings."""
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=None,
        attention_dropout=0.0,
    )
