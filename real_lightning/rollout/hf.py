"""Rollouts with Hugging Face ``model.generate`` (or a lean KV-cache loop) in the training process: on the training
module itself (``weights: shared``) or on a copy of its weights the module pushes once per policy version
(``weights: copy``)."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Literal

import torch
from torch import Tensor, nn
from transformers import GenerationConfig, PreTrainedTokenizerBase

from real_lightning.logprobs.chunked import sequence_logprobs
from real_lightning.rollout.batch import concat_rows
from real_lightning.rollout.decode import decode
from real_lightning.rollout.engine import Generation, SamplingOptions, engine_sampling


def left_pad(prompts: list[list[int]], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """[P, Lp] left-padded ids and attention mask of token-id lists."""
    length = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, length - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, length - len(prompt) :] = 1
    return ids.to(device), mask.to(device)


def response_extent(responses: Tensor, eos_ids: list[int], stop_lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Counted lengths [B] and "finished" flags [B] of generated responses [B, T].

    A response counts through its first EOS (inclusive); ``stop_lengths`` [B] (-1 where no stop string
    matched) cuts earlier responses at the end of a stop string. Unfinished responses count all T tokens.
    """
    width = responses.shape[1]
    is_eos = torch.isin(responses, torch.tensor(eos_ids, dtype=responses.dtype, device=responses.device))
    has_eos = is_eos.any(-1)
    eos_length = torch.where(has_eos, is_eos.int().argmax(-1) + 1, torch.full_like(has_eos, width, dtype=torch.long))
    lengths = eos_length
    finished = has_eos
    if stop_lengths is not None:
        stopped = (stop_lengths >= 0) & (stop_lengths < lengths)
        lengths = torch.where(stopped, stop_lengths, lengths)
        finished = finished | stopped
    return lengths, finished


