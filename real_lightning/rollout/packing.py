"""Packing whole groups into micro-batches under a token and a row budget."""

from __future__ import annotations


def pack_groups(
    sizes: list[int],
    prompt_widths: list[int],
    response_widths: list[int],
    max_tokens: int | None = None,
    max_sequences: int | None = None,
) -> list[list[int]]:
    """Bins of group indices whose padded size fits the budgets, longest groups first.

    A bin is run as one padded forward pass of rows × (longest prompt + longest response) positions.

    Args:
        sizes: rows of each group.
        prompt_widths: longest prompt of each group (tokens).
        response_widths: longest response of each group (tokens).
        max_tokens: bound on rows × (longest prompt + longest response) of a bin.
        max_sequences: bound on the rows of a bin.

    Returns:
        Lists of group indices; a group that alone exceeds a budget gets a bin of its own. Bins are
        filled greedily in order of decreasing width, so they hold rows of similar length.

    Examples:
        >>> pack_groups([2, 2, 2], [4, 1, 2], [6, 2, 2], max_tokens=20)
        [[0], [2, 1]]
    """
    if not len(sizes) == len(prompt_widths) == len(response_widths):
        raise ValueError("sizes, prompt_widths and response_widths must have one entry per group")
    order = sorted(range(len(sizes)), key=lambda g: -(prompt_widths[g] + response_widths[g]))
    bins: list[list[int]] = []
    rows = prompt = response = 0
    for g in order:
        new_rows, new_prompt, new_response = (
            rows + sizes[g],
            max(prompt, prompt_widths[g]),
            max(response, response_widths[g]),
        )
        fits = (max_tokens is None or new_rows * (new_prompt + new_response) <= max_tokens) and (
            max_sequences is None or new_rows <= max_sequences
        )
        if bins and fits:
            bins[-1].append(g)
            rows, prompt, response = new_rows, new_prompt, new_response
        else:
            bins.append([g])
            rows, prompt, response = sizes[g], prompt_widths[g], response_widths[g]
    return bins
