"""The lean decode loop: exact categorical draws, the same tokens as ``model.generate`` where it is deterministic."""

from __future__ import annotations

import pytest
import torch

from real_lightning.policy.loading import TINY_POLICY_DIR, load_policy, load_tokenizer
from real_lightning.rollout.decode import decode, sample_next
from real_lightning.rollout.hf import HFEngine, left_pad


def _chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    keep = expected > 0
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.7])
def test_sample_next_draws_softmax_over_temperature(temperature) -> None:
    """Frequencies of 400,000 draws match softmax(logits / τ); a -inf token is never drawn."""
    logits = torch.tensor([[2.0, 0.5, -1.0, float("-inf"), 1.0, -3.0, 0.0]]).repeat(4000, 1)
    probs = torch.softmax(logits[0] / temperature, -1).double()
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(7, dtype=torch.float64)
    for _ in range(100):
        counts += torch.bincount(sample_next(logits, temperature, generator), minlength=7).double()
    assert counts[3] == 0
    # 5 degrees of freedom: P(χ² > 25) ≈ 1.4e-4; an off-by-one in the inversion gives χ² in the thousands
    assert _chi_square(counts, probs) < 25.0


def test_sample_next_extremes() -> None:
    logits = torch.tensor([[-50.0, 50.0, -50.0], [0.0, float("-inf"), float("-inf")], [1e4, -1e4, 1e4 - 1e-3]])
    generator = torch.Generator().manual_seed(1)
    draws = torch.stack([sample_next(logits, 1.0, generator) for _ in range(2000)])
    assert torch.all(draws[:, 0] == 1) and torch.all(draws[:, 1] == 0)
    assert set(draws[:, 2].tolist()) == {0, 2}  # two tokens 1e-3 apart share the mass, the -1e4 one never
    assert torch.equal(sample_next(logits, 0.0, None), torch.tensor([1, 0, 0]))


def test_sample_next_is_seeded() -> None:
    logits = torch.randn(64, 50)
    a = sample_next(logits, 1.0, torch.Generator().manual_seed(3))
    b = sample_next(logits, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_greedy_loop_equals_generate_token_for_token() -> None:
    """Greedy decoding is deterministic: the loop must reproduce ``model.generate`` exactly (padding, positions,
    KV cache, EOS and the padding after it), on the shipped policy with prompts of different lengths."""
    policy, tokenizer = load_policy(str(TINY_POLICY_DIR)).eval(), load_tokenizer(str(TINY_POLICY_DIR))
    prompts = [tokenizer(t).input_ids for t in ["12+34=", "7+8=", "101+99=", "3="]]
    out = {}
    for decoder in ("loop", "generate"):
        engine = HFEngine(max_new_tokens=12, temperature=0.0, decoder=decoder)
        engine.setup(policy, tokenizer)
        out[decoder] = engine.generate(prompts, n=1, seed=0)  # generate refuses greedy with n > 1
    a, b = out["loop"], out["generate"]
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.response_mask, b.response_mask)
    assert a.texts == b.texts and torch.equal(a.truncated, b.truncated)
    assert a.response_mask.sum(-1).min() < 12  # some rows ended at EOS before the limit


def test_first_token_follows_the_models_distribution() -> None:
    """The first sampled token of each prompt is distributed as softmax(logits at the prompt's end / τ): checks the
    prefill of left-padded prompts (positions from the mask) against a separate unpadded forward."""
    policy, tokenizer = load_policy(str(TINY_POLICY_DIR)).eval(), load_tokenizer(str(TINY_POLICY_DIR))
    prompts = [tokenizer(t).input_ids for t in ["12+34=", "7+8=", "3="]]
    ids, mask = left_pad(prompts, tokenizer.pad_token_id, torch.device("cpu"))
    rows = 3000
    torch.manual_seed(0)
    out = decode(
        policy,
        ids.repeat_interleave(rows, 0),
        mask.repeat_interleave(rows, 0),
        max_new_tokens=1,
        temperature=0.8,
        eos_ids=[tokenizer.eos_token_id],
        pad_id=tokenizer.pad_token_id,
    )
    first = out[:, ids.shape[1]].view(3, rows)
    vocab = policy.config.vocab_size
    with torch.no_grad():
        for p, prompt in enumerate(prompts):
            logits = policy(torch.tensor([prompt])).logits[0, -1]
            probs = torch.softmax(logits / 0.8, -1).double()
            counts = torch.bincount(first[p], minlength=vocab).double()
            likely = probs > 5.0 / rows  # pool the rare tokens into one cell
            pooled_counts = torch.cat([counts[likely], counts[~likely].sum()[None]])
            pooled_probs = torch.cat([probs[likely], probs[~likely].sum()[None]])
            dof = int(likely.sum())
            # mean dof, sd sqrt(2·dof): 5 sd above the mean fails only for a wrong distribution
            assert _chi_square(pooled_counts, pooled_probs) < dof + 5 * (2 * dof) ** 0.5 + 10


