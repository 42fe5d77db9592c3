"""Typed rollout records: what generation produced and what the loss consumes, and how they are split.

A :class:`RolloutBatch` is split into mini-batches (one optimizer step each) and micro-batches (one
forward/backward each) of *whole groups*: the group-wise losses need every rollout of a prompt together.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import TypeVar

import torch
from torch import Tensor

from real_lightning.rewards.answers import GroundTruth
from real_lightning.rollout.packing import pack_groups

_PROMPT_ALIGNED = ("input_ids", "attention_mask")
"""[B, Lp + T] fields: left-padded prompts followed by right-padded responses."""
_RESPONSE_ALIGNED = ("response_mask", "old_logprobs", "behaviour_logprobs", "ref_logprobs")
"""[B, T] fields aligned with the response tokens (right-padded)."""


@dataclass
class RolloutBatch:
    """B rollouts: prompts (left-padded) followed by responses (right-padded).

    Attributes:
        input_ids: [B, Lp + T] long, prompt tokens then response tokens.
        attention_mask: [B, Lp + T] long, 1 on real tokens (prompt and response, pads 0).
        response_mask: [B, T] bool, response tokens that count: up to the first EOS inclusive, or
            to the end of a stop string, or all T for a truncated response.
        prompt_length: Lp, the column where responses start.
        rewards: [B] float32 verifiable rewards.
        group_ids: [B] long, one id per prompt of the rollout batch (rollouts of a prompt share it).
        prompt_ids: [B] long, the prompt's row index in its dataset.
        truncated: [B] bool, the response hit the length limit without EOS or stop string.
        temperature: sampling temperature; log-probs for the loss use the same.
        policy_version: the optimizer step whose weights sampled the batch (the engine's version).
        rollout_staleness: how many rollout batches before this one those weights were taken (0: at this batch's
            start, as without a producer; up to ``schedule.max_staleness``). Every group of the batch shares it.
        old_logprobs: [B, T] float32 log π_old of the response tokens, or None while not computed
            (and never, when the update is exactly on-policy: π_old = π_θ.detach()).
        behaviour_logprobs: [B, T] float32 log-probs the engine sampled with, when it reports them.
        ref_logprobs: [B, T] float32 log π_ref of the response tokens (the frozen reference policy), computed
            once per rollout batch when the KL penalty is on; else None.
        responses: decoded responses (for sample tables), or empty.
        ground_truths: reference answers (a tuple: accepted answers), or empty.
        prompts: the prompt texts the policy saw (chat template applied), or empty.
        stats: scalars about how the batch was made (seconds per phase, verifier counts), for logging.
    """

    input_ids: Tensor
    attention_mask: Tensor
    response_mask: Tensor
    prompt_length: int
    rewards: Tensor
    group_ids: Tensor
    prompt_ids: Tensor
    truncated: Tensor
    temperature: float
    policy_version: int = 0
    rollout_staleness: int = 0
    old_logprobs: Tensor | None = None
    behaviour_logprobs: Tensor | None = None
    ref_logprobs: Tensor | None = None
    responses: list[str] = field(default_factory=list)
    ground_truths: list[GroundTruth] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def response_ids(self) -> Tensor:
        """[B, T] response tokens."""
        return self.input_ids[:, self.prompt_length :]

    @property
    def response_lengths(self) -> Tensor:
        """[B] number of counted response tokens."""
        return self.response_mask.sum(-1)

    @property
    def num_groups(self) -> int:
        return int(torch.unique(self.group_ids).numel())

    @property
    def padded_tokens(self) -> int:
        """B·(Lp + T): the positions one forward pass over the batch computes."""
        return self.input_ids.numel()

    def select(self, rows: Tensor) -> RolloutBatch:
        """The rollouts at ``rows`` (a [k] long index), trimmed to their own padding."""
        return select_rows(self, rows)

    def trimmed(self) -> RolloutBatch:
        """Drop prompt columns that are padding in every row and response columns past the longest response."""
        if len(self) == 0:
            return self
        prompt_real = self.attention_mask[:, : self.prompt_length].any(0)
        first = int(prompt_real.float().argmax()) if bool(prompt_real.any()) else self.prompt_length
        last = int(self.response_lengths.max())
        end = self.prompt_length + last
        cut = {name: getattr(self, name)[:, first:end] for name in _PROMPT_ALIGNED}
        cut.update({name: t[:, :last] for name in _RESPONSE_ALIGNED if (t := getattr(self, name)) is not None})
        return replace(self, **cut, prompt_length=self.prompt_length - first)

    def to(self, device: torch.device | str) -> RolloutBatch:
        tensors = {
            f.name: getattr(self, f.name).to(device) for f in fields(self) if isinstance(getattr(self, f.name), Tensor)
        }
        return replace(self, **tensors)

    def groups_in_order(self) -> Tensor:
        """[G] distinct group ids in order of first appearance."""
        unique, inverse = torch.unique(self.group_ids, return_inverse=True)
        first = torch.full((unique.numel(),), len(self), dtype=torch.long)
        first.scatter_reduce_(0, inverse, torch.arange(len(self)), reduce="amin")
        return unique[torch.argsort(first)]

    def take_groups(self, group_ids: Tensor) -> RolloutBatch:
        """The rollouts of the given groups, in the order the ids are given."""
        if group_ids.numel() == 0:
            return self.select(torch.zeros(0, dtype=torch.long))
        position = torch.full((int(self.group_ids.max()) + 1,), -1, dtype=torch.long)
        position[group_ids] = torch.arange(group_ids.numel())
        rank = position[self.group_ids]
        keep = torch.nonzero(rank >= 0).flatten()
        return self.select(keep[torch.argsort(rank[keep], stable=True)])

    def minibatches(self, groups_per_minibatch: int, generator: torch.Generator | None = None) -> list[RolloutBatch]:
        """Split into mini-batches of whole groups (group order shuffled by ``generator``); never splits a group."""
        unique = torch.unique(self.group_ids)
        order = unique[torch.randperm(unique.numel(), generator=generator)]
        return [
            self.take_groups(order[start : start + groups_per_minibatch])
            for start in range(0, order.numel(), groups_per_minibatch)
        ]

    def micro_batches(self, max_tokens: int | None = None, max_sequences: int | None = None) -> list[RolloutBatch]:
        """Split into micro-batches of whole groups (see :meth:`micro_batch_rows`)."""
        return [self.select(rows) for rows in self.micro_batch_rows(max_tokens, max_sequences)]

    def micro_batch_rows(self, max_tokens: int | None = None, max_sequences: int | None = None) -> list[Tensor]:
        """Row indices of micro-batches of whole groups, each within the budgets where a group allows.

        ``max_tokens`` bounds the padded positions B·(Lp + T) of a micro-batch and ``max_sequences`` its
        rows; a group larger than a budget forms a micro-batch of its own. Groups are packed longest
        first (less padding). None for both: one micro-batch of every row.
        """
        if len(self) == 0:
            return []
        if max_tokens is None and max_sequences is None:
            return [torch.arange(len(self))]
        order = self.groups_in_order().tolist()
        prompt_real = self.attention_mask[:, : self.prompt_length].sum(-1)
        rows = [torch.nonzero(self.group_ids == g).flatten() for g in order]
        prompts = [int(prompt_real[r].max()) for r in rows]
        responses = [int(self.response_lengths[r].max()) for r in rows]
        bins = pack_groups([len(r) for r in rows], prompts, responses, max_tokens, max_sequences)
        return [torch.cat([rows[g] for g in b]) for b in bins]


@dataclass
class ValidationRollouts:
    """k samples for each of P validation prompts, scored.

    Attributes:
        dataset: name of the validation set.
        correct: [P, k] bool, sample j of prompt p is correct.
        response_lengths: [P, k] long.
        truncated: [P, k] bool.
    """

    dataset: str
    correct: Tensor
    response_lengths: Tensor
    truncated: Tensor


Rows = TypeVar("Rows")


def select_rows(item: Rows, rows: Tensor) -> Rows:
    """Rows of a dataclass of per-row tensors and lists (RolloutBatch, Generation), trimmed to their padding."""
    index = rows.tolist()
    updates = {}
    for f in fields(item):  # type: ignore[arg-type]
        value = getattr(item, f.name)
        if isinstance(value, Tensor):
            updates[f.name] = value[rows]
        elif isinstance(value, list):
            updates[f.name] = [value[i] for i in index] if value else []
        elif isinstance(value, dict):
            updates[f.name] = dict(value)
    out = replace(item, **updates)  # type: ignore[type-var]
    return out.trimmed() if hasattr(out, "trimmed") else out


def concat_rows(items: list[Rows]) -> Rows:
    """Stack dataclasses of rollouts (RolloutBatch, Generation) whose prompt and response widths may differ.

    Prompt-aligned fields are re-padded on the left and right, response-aligned ones on the right
    (padding is masked out wherever it is read), per-row tensors and lists are concatenated; scalar
    fields come from the first item and ``stats`` are dropped. An optional [B, T] field must be set in
    all items or it becomes None.
    """
    nonempty = [b for b in items if len(b)] or items[:1]  # type: ignore[arg-type]
    if len(nonempty) == 1:
        return nonempty[0]
    first = nonempty[0]
    prompt_len = max(b.prompt_length for b in nonempty)  # type: ignore[attr-defined]
    resp_len = max(b.response_mask.shape[1] for b in nonempty)  # type: ignore[attr-defined]
    updates: dict[str, object] = {"prompt_length": prompt_len}
    for f in fields(first):  # type: ignore[arg-type]
        values = [getattr(b, f.name) for b in nonempty]
        if f.name in _PROMPT_ALIGNED or f.name in _RESPONSE_ALIGNED:
            if any(v is None for v in values):
                updates[f.name] = None
                continue
            parts = []
            for b, v in zip(nonempty, values, strict=True):
                right = resp_len - b.response_mask.shape[1]  # type: ignore[attr-defined]
                left = prompt_len - b.prompt_length if f.name in _PROMPT_ALIGNED else 0  # type: ignore[attr-defined]
                parts.append(torch.nn.functional.pad(v, (left, right), value=0))
            updates[f.name] = torch.cat(parts)
        elif isinstance(values[0], Tensor):
            updates[f.name] = torch.cat(values)
        elif isinstance(values[0], list):
            updates[f.name] = [x for v in values for x in v]
        elif isinstance(values[0], dict):
            updates[f.name] = {}
    return replace(first, **updates)  # type: ignore[type-var]


def concat_batches(batches: list[RolloutBatch]) -> RolloutBatch:
    """Stack rollout batches (see :func:`concat_rows`)."""
    return concat_rows(batches)
