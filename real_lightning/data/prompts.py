"""Prompt text and tokens: chat template when the tokenizer has one, plain text otherwise."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from transformers import AutoConfig, PreTrainedTokenizerBase

from real_lightning.data.records import PromptRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenizedPrompt:
    """A record with its prompt token ids and the text they encode (what the policy sees: the chat template
    applied, the suffix appended)."""

    record: PromptRecord
    ids: list[int]
    text: str = ""


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


def model_positions(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """``max_position_embeddings`` of the model saved next to the tokenizer (its ``name_or_path``), or None.

    The tokenizer is loaded from ``model.pretrained``, so its directory (or hub name, from the local
    cache) holds the model's config; a tokenizer built in memory, or a config without the field, gives None.
    """
    source = getattr(tokenizer, "name_or_path", "")
    if not source:
        return None
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError, KeyError) as err:
        log.debug(
            "no model config next to tokenizer %s (%s): prompt lengths bounded by prompts.max_length", source, err
        )
        return None
    positions = getattr(config, "max_position_embeddings", None)
    return positions if isinstance(positions, int) and positions > 0 else None


def prompt_limit(max_length: int, positions: int | None, max_new_tokens: int) -> tuple[int, str | None]:
    """The longest prompt (tokens) to keep, and why when it is not ``prompts.max_length`` (else None): the
    model's ``positions`` leave room for ``max_new_tokens`` response tokens only after a shorter prompt.

    When ``max_new_tokens`` alone fills the positions, prompts are bounded by the positions (responses then
    run past them anyway; a warning says so).
    """
    if positions is None:
        return max_length, None
    room = positions - max_new_tokens
    why = f"the model's {positions} positions minus the engine's max_new_tokens={max_new_tokens}"
    if room < 1:
        log.warning(
            "the model has %d positions and the engine's max_new_tokens=%d fills them: responses may run past the "
            "positions the model was trained on; lower data.engine.init_args.max_new_tokens",
            positions,
            max_new_tokens,
        )
        room, why = positions, f"the model's {positions} positions"
    return (max_length, None) if room >= max_length else (room, why)


def tokenize_prompts(
    records: list[PromptRecord],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    suffix: str = "",
    name: str = "",
    reason: str | None = None,
) -> list[TokenizedPrompt]:
    """Tokenize; prompts longer than ``max_length`` tokens are dropped, with a warning that counts them.

    ``reason`` says where the limit comes from (None: ``prompts.max_length``; see :func:`prompt_limit`).
    """
    limit = f"prompts.max_length={max_length}" if reason is None else f"{max_length} tokens ({reason})"
    kept, dropped = [], 0
    for record in records:
        text, templated = prompt_text(record, tokenizer, suffix)
        ids = tokenizer(text, add_special_tokens=not templated).input_ids
        if len(ids) > max_length:
            dropped += 1
            continue
        kept.append(TokenizedPrompt(record, ids, text))
    if dropped:
        log.warning("%s: dropped %d of %d prompts longer than %s", name, dropped, len(records), limit)
    if not kept:
        raise ValueError(f"{name}: every prompt is longer than {limit}")
    return kept


def warn_past_positions(prompts: list[TokenizedPrompt], limit: int, reason: str | None, name: str) -> int:
    """Count the prompts longer than ``limit`` tokens and warn when there are any (validation keeps them)."""
    past = sum(len(p.ids) > limit for p in prompts)
    if past and reason is not None:
        log.warning(
            "%s: %d of %d prompts are longer than %d tokens (%s); kept for validation, where the model runs past "
            "its positions",
            name,
            past,
            len(prompts),
            limit,
            reason,
        )
    return past