class HFEngine:
    """Sample n responses per prompt with ``model.generate`` (left padding, plain softmax sampling).

    Args:
        max_new_tokens: response length limit (tokens).
        temperature: sampling temperature; 0 means greedy.
        top_p: nucleus sampling threshold (1.0: off).
        top_k: top-k sampling (0: off). Anything but ``top_p=1, top_k=0`` samples from a distribution
            other than the one the loss's log-probs assume; the library allows it, as verl does.
        stop: strings that end a response (kept in the response, like vLLM's ``include_stop_str_in_output``).
        ignore_eos: keep sampling after EOS until ``max_new_tokens`` (benchmarks: fixed-length responses).
        max_batch_size: at most this many sequences per ``generate`` call (None: all at once).
        synced_gpus: keep every rank decoding until all ranks are done (Hugging Face's ``synced_gpus``),
            needed when the policy is sharded (FSDP): each forward then gathers parameters on all ranks.
            None: on exactly when the policy's parameters are sharded (``DTensor``) and several ranks run.
        decoder: ``loop`` samples with :func:`real_lightning.rollout.decode.decode` (a lean KV-cache loop
            that draws tokens by inversion; plain sampling only), ``generate`` with ``model.generate``;
            ``auto`` (default): ``loop`` unless ``top_p``, ``top_k`` or ``stop`` ask for ``generate``.
        weights: ``shared`` (default) generates with the training module itself (:meth:`setup` hands it over), so
            :meth:`update_weights` has nothing to copy: it records the version. Under FSDP2 each forward then
            gathers the shards, a collective on every rank. ``copy`` keeps a full copy of the policy of its own
            (built from the model's config in :meth:`setup`; one more copy of the weights in memory), loaded with
            the full tensors :meth:`update_weights` receives: sampling reads nothing of the training module and
            issues no collective, so the engine can sample while the trainer updates (asynchronous rollouts).
            The same weights give the same samples either way.
        behaviour_logprobs: report the log-probs of the sampled tokens under the weights that sampled them (one
            no-grad forward pass after sampling, at the engine's temperature). Off by default: sampling uses the
            training weights (or an exact copy of them), so π_behaviour is π_old up to kernel differences. A
            rollout producer turns it on (:meth:`producer_engine`): there the weights may be older than π_old,
            and truncated importance sampling needs them.
    """

    def __init__(
        self,
        max_new_tokens: int = 512,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        stop: list[str] | None = None,
        ignore_eos: bool = False,
        max_batch_size: int | None = None,
        synced_gpus: bool | None = None,
        decoder: Literal["auto", "loop", "generate"] = "auto",
        weights: Literal["shared", "copy"] = "shared",
        behaviour_logprobs: bool = False,
    ) -> None:
        SamplingOptions(max_new_tokens, temperature, top_p, top_k, tuple(stop or ()), ignore_eos)  # validated
        plain = top_p == 1.0 and top_k == 0 and not stop
        if decoder not in ("auto", "loop", "generate"):
            raise ValueError(f"decoder must be 'auto', 'loop' or 'generate', got {decoder!r}")
        if decoder == "loop" and not plain:
            raise ValueError("decoder 'loop' samples plainly: top_p 1, top_k 0 and no stop strings (or 'generate')")
        if weights not in ("shared", "copy"):
            raise ValueError(f"weights must be 'shared' or 'copy', got {weights!r}")
        self.decoder = decoder
        self.weights = weights
        self.behaviour_logprobs = behaviour_logprobs
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.stop = list(stop or [])
        self.ignore_eos = ignore_eos
        self.max_batch_size = max_batch_size
        self.synced_gpus = synced_gpus
        self._model: nn.Module | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._version = -1

    @property
    def policy_version(self) -> int:
        return self._version

    @property
    def sampling(self) -> SamplingOptions:
        """The sampling options (one record type for every engine)."""
        return engine_sampling(self)

    @property
    def uses_loop(self) -> bool:
        """Whether generation runs :func:`~real_lightning.rollout.decode.decode` rather than ``model.generate``."""
        plain = self.top_p == 1.0 and self.top_k == 0 and not self.stop
        return self.decoder == "loop" or (self.decoder == "auto" and plain)

    def setup(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        """Generate with ``model`` (``weights: shared``: the training policy itself) or with a policy of the same
        architecture built here (``copy``: its weights arrive through :meth:`update_weights`), and ``tokenizer``."""
        self._tokenizer = tokenizer
        self._model = model if self.weights == "shared" else _empty_copy(model)
        self._version = -1

    def producer_engine(self) -> HFEngine:
        """A fresh engine with these options for a rollout producer: its own copy of the weights (``copy``), and
        behaviour log-probs reported (the producer's weights may be older than the trainer's π_old)."""
        fresh = copy.copy(self)
        fresh.stop = list(self.stop)
        fresh.weights, fresh.behaviour_logprobs = "copy", True
        fresh._model, fresh._tokenizer, fresh._version = None, None, -1
        return fresh

    def teardown(self) -> None:
        """Drop the model (the training module's reference, or the copy) and the tokenizer (set up again before
        the next use)."""
        self._model, self._tokenizer, self._version = None, None, -1

    def update_weights(self, named_tensors: Iterable[tuple[str, Tensor]], version: int) -> None:
        """``shared``: the engine reads the policy's live weights, only the version is recorded (nothing is
        consumed). ``copy``: every parameter of the copy is loaded from the (name, full tensor) pairs."""
        if self.weights == "copy":
            if self._model is None:
                raise RuntimeError("HFEngine.update_weights before setup(model, tokenizer)")
            _load_weights(self._model, named_tensors)
        self._version = version

    def _synced(self, model: nn.Module) -> bool:
        if self.synced_gpus is not None:
            return self.synced_gpus
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return False
        from torch.distributed.tensor import DTensor

        return any(isinstance(p, DTensor) for p in model.parameters())

    def _config(self, tokenizer: PreTrainedTokenizerBase, n: int) -> GenerationConfig:
        sampling = self.temperature > 0
        # every field that changes the sampled distribution is set explicitly, so that a model's own
        # generation_config (e.g. top_k=20, repetition_penalty) cannot leak in
        return GenerationConfig(
            do_sample=sampling,
            temperature=self.temperature if sampling else None,
            top_p=self.top_p if sampling else None,
            top_k=self.top_k if sampling else None,
            min_p=None,
            typical_p=1.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            max_new_tokens=self.max_new_tokens,
            num_return_sequences=n,
            eos_token_id=[] if self.ignore_eos else tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            stop_strings=self.stop or None,
            use_cache=True,
        )

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], n: int, seed: int) -> Generation:
        """Sample ``n`` responses per prompt. Rows are grouped by prompt: row ``p·n + j``.

        Sampling draws from a generator seeded with ``seed`` (the global RNG is left as it was).
        """
        if self._model is None or self._tokenizer is None:
            raise RuntimeError("HFEngine.generate before setup(model, tokenizer)")
        if not prompts:
            raise ValueError("generate needs at least one prompt")
        policy, tokenizer = self._model, self._tokenizer
        device = next(policy.parameters()).device
        per_call = len(prompts) if self.max_batch_size is None else max(1, self.max_batch_size // n)
        synced = self._synced(policy)
        with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
            torch.manual_seed(seed)
            chunks = [
                self._generate_chunk(policy, tokenizer, prompts[i : i + per_call], n, device, synced)
                for i in range(0, len(prompts), per_call)
            ]
        generation = concat_rows(chunks)
        if self.behaviour_logprobs:
            generation.behaviour_logprobs = self._behaviour_logprobs(generation)
        return generation

    @torch.no_grad()
    def _behaviour_logprobs(self, generation: Generation) -> Tensor:
        """[P·n, T] float32 log-probs of the sampled tokens under this engine's weights (0 past each response)."""
        assert self._model is not None
        device = next(self._model.parameters()).device
        logprobs, _ = sequence_logprobs(
            self._model,
            generation.input_ids.to(device),
            generation.attention_mask.to(device),
            generation.prompt_length,
            temperature=self.temperature if self.temperature > 0 else 1.0,
        )
        mask = generation.response_mask.to(device)
        return torch.where(mask, logprobs.float(), torch.zeros((), device=device))

    def _generate_chunk(
        self,
        policy: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        prompts: list[list[int]],
        n: int,
        device: torch.device,
        synced: bool = False,
    ) -> Generation:
        ids, mask = left_pad(prompts, tokenizer.pad_token_id, device)
        was_training = policy.training
        policy.eval()
        try:
            if self.uses_loop:
                out = decode(
                    policy,
                    ids.repeat_interleave(n, 0),
                    mask.repeat_interleave(n, 0),
                    max_new_tokens=self.max_new_tokens,
                    temperature=self.temperature,
                    eos_ids=[] if self.ignore_eos else [tokenizer.eos_token_id],
                    pad_id=tokenizer.pad_token_id,
                    synced=synced,
                )
            else:
                out = policy.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    generation_config=self._config(tokenizer, n),
                    tokenizer=tokenizer if self.stop else None,
                    synced_gpus=synced,
                )
        finally:
            policy.train(was_training)
        prompt_length = ids.shape[1]
        responses = out[:, prompt_length:]
        if responses.shape[1] == 0:  # cannot happen with max_new_tokens >= 1, kept for clarity
            raise RuntimeError("generate returned no new tokens")
        eos_ids = [] if self.ignore_eos else [tokenizer.eos_token_id]
        stop_lengths = self._stop_lengths(responses, tokenizer, eos_ids) if self.stop else None
        lengths, finished = response_extent(responses, eos_ids, stop_lengths)
        positions = torch.arange(responses.shape[1], device=device)
        response_mask = positions[None, :] < lengths[:, None]
        truncated = ~finished & (lengths >= self.max_new_tokens)
        texts = [
            tokenizer.decode(row[:length].tolist(), skip_special_tokens=True)
            for row, length in zip(responses, lengths.tolist(), strict=True)
        ]
        attention = torch.cat([mask.repeat_interleave(n, 0), response_mask.long()], dim=1)
        return Generation(out, attention, response_mask, prompt_length, truncated, texts)

    def _stop_lengths(self, responses: Tensor, tokenizer: PreTrainedTokenizerBase, eos_ids: list[int]) -> Tensor:
        """[B] number of tokens through the end of the first stop string, -1 where none occurs."""
        out = []
        for row in responses.tolist():
            if eos_ids and eos_ids[0] in row:
                row = row[: row.index(eos_ids[0])]
            text = tokenizer.decode(row, skip_special_tokens=True)
            if not any(s in text for s in self.stop):
                out.append(-1)
                continue
            lo, hi = 1, len(row)  # smallest prefix whose text contains a stop string
            while lo < hi:
                mid = (lo + hi) // 2
                if any(s in tokenizer.decode(row[:mid], skip_special_tokens=True) for s in self.stop):
                    hi = mid
                else:
                    lo = mid + 1
            out.append(lo)
        return torch.tensor(out, dtype=torch.long, device=responses.device)


