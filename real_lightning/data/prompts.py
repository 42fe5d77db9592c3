"""Prompt text and tokens: chat template when the tokenizer has one, plain text otherwise."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from real_lightning.data.records import PromptRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenizedPrompt:
    """A record with its prompt token ids."""

    record: PromptRecord
    ids: list[int]


def prompt_text(record: PromptRecord, tokenizer: PreTrainedTokenizerBase, suffix: str = "") -> tuple[str, bool]:
    """The text the policy sees, and whether a chat template produced it.

    Plain-text prompts get ``suffix`` appended (e.g. an instruction); chat messages (verl rows) are
    used as they are. With a chat template the messages are rendered with the generation prompt;
    without one the message contents are joined by newlines.
    """
    if isinstance(record.prompt, str):
        messages = [{"role": "user", "content": record.prompt + suffix}]
    else:
        messages = [dict(m) for m in record.prompt]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), True
    return "\n".join(m["content"] for m in messages), False


def tokenize_prompts(
    records: list[PromptRecord], tokenizer: PreTrainedTokenizerBase, max_length: int, suffix: str = "", name: str = ""
) -> list[TokenizedPrompt]:
    """Tokenize; prompts longer than ``max_length`` tokens are dropped, with a warning that counts them."""
    kept, dropped = [], 0
    for record in records:
        text, templated = prompt_text(record, tokenizer, suffix)
        ids = tokenizer(text, add_special_tokens=not templated).input_ids
        if len(ids) > max_length:
            dropped += 1
            continue
        kept.append(TokenizedPrompt(record, ids))
    if dropped:
        log.warning("%s: dropped %d of %d prompts longer than %d tokens", name, dropped, len(records), max_length)
    if not kept:
        raise ValueError(f"{name}: every prompt is longer than prompts.max_length={max_length}")
    return kept