def test_loop_stops_when_every_row_ended_and_pads_after_eos() -> None:
    policy, tokenizer = load_policy(str(TINY_POLICY_DIR)).eval(), load_tokenizer(str(TINY_POLICY_DIR))
    ids, mask = left_pad([tokenizer("2+2=").input_ids], tokenizer.pad_token_id, torch.device("cpu"))
    torch.manual_seed(0)
    out = decode(
        policy, ids.repeat(16, 1), mask.repeat(16, 1), max_new_tokens=40, temperature=1.0,
        eos_ids=[tokenizer.eos_token_id], pad_id=tokenizer.pad_token_id,
    )  # fmt: skip
    responses = out[:, ids.shape[1] :]
    eos = responses == tokenizer.eos_token_id
    assert responses.shape[1] < 40 and bool(eos.any(-1).all())  # the trained policy answers within a few tokens
    first = eos.int().argmax(-1)
    after = torch.arange(responses.shape[1])[None, :] > first[:, None]
    assert torch.all(responses[after] == tokenizer.pad_token_id)
    assert bool((responses.shape[1] == first + 1).any())  # the loop ended at the step the last row finished


def test_decoder_option() -> None:
    assert HFEngine().uses_loop and not HFEngine(top_p=0.9).uses_loop and not HFEngine(stop=["\n"]).uses_loop
    assert not HFEngine(decoder="generate").uses_loop
    with pytest.raises(ValueError, match="decoder 'loop' samples plainly"):
        HFEngine(decoder="loop", top_k=5)
    with pytest.raises(ValueError, match="decoder must be"):
        HFEngine(decoder="fast")


def test_synced_rank_keeps_stepping_until_every_rank_is_done(monkeypatch) -> None:
    """With ``synced``, a rank whose rows are done keeps calling the model (each forward of a sharded model is a
    collective) until the other ranks are done too, and returns only its own tokens."""
    import real_lightning.rollout.decode as decode_module

    policy, tokenizer = load_policy(str(TINY_POLICY_DIR)).eval(), load_tokenizer(str(TINY_POLICY_DIR))
    ids, mask = left_pad([tokenizer("12+34=").input_ids], tokenizer.pad_token_id, torch.device("cpu"))
    other_rank_steps = 7  # forwards the other rank needs
    calls = {"forward": 0, "reduce": 0}
    original_forward = policy.forward

    def counting_forward(*args, **kwargs):
        calls["forward"] += 1
        return original_forward(*args, **kwargs)

    def fake_any_rank(flag, device):
        calls["reduce"] += 1
        return flag or calls["forward"] < other_rank_steps

    monkeypatch.setattr(policy, "forward", counting_forward)
    monkeypatch.setattr(decode_module, "_any_rank", fake_any_rank)
    out = decode(
        policy, ids.repeat(2, 1), mask.repeat(2, 1), max_new_tokens=3, temperature=1.0,
        eos_ids=[], pad_id=tokenizer.pad_token_id, synced=True,
    )  # fmt: skip
    assert out.shape[1] == ids.shape[1] + 3  # its own 3 tokens
    assert calls["forward"] == other_rank_steps and calls["reduce"] == other_rank_steps