def _empty_copy(model: nn.Module) -> nn.Module:
    """A model of ``model``'s class and config on its device, in its parameters' dtype, for weights to be loaded
    into (initialised without touching the global RNG; frozen, in eval mode). An adapted model (LoRA) gives a copy
    of its base architecture, which the merged weights are pushed into."""
    from real_lightning.policy.lora import base_model

    model = base_model(model)
    first = next(model.parameters())
    local = first.to_local() if hasattr(first, "to_local") else first
    device = local.device
    if device.type == "meta":  # a skeleton (a rollout producer's): build on this process's device
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    config = model.config
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]), device:
        built = type(model)._from_config(config, dtype=first.dtype)
    built.requires_grad_(False)
    return built.eval()


@torch.no_grad()
def _load_weights(model: nn.Module, named_tensors: Iterable[tuple[str, Tensor]]) -> None:
    """Copy each (name, full tensor) into the parameter of that name; every parameter must receive one."""
    params = dict(model.named_parameters())
    missing = set(params)
    for name, tensor in named_tensors:
        if name not in params:
            raise KeyError(f"HFEngine copy: the pushed weights name {name!r}, which the copy of the policy lacks")
        params[name].copy_(tensor)
        missing.discard(name)
    if missing:
        raise KeyError(f"HFEngine copy: no weights pushed for {sorted(missing)[:5]} (of {len(missing)})")
