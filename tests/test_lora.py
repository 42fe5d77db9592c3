"""LoRA (``model.lora``): only the adapters train and sit in the optimizer and the checkpoint, the base is unchanged
bit for bit, π_ref is the starting policy exactly, engines and exports get the merged weights, bad options fail at
construction naming them."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from real_lightning.module import RealPolicyModule
from real_lightning.policy.export import export_checkpoint
from real_lightning.policy.lora import LoRAConfig, merged_copy, merged_named_weights
from real_lightning.policy.weights import named_full_weights
from real_lightning.rollout.hf import HFEngine
from tests.test_training import make_datamodule, quiet_trainer

LORA = {"r": 4, "alpha": 8.0, "target_modules": "all-linear"}


def _randomise_adapters(module: RealPolicyModule) -> None:
    """B = 0 at the start makes an adapter a no-op; give every B values so that merges are tested."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in module.policy.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * 0.1)


@pytest.mark.parametrize(
    ("lora", "named"),
    [
        ({"r": 0}, "model.lora.r"),
        ({"r": -2}, "model.lora.r"),
        ({"alpha": 0.0}, "model.lora.alpha"),
        ({"dropout": 1.0}, "model.lora.dropout"),
        ({"export": "both"}, "model.lora.export"),
        ({"target_modules": ["q_proj", "qkv"]}, "'qkv' matches no linear layer"),
        ({"target_modules": []}, "model.lora.target_modules"),
    ],
)
def test_a_bad_option_fails_at_construction_naming_it(policy_dir, lora, named) -> None:
    with pytest.raises(ValueError, match=named):
        RealPolicyModule(pretrained=policy_dir, lora=lora)


@pytest.mark.parametrize("dtype", [None, "bfloat16"], ids=["float32", "bf16-base"])
def test_only_adapters_train_the_base_is_unchanged_and_the_reference_is_the_start(policy_dir, tmp_path, dtype) -> None:
    """Three steps with a KL term: the optimizer holds exactly the adapters (and has states for them only), every
    base weight is bit-identical after training, the adapters moved, and π_ref (adapters off) gives the starting
    policy's log-probs exactly. ``model.dtype bfloat16`` holds the base in bf16 (2 bytes per weight) while the
    adapters, their gradients and AdamW states stay float32 (PEFT's adapter upcast)."""
    module = RealPolicyModule(pretrained=policy_dir, lr=1e-2, kl_coef=0.1, lora=LORA, dtype=dtype)
    start = RealPolicyModule(pretrained=policy_dir, dtype=dtype)
    base = {n: p.detach().clone() for n, p in module.policy.named_parameters() if not p.requires_grad}
    adapters = {n: p.detach().clone() for n, p in module.policy.named_parameters() if p.requires_grad}
    assert adapters and all(".lora_A." in n or ".lora_B." in n for n in adapters)
    assert {p.dtype for p in base.values()} == {torch.bfloat16 if dtype else torch.float32}
    assert {p.dtype for p in adapters.values()} == {torch.float32}
    assert 0 < sum(p.numel() for p in adapters.values()) < 0.2 * sum(p.numel() for p in base.values())
    trainer = quiet_trainer(tmp_path, max_steps=3)
    datamodule = make_datamodule(ppo_epochs=3)
    trainer.fit(module, datamodule)

    optimizer = trainer.optimizers[0]
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    trainable = {id(p) for p in module.policy.parameters() if p.requires_grad}
    assert optimized == trainable and set(map(id, optimizer.state)) == trainable
    assert {s["exp_avg"].dtype for s in optimizer.state.values()} == {torch.float32}
    now = dict(module.policy.named_parameters())
    assert all(torch.equal(now[n], base[n]) for n in base), "a frozen base weight changed"
    assert any(not torch.equal(now[n], adapters[n]) for n in adapters), "no adapter moved"

    batch = datamodule.collector._batch  # the last rollout batch
    expected, _ = start.response_logprobs(batch)
    got = module.reference.logprobs(batch, chunk_size=256)
    assert torch.equal(got, expected)
    adapted, _ = module.response_logprobs(batch)
    assert not torch.equal(adapted, expected)


