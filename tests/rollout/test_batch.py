"""RolloutBatch: mini-batches of whole groups, selection, trimming, concatenation."""

from __future__ import annotations

import torch

from real_lightning.rollout.batch import RolloutBatch, concat_batches


def make_rollouts(groups: int = 6, n: int = 4, prompt: int = 5, response: int = 7, seed: int = 0) -> RolloutBatch:
    gen = torch.Generator().manual_seed(seed)
    size = groups * n
    prompt_lengths = torch.randint(1, prompt + 1, (size,), generator=gen)
    response_lengths = torch.randint(1, response + 1, (size,), generator=gen)
    cols = torch.arange(prompt + response)
    prompt_mask = cols[None, :prompt] >= prompt - prompt_lengths[:, None]
    response_mask = cols[None, :response] < response_lengths[:, None]
    ids = torch.randint(2, 90, (size, prompt + response), generator=gen)
    return RolloutBatch(
        input_ids=ids,
        attention_mask=torch.cat([prompt_mask, response_mask], 1).long(),
        response_mask=response_mask,
        prompt_length=prompt,
        rewards=torch.randint(0, 2, (size,), generator=gen).float(),
        group_ids=torch.arange(groups).repeat_interleave(n),
        prompt_ids=torch.arange(groups).repeat_interleave(n) * 10,
        truncated=torch.zeros(size, dtype=torch.bool),
        temperature=1.0,
        old_logprobs=-torch.rand(size, response, generator=gen),
        responses=[f"r{i}" for i in range(size)],
        ground_truths=[f"g{i // n}" for i in range(size)],
    )


def test_minibatches_hold_whole_groups_and_cover_the_batch() -> None:
    batch = make_rollouts(groups=7, n=3)
    parts = batch.minibatches(2, torch.Generator().manual_seed(0))
    assert [p.num_groups for p in parts] == [2, 2, 2, 1]
    seen = []
    for part in parts:
        for g in torch.unique(part.group_ids).tolist():
            assert int((part.group_ids == g).sum()) == 3  # never split
            seen.append(g)
        assert all(r[1:] and int(r[1:]) // 3 in torch.unique(part.group_ids).tolist() for r in part.responses)
    assert sorted(seen) == list(range(7))


def test_select_keeps_rows_aligned_and_trims_padding() -> None:
    batch = make_rollouts()
    rows = torch.tensor([3, 0, 9])
    sub = batch.select(rows)
    assert sub.responses == ["r3", "r0", "r9"] and sub.ground_truths == [batch.ground_truths[i] for i in rows]
    width = int(batch.response_lengths[rows].max())
    assert sub.response_mask.shape[1] == width
    for i, row in enumerate(rows.tolist()):
        assert torch.equal(sub.response_ids[i, :width], batch.response_ids[row, :width])
        assert torch.equal(sub.old_logprobs[i], batch.old_logprobs[row, :width])
        n_prompt = int(batch.attention_mask[row, : batch.prompt_length].sum())
        assert torch.equal(
            sub.input_ids[i, sub.prompt_length - n_prompt : sub.prompt_length],
            batch.input_ids[row, batch.prompt_length - n_prompt : batch.prompt_length],
        )
    assert sub.attention_mask[:, : sub.prompt_length].any(0).all()  # no all-padding prompt column left


def test_concat_repads_different_widths() -> None:
    a, b = make_rollouts(groups=2, prompt=3, response=4, seed=1), make_rollouts(groups=2, prompt=6, response=2, seed=2)
    b.group_ids = b.group_ids + 2
    both = concat_batches([a, b])
    assert len(both) == len(a) + len(b) and both.prompt_length == 6 and both.response_mask.shape[1] == 4
    assert torch.equal(both.response_ids[: len(a)], a.response_ids)
    assert torch.equal(both.input_ids[len(a) :, 6:8], b.response_ids)
    assert both.responses == a.responses + b.responses


def _unequal_groups(seed: int = 3) -> RolloutBatch:
    """Groups of sizes 1..5 with shuffled, non-contiguous ids."""
    batch = make_rollouts(groups=5, n=3, seed=seed)
    sizes = [1, 5, 2, 4, 3]
    ids = torch.tensor([gid for gid, size in zip([40, 7, 19, 3, 11], sizes, strict=True) for _ in range(size)])
    batch.group_ids = ids[torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))]
    return batch


def test_micro_batches_hold_whole_groups_within_the_budget() -> None:
    batch = _unequal_groups()
    for max_tokens, max_sequences in ((None, 5), (None, 6), (40, None), (60, 8), (1, None)):
        rows = batch.micro_batch_rows(max_tokens, max_sequences)
        assert sorted(torch.cat(rows).tolist()) == list(range(len(batch)))  # every row exactly once
        for part_rows in rows:
            part = batch.select(part_rows)
            groups = torch.unique(part.group_ids)
            for g in groups.tolist():  # never split a group
                assert int((part.group_ids == g).sum()) == int((batch.group_ids == g).sum())
            if len(groups) > 1:  # several groups only when they fit together
                assert max_sequences is None or len(part) <= max_sequences
                assert max_tokens is None or part.padded_tokens <= max_tokens
    assert (
        len(batch.micro_batch_rows()) == 1
        and batch.micro_batches()[0].padded_tokens == batch.select(torch.arange(len(batch))).padded_tokens
    )


def test_take_groups_keeps_the_given_order() -> None:
    batch = _unequal_groups()
    part = batch.take_groups(torch.tensor([19, 40]))
    assert part.group_ids.tolist() == [19, 19, 40]
    assert len(batch.take_groups(torch.zeros(0, dtype=torch.long))) == 0
    assert batch.groups_in_order().tolist() == list(dict.fromkeys(batch.group_ids.tolist()))
