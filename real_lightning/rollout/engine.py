"""The rollout-engine protocol: anything that samples n responses per prompt from the policy.

Lifecycle (DESIGN.md §3): :meth:`RolloutEngine.setup` once the device and process group exist;
:meth:`~RolloutEngine.update_weights` from named tensors once per policy version (the module pushes
them; an engine never reads the trainer); :meth:`~RolloutEngine.generate` with an explicit seed. An engine
may also have ``sleep()`` (free its memory; the collector calls it after sampling a rollout batch) and
``wake_up()`` (it wakes itself before generating or loading weights), and ``teardown()`` (free everything;
the module calls it when fit ends, and sets the engine up again before its next use).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase


@dataclass
class Generation:
    """P prompts × n samples; row ``p·n + j`` is sample j of prompt p.

    Attributes:
        input_ids: [P·n, Lp + T] left-padded prompts followed by right-padded responses.
        attention_mask: [P·n, Lp + T] 1 on real prompt and response tokens.
        response_mask: [P·n, T] bool, the response tokens that count (through the first EOS, or the
            end of a stop string, or all of them when truncated).
        prompt_length: Lp.
        truncated: [P·n] bool, stopped by the length limit.
        texts: decoded responses, special tokens removed, cut after a stop string.
        behaviour_logprobs: [P·n, T] float32 log-probs of the sampled tokens under the distribution the
            engine sampled from, or None when the engine samples with the training weights themselves
            (then they equal π_old up to kernel differences).
    """

    input_ids: Tensor
    attention_mask: Tensor
    response_mask: Tensor
    prompt_length: int
    truncated: Tensor
    texts: list[str]
    behaviour_logprobs: Tensor | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @classmethod
    def from_token_lists(
        cls,
        prompts: Sequence[Sequence[int]],
        n: int,
        responses: Sequence[Sequence[int]],
        truncated: Sequence[bool],
        texts: Sequence[str],
        pad_id: int,
        behaviour_logprobs: Sequence[Sequence[float]] | None = None,
    ) -> Generation:
        """Pad token lists into a :class:`Generation` (``responses[p·n + j]`` answers ``prompts[p]``).

        Every token of a response counts (engines that stop at EOS or a stop string return exactly the
        tokens through it).
        """
        if len(responses) != len(prompts) * n:
            raise ValueError(f"{len(responses)} responses for {len(prompts)} prompts × n={n}")
        prompt_width = max(len(p) for p in prompts)
        width = max(1, max(len(r) for r in responses))
        ids, attention, mask, behaviour = [], [], [], []
        for row, response in enumerate(responses):
            prompt, length = list(prompts[row // n]), len(response)
            left, right = prompt_width - len(prompt), width - length
            ids.append([pad_id] * left + prompt + list(response) + [pad_id] * right)
            attention.append([0] * left + [1] * (len(prompt) + length) + [0] * right)
            mask.append([True] * length + [False] * right)
            if behaviour_logprobs is not None:
                logprobs = list(behaviour_logprobs[row])
                if len(logprobs) != length:
                    raise ValueError(f"row {row}: {len(logprobs)} behaviour log-probs for {length} response tokens")
                behaviour.append(logprobs + [0.0] * right)
        return cls(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(attention, dtype=torch.long),
            response_mask=torch.tensor(mask, dtype=torch.bool),
            prompt_length=prompt_width,
            truncated=torch.tensor(list(truncated), dtype=torch.bool),
            texts=list(texts),
            behaviour_logprobs=torch.tensor(behaviour, dtype=torch.float32) if behaviour_logprobs is not None else None,
        )


@dataclass(frozen=True)
class SamplingOptions:
    """What every engine samples with, validated once (:func:`check_sampling`); an engine reports its own as
    ``engine.sampling``.

    Attributes:
        max_new_tokens: response length limit (tokens).
        temperature: sampling temperature (0: greedy); the loss's log-probs use the same.
        top_p: nucleus threshold (1: off).
        top_k: top-k (0: off).
        stop: strings that end a response (kept in it).
        ignore_eos: sample past EOS until ``max_new_tokens``.
    """

    max_new_tokens: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        check_sampling(self.max_new_tokens, self.temperature, self.top_p, self.top_k)

    @property
    def plain(self) -> bool:
        """Plain softmax sampling at the temperature: the distribution the loss's log-probs assume."""
        return self.top_p == 1.0 and self.top_k == 0 and not self.stop


def engine_sampling(engine: object) -> SamplingOptions:
    """The :class:`SamplingOptions` of an engine that keeps them as attributes (``max_new_tokens``, ...)."""
    return SamplingOptions(
        max_new_tokens=engine.max_new_tokens,  # type: ignore[attr-defined]
        temperature=engine.temperature,  # type: ignore[attr-defined]
        top_p=getattr(engine, "top_p", 1.0),
        top_k=getattr(engine, "top_k", 0),
        stop=tuple(getattr(engine, "stop", ()) or ()),
        ignore_eos=getattr(engine, "ignore_eos", False),
    )


def check_sampling(max_new_tokens: int, temperature: float, top_p: float, top_k: int) -> None:
    """Raise ``ValueError`` naming the sampling option that is out of range (shared by every engine)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0: off), got {top_k}")


def check_training_temperature(temperature: float, option: str = "data.engine.init_args.temperature") -> None:
    """Raise ``ValueError`` when a training engine samples greedily (``temperature`` 0).

    Greedy sampling makes the n rollouts of a group identical, so no group has a reward contrast and
    the log-probs of the loss (computed at the engine's temperature) are undefined. Validation may
    sample greedily: give it its own engine (``data.val_engine``).
    """
    if temperature == 0:
        raise ValueError(
            f"{option}=0 samples greedily: the rollouts of a group are identical, so no group has a reward "
            "contrast to learn from (and log-probs at temperature 0 are undefined); train with a temperature > 0 "
            "(e.g. 1.0) and, for greedy validation, set data.val_engine to an engine with temperature 0"
        )


@runtime_checkable
class RolloutEngine(Protocol):
    """Samples responses from the policy whose weights were last pushed with :meth:`update_weights`.

    ``temperature`` is part of the contract: log-probs for the loss are computed at the same
    temperature, so that s_i = 0 for the policy that generated the rollouts.
    """

    temperature: float
    max_new_tokens: int

    @property
    def policy_version(self) -> int:
        """Version of the weights the engine samples from (-1 before the first push)."""
        ...

    def setup(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        """Called once the device and the process group exist, with the training policy and its tokenizer."""
        ...

    def update_weights(self, named_tensors: Iterable[tuple[str, Tensor]], version: int) -> None:
        """Sample from these weights from now on; ``version`` is the optimizer step that produced them."""
        ...

    def generate(self, prompts: list[list[int]], n: int, seed: int) -> Generation:
        """Sample ``n`` responses for each tokenized prompt, reproducibly for a given ``seed``."""
        ...