def test_merged_weights_and_exports_equal_the_adapted_policy(policy_dir, tmp_path) -> None:
    """float64: the merged weights engines receive, the merged export (transformers) and the adapter export (PEFT)
    all give the adapted policy's logits; the merged names are the base model's own."""
    module = RealPolicyModule(pretrained=policy_dir, dtype="float64", lora=LORA)
    _randomise_adapters(module)
    ids = torch.randint(3, len(module.tokenizer), (3, 11), generator=torch.Generator().manual_seed(0))
    module.policy.eval()
    with torch.no_grad():
        adapted = module.policy(input_ids=ids).logits
        with module.policy.disable_adapter():
            plain_start = module.policy(input_ids=ids).logits
        assert (adapted - plain_start).abs().max() > 1e-3  # the adapters do something
        merged = merged_copy(module.policy)
        torch.testing.assert_close(merged(input_ids=ids).logits, adapted, rtol=0, atol=1e-10)

    start = AutoModelForCausalLM.from_pretrained(policy_dir)
    assert [n for n, _ in named_full_weights(module.policy)] == [n for n, _ in start.named_parameters()]
    assert dict(merged_named_weights(module.policy)).keys() == dict(named_full_weights(module.policy)).keys()

    module.export_hf(tmp_path / "merged")
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float64)
    module.lora = LoRAConfig(**{**LORA, "export": "adapter"})
    module.export_hf(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    with_adapter = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float64), tmp_path / "adapter"
    )
    with torch.no_grad():
        torch.testing.assert_close(exported(input_ids=ids).logits, adapted, rtol=0, atol=1e-10)
        torch.testing.assert_close(with_adapter.eval()(input_ids=ids).logits, adapted, rtol=0, atol=1e-10)


def test_an_engine_with_a_copy_samples_with_the_merged_weights(policy_dir) -> None:
    """HFEngine ``copy`` (a producer's) builds the base architecture and loads the merged weights: it samples
    exactly what the shared engine samples from the adapted policy."""
    module = RealPolicyModule(pretrained=policy_dir, lora=LORA)
    _randomise_adapters(module)
    prompts = [module.tokenizer("12+34=").input_ids, module.tokenizer("5+6=").input_ids]
    shared, copied = HFEngine(max_new_tokens=6), HFEngine(max_new_tokens=6, weights="copy")
    for engine in (shared, copied):
        engine.setup(module.policy, module.tokenizer)
        engine.update_weights(named_full_weights(module.policy), 1)
    assert type(copied._model).__name__ == "Qwen2ForCausalLM"
    one, two = shared.generate(prompts, 4, seed=3), copied.generate(prompts, 4, seed=3)
    assert one.texts == two.texts


def test_the_checkpoint_holds_the_adapters_and_resumes_them(policy_dir, tmp_path) -> None:
    """``last.ckpt`` holds the adapters (no base weight) and their optimizer states; loading it into a fresh
    module restores the adapters exactly and the base from ``pretrained``."""
    module = RealPolicyModule(pretrained=policy_dir, lr=1e-2, lora=LORA)
    trainer = quiet_trainer(tmp_path, max_steps=2, enable_checkpointing=True)
    trainer.fit(module, make_datamodule())
    path = next(tmp_path.rglob("*.ckpt"))
    checkpoint = torch.load(path, weights_only=True)
    saved = checkpoint["state_dict"]
    adapters = {"policy." + n for n, p in module.policy.named_parameters() if p.requires_grad}
    assert set(saved) == adapters
    assert len(checkpoint["optimizer_states"][0]["state"]) == len(adapters)
    fresh = RealPolicyModule(pretrained=policy_dir, lr=1e-2, lora=LORA)
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"])
    assert all(
        torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), module.state_dict().values(), strict=True)
    )
    # `python -m real_lightning.export` puts the checkpoint's adapters on the base: merged, as the run would export
    export_checkpoint(path, tmp_path / "hf", policy_dir)
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    merged = dict(merged_named_weights(module.policy))
    assert all(torch.equal(p, merged[n]) for n, p in exported.named_parameters())


@pytest.mark.parametrize("dtype", [None, "bfloat16"], ids=["float32", "bf16-base"])
def test_the_weight_layout_is_what_engines_receive(policy_dir, dtype) -> None:
    """A rollout producer sizes its shared weight buffers before any weights are sent: the layout of an adapted
    policy is the merged weights' names, shapes and dtypes (float32 where a bf16 base meets float32 adapters)."""
    from real_lightning.policy.weights import named_weight_layout

    module = RealPolicyModule(pretrained=policy_dir, lora=LORA, dtype=dtype)
    layout = [(n, tuple(t.shape), t.dtype) for n, t in named_weight_layout(module.policy)]
    sent = [(n, tuple(t.shape), t.dtype) for n, t in named_full_weights(module.policy)]
    assert layout == sent
    assert {d for _, _, d in sent} == ({torch.bfloat16, torch.float32} if dtype else {torch.float32})
