"""Typed rollout records: what generation produced and what the loss consumes."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch
from torch import Tensor


@dataclass
class RolloutBatch:
    """B = P·n rollouts: prompts (left-padded) followed by responses (right-padded).

    Attributes:
        input_ids: [B, Lp + T] long, prompt tokens then response tokens.
        attention_mask: [B, Lp + T] long, 1 on real tokens (prompt and response, pads 0).
        response_mask: [B, T] bool, response tokens that count: up to the first EOS inclusive, or
            to the end of a stop string, or all T for a truncated response.
        prompt_length: Lp, the column where responses start.
        rewards: [B] float32 verifiable rewards.
        group_ids: [B] long, one id per prompt of this rollout batch (rollouts of a prompt share it).
        prompt_ids: [B] long, the prompt's row index in its dataset.
        truncated: [B] bool, the response hit the length limit without EOS or stop string.
        temperature: sampling temperature; log-probs for the loss use the same.
        old_logprobs: [B, T] float32 log π_old of the response tokens, or None when the update is
            exactly on-policy (one mini-batch, one epoch) and π_old = π_θ.detach() at the update.
        responses: decoded responses (for sample tables), or empty.
        ground_truths: reference answers, or empty.
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
    old_logprobs: Tensor | None = None
    responses: list[str] = field(default_factory=list)
    ground_truths: list[str] = field(default_factory=list)
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

    def select(self, rows: Tensor) -> RolloutBatch:
        """The rollouts at ``rows`` (a [k] long index), trimmed to their own padding."""
        index = rows.tolist()
        tensors = {
            f.name: getattr(self, f.name)[rows] for f in fields(self) if isinstance(getattr(self, f.name), Tensor)
        }
        lists = {
            name: [getattr(self, name)[i] for i in index] if getattr(self, name) else []
            for name in ("responses", "ground_truths")
        }
        return replace(self, **tensors, **lists, stats=dict(self.stats)).trimmed()

    def trimmed(self) -> RolloutBatch:
        """Drop prompt columns that are padding in every row and response columns past the longest response."""
        if len(self) == 0:
            return self
        prompt_real = self.attention_mask[:, : self.prompt_length].any(0)
        first = int(prompt_real.float().argmax()) if bool(prompt_real.any()) else self.prompt_length
        last = int(self.response_lengths.max())
        end = self.prompt_length + last
        return replace(
            self,
            input_ids=self.input_ids[:, first:end],
            attention_mask=self.attention_mask[:, first:end],
            response_mask=self.response_mask[:, :last],
            old_logprobs=None if self.old_logprobs is None else self.old_logprobs[:, :last],
            prompt_length=self.prompt_length - first,
        )

    def to(self, device: torch.device | str) -> RolloutBatch:
        tensors = {
            f.name: getattr(self, f.name).to(device) for f in fields(self) if isinstance(getattr(self, f.name), Tensor)
        }
        return replace(self, **tensors)

    def minibatches(self, groups_per_minibatch: int, generator: torch.Generator | None = None) -> list[RolloutBatch]:
        """Split into mini-batches of whole groups (shuffled group order); never splits a group."""
        unique = torch.unique(self.group_ids)
        order = unique[torch.randperm(unique.numel(), generator=generator)]
        out = []
        for start in range(0, order.numel(), groups_per_minibatch):
            chosen = order[start : start + groups_per_minibatch]
            rows = torch.nonzero(torch.isin(self.group_ids, chosen)).flatten()
            out.append(self.select(rows))
        return out


@dataclass
class ValidationRollouts:
    """k samples for each of P validation prompts, scored.

    Attributes:
        dataset: name of the validation set.
        correct: [P, k] bool, sample j of prompt p is correct.
        response_lengths: [P, k] long.
        truncated: [P, k] bool.
        prompt_ids: [P] long, row indices in the validation set.
    """

    dataset: str
    correct: Tensor
    response_lengths: Tensor
    truncated: Tensor
    prompt_ids: Tensor


def concat_batches(batches: list[RolloutBatch]) -> RolloutBatch:
    """Stack rollout batches of possibly different prompt and response widths (re-padded; stats dropped)."""
    batches = [b for b in batches if len(b)] or batches[:1]
    if len(batches) == 1:
        return batches[0]
    prompt_len = max(b.prompt_length for b in batches)
    resp_len = max(b.response_mask.shape[1] for b in batches)
    pad_id = 0  # padded positions are masked out everywhere they are read

    def pad(t: Tensor, left: int, right: int, value: float) -> Tensor:
        return torch.nn.functional.pad(t, (left, right), value=value)

    parts: dict[str, list[Tensor]] = {k: [] for k in ("input_ids", "attention_mask", "response_mask", "old")}
    for b in batches:
        left, right = prompt_len - b.prompt_length, resp_len - b.response_mask.shape[1]
        parts["input_ids"].append(pad(b.input_ids, left, right, pad_id))
        parts["attention_mask"].append(pad(b.attention_mask, left, right, 0))
        parts["response_mask"].append(pad(b.response_mask, 0, right, False))
        if b.old_logprobs is not None:
            parts["old"].append(pad(b.old_logprobs, 0, right, 0.0))
    first = batches[0]
    return RolloutBatch(
        input_ids=torch.cat(parts["input_ids"]),
        attention_mask=torch.cat(parts["attention_mask"]),
        response_mask=torch.cat(parts["response_mask"]),
        prompt_length=prompt_len,
        rewards=torch.cat([b.rewards for b in batches]),
        group_ids=torch.cat([b.group_ids for b in batches]),
        prompt_ids=torch.cat([b.prompt_ids for b in batches]),
        truncated=torch.cat([b.truncated for b in batches]),
        temperature=first.temperature,
        old_logprobs=torch.cat(parts["old"]) if len(parts["old"]) == len(batches) else None,
        responses=[r for b in batches for r in b.responses],
        ground_truths=[g for b in batches for g in b.ground_truths],
    )
