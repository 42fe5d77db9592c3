"""Loading a policy's tokenizer: a saved character tokenizer comes back exactly as it was built."""

from __future__ import annotations

import pytest

from real_lightning.data.countdown import CountdownTask
from real_lightning.policy.loading import load_tokenizer
from real_lightning.policy.tiny import build_char_tokenizer


@pytest.mark.parametrize("source", ["saved", "builtin:tiny"])
def test_a_saved_character_tokenizer_keeps_every_character(policy_dir, source) -> None:
    """``AutoTokenizer`` alone builds ``Qwen2Tokenizer`` for a Qwen2 directory, whose byte-level pre-tokenizer drops
    the spaces of a countdown prompt (``3 7 9 4>30:`` became ``3794>30:`` in training while the policy was
    warm-started with them): the loaded tokenizer must encode and decode as the built one does."""
    built = build_char_tokenizer()
    loaded = load_tokenizer(policy_dir if source == "saved" else source)
    texts = [r.prompt for r in CountdownTask(num_train=8, num_held_out=2).records("test")]
    texts += ["7*3=21;21+9=30;\\boxed{30}", "a b\nc", "12+34="]
    for text in texts:
        assert loaded(text).input_ids == built(text).input_ids, text
        assert loaded.decode(loaded(text).input_ids) == text
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.padding_side) == (0, 1, "left")
