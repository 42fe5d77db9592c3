"""The log-probs the loss uses are the log-probs of the distribution ``generate`` sampled from."""

from __future__ import annotations

import torch

from real_lightning.logprobs import sequence_logprobs
from real_lightning.rollout.hf import HFEngine, left_pad, response_extent


def test_training_logprobs_equal_generate_scores(tiny_policy, char_tokenizer) -> None:
    engine = HFEngine(max_new_tokens=8, temperature=0.7)
    prompts = [char_tokenizer(t).input_ids for t in ["1+2=", "33+44=", "5="]]
    ids, mask = left_pad(prompts, char_tokenizer.pad_token_id, torch.device("cpu"))
    torch.manual_seed(0)
    with torch.no_grad():
        out = tiny_policy.generate(
            input_ids=ids,
            attention_mask=mask,
            generation_config=engine._config(char_tokenizer, 4),
            output_scores=True,
            return_dict_in_generate=True,
        )
    start = ids.shape[1]
    responses = out.sequences[:, start:]
    # scores are the processed logits generate sampled from (temperature applied, nothing else)
    sampled = torch.log_softmax(torch.stack(out.scores, 1).float(), -1).gather(-1, responses[..., None])[..., 0]
    lengths, _ = response_extent(responses, [char_tokenizer.eos_token_id])
    response_mask = torch.arange(responses.shape[1])[None] < lengths[:, None]
    attention = torch.cat([mask.repeat_interleave(4, 0), response_mask.long()], 1)
    with torch.no_grad():
        ours, _ = sequence_logprobs(tiny_policy, out.sequences, attention, start, temperature=0.7)
    assert torch.all(((ours - sampled).abs() * response_mask) < 1e-5)
