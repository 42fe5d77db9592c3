"""HFEngine: grouping, padding, EOS/stop handling, reproducibility, sampling settings."""

from __future__ import annotations

import pytest
import torch

from real_lightning.rollout.hf import HFEngine, left_pad, response_extent


def _prompts(tokenizer, texts):
    return [tokenizer(t).input_ids for t in texts]


def test_left_padding() -> None:
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0, device=torch.device("cpu"))
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_response_extent_first_eos_inclusive_and_stop_lengths() -> None:
    eos = 1
    responses = torch.tensor([[5, 1, 1, 1], [5, 6, 7, 8], [1, 0, 0, 0], [5, 6, 1, 9]])
    lengths, finished = response_extent(responses, [eos])
    assert lengths.tolist() == [2, 4, 1, 3] and finished.tolist() == [True, False, True, True]
    lengths, finished = response_extent(responses, [eos], torch.tensor([-1, 2, -1, 3]))
    assert lengths.tolist() == [2, 2, 1, 3] and finished.tolist() == [True, True, True, True]


def test_generate_groups_rows_by_prompt_and_masks_responses(tiny_policy, char_tokenizer) -> None:
    engine = HFEngine(max_new_tokens=6)
    engine.setup(tiny_policy, char_tokenizer)
    prompts = _prompts(char_tokenizer, ["1+2=", "33+44=", "5="])
    gen = engine.generate(prompts, n=3, seed=0)
    assert gen.input_ids.shape[0] == 9 and gen.prompt_length == 6
    for row in range(9):  # row p·n + j carries prompt p, left-padded
        prompt = prompts[row // 3]
        assert gen.input_ids[row, 6 - len(prompt) : 6].tolist() == prompt
        assert gen.attention_mask[row, : 6 - len(prompt)].sum() == 0
    lengths = gen.response_mask.sum(-1)
    assert torch.equal(gen.attention_mask[:, 6:].bool(), gen.response_mask)
    assert torch.all((lengths == 6) | ~gen.truncated)  # truncated rows use every token
    for row, text in enumerate(gen.texts):
        assert text == char_tokenizer.decode(gen.input_ids[row, 6 : 6 + lengths[row]], skip_special_tokens=True)


def test_generate_is_reproducible_with_a_seed_and_leaves_global_rng_alone(tiny_policy, char_tokenizer) -> None:
    engine = HFEngine(max_new_tokens=8)
    engine.setup(tiny_policy, char_tokenizer)
    prompts = _prompts(char_tokenizer, ["12+34=", "9+9="])
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = engine.generate(prompts, n=4, seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = engine.generate(prompts, n=4, seed=7)
    c = engine.generate(prompts, n=4, seed=8)
    assert torch.equal(a.input_ids, b.input_ids) and not torch.equal(a.input_ids, c.input_ids)


def test_chunked_generation_stacks_chunks_of_different_widths(tiny_policy, char_tokenizer) -> None:
    engine = HFEngine(max_new_tokens=5, max_batch_size=4)
    engine.setup(tiny_policy, char_tokenizer)
    gen = engine.generate(_prompts(char_tokenizer, ["1=", "22=", "333="]), n=2, seed=0)
    assert gen.input_ids.shape[0] == 6 and gen.response_mask.shape == (6, gen.input_ids.shape[1] - gen.prompt_length)


def test_stop_strings_cut_responses(tiny_policy, char_tokenizer) -> None:
    engine = HFEngine(max_new_tokens=12, stop=["a", "b", "c", "d", "e", "1", "2"])
    engine.setup(tiny_policy, char_tokenizer)
    gen = engine.generate(_prompts(char_tokenizer, ["x=", "y="]), n=8, seed=3)
    stopped = 0
    for text, truncated in zip(gen.texts, gen.truncated.tolist(), strict=True):
        ends = [text.find(s) + len(s) for s in engine.stop if s in text]
        if ends:  # the response ends right after the first stop string
            stopped += 1
            assert min(ends) == len(text) and not truncated
    assert stopped > 0


def test_sampling_config_overrides_model_defaults(char_tokenizer) -> None:
    config = HFEngine(temperature=0.7)._config(char_tokenizer, n=4)
    assert config.do_sample and config.temperature == 0.7 and config.top_p == 1.0 and config.top_k == 0
    assert config.repetition_penalty == 1.0 and config.num_return_sequences == 4
    greedy = HFEngine(temperature=0.0)._config(char_tokenizer, n=1)
    assert not greedy.do_sample


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        ({"temperature": -1}, "temperature must be >= 0"),
        ({"top_p": 0}, "top_p must be in"),
        ({"top_k": -1}, r"top_k must be >= 0 \(0: off\)"),
    ],
)
def test_bad_engine_settings(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        HFEngine(**kwargs)


def test_ignore_eos_samples_max_new_tokens() -> None:
    from real_lightning.policy.loading import BUILTIN, load_policy, load_tokenizer

    tokenizer, policy = load_tokenizer(BUILTIN), load_policy(BUILTIN)
    prompts = _prompts(tokenizer, ["12+34=", "5+6="])
    for ignore_eos in (False, True):
        engine = HFEngine(max_new_tokens=14, ignore_eos=ignore_eos)
        engine.setup(policy, tokenizer)
        gen = engine.generate(prompts, n=3, seed=0)
        lengths = gen.response_mask.sum(-1)
        if ignore_eos:  # every row runs to the limit and counts as truncated
            assert (lengths == 14).all() and gen.truncated.all()
        else:  # the shipped policy answers in 11 tokens and stops
            assert (lengths < 14).all() and not gen.truncated.any()


def _named(model: torch.nn.Module):
    return ((name, param.detach()) for name, param in model.named_parameters())


def test_a_copy_samples_exactly_what_the_shared_module_samples(tiny_policy, char_tokenizer) -> None:
    """``weights: copy`` builds its own policy and loads the pushed weights: the same samples as sampling with the
    training module itself, and the global RNG untouched by building it."""
    prompts = _prompts(char_tokenizer, ["12+34=", "7+5=", "100+1="])
    shared, copied = HFEngine(max_new_tokens=8), HFEngine(max_new_tokens=8, weights="copy")
    shared.setup(tiny_policy, char_tokenizer)
    state = torch.get_rng_state()
    copied.setup(tiny_policy, char_tokenizer)
    assert torch.equal(torch.get_rng_state(), state)
    assert copied._model is not tiny_policy and copied.policy_version == -1
    copied.update_weights(_named(tiny_policy), 0)
    assert copied.policy_version == 0
    a, b = shared.generate(prompts, 4, seed=3), copied.generate(prompts, 4, seed=3)
    assert torch.equal(a.input_ids, b.input_ids) and a.texts == b.texts


def test_a_copy_keeps_its_weights_until_the_next_push(tiny_policy, char_tokenizer) -> None:
    """What lets a copy sample while the trainer updates: changing the training weights changes nothing in the
    copy's samples until they are pushed."""
    prompts = _prompts(char_tokenizer, ["12+34=", "7+5="])
    engine = HFEngine(max_new_tokens=8, weights="copy")
    engine.setup(tiny_policy, char_tokenizer)
    engine.update_weights(_named(tiny_policy), 0)
    before = engine.generate(prompts, 4, seed=1)
    saved = {n: p.detach().clone() for n, p in tiny_policy.named_parameters()}
    with torch.no_grad():
        for param in tiny_policy.parameters():
            param.add_(torch.randn_like(param))  # the trainer moved on
    assert torch.equal(engine.generate(prompts, 4, seed=1).input_ids, before.input_ids)
    engine.update_weights(_named(tiny_policy), 1)
    assert not torch.equal(engine.generate(prompts, 4, seed=1).input_ids, before.input_ids)
    with torch.no_grad():
        for name, param in tiny_policy.named_parameters():
            param.copy_(saved[name])


def test_a_copy_refuses_weights_that_do_not_fit(tiny_policy, char_tokenizer) -> None:
    engine = HFEngine(max_new_tokens=4, weights="copy")
    engine.setup(tiny_policy, char_tokenizer)
    weights = list(_named(tiny_policy))
    with pytest.raises(KeyError, match="no weights pushed for"):
        engine.update_weights(weights[1:], 0)
    with pytest.raises(KeyError, match="'nope'"):
        engine.update_weights([("nope", weights[0][1])], 0)
    with pytest.raises(ValueError, match="weights must be 'shared' or 'copy'"):
        HFEngine(weights="mine")


def test_every_engine_reports_one_sampling_record() -> None:
    from real_lightning.rollout.engine import SamplingOptions

    engine = HFEngine(max_new_tokens=7, temperature=0.6, top_p=0.95, stop=["\n\n"])
    assert engine.sampling == SamplingOptions(7, 0.6, 0.95, 0, ("\n\n",), False)
    assert not engine.sampling.plain and HFEngine().sampling.plain
    from real_lightning.rollout.vllm import VLLMEngine  # vllm itself is imported only by setup

    assert VLLMEngine(max_new_tokens=7, temperature=0.6, top_p=0.95, stop=["\n\n"]).sampling == engine.sampling
    with pytest.raises(ValueError, match="top_p must be in"):
        SamplingOptions(top_p=0.0)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        HFEngine(max_new_tokens=0)
