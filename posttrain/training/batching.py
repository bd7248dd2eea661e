"""Batch plans (which examples go in each micro-batch, per epoch; the minibatches of a
rollout batch, per pass) and collate functions (examples -> tensors) for token-sequence
examples ``{"input_ids": [...], "labels": [...]}``.

A *plan* is a pure function of ``(seed, epoch)``: the order of an epoch is recreated
from them on resume instead of being stored, so a resumed run sees exactly the batches an
uninterrupted run would.

Packing puts several examples in one row. Rows carry ``position_ids`` that restart at 0
for each example and no ``attention_mask``: transformers (5.x, ``masking_utils``) then
derives a block-diagonal causal mask from the position resets for the sdpa and eager
attention paths, and flash-attention uses them as varlen boundaries, so no example
attends to another. The first label of each example is masked so the previous example's
last token is not trained to predict it; a packed batch therefore gives the same loss
and gradients as the same examples unpacked (``tests/training/test_batching.py``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

IGNORE_INDEX = -100

Example = dict  # {"input_ids": list[int], "labels": list[int]}
BatchPlan = Callable[[int], list[list[int]]]


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """The example order of one epoch, a function of ``(seed, epoch)`` only."""
    if not shuffle:
        return list(range(n))
    return np.random.default_rng([seed, epoch]).permutation(n).tolist()


def chunked_plan(n: int, batch_size: int, seed: int, shuffle: bool = True) -> BatchPlan:
    """Plan: shuffle the examples each epoch and cut them into micro-batches of
    ``batch_size`` (the last one may be smaller)."""

    def plan(epoch: int) -> list[list[int]]:
        order = epoch_order(n, seed, epoch, shuffle)
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]

    return plan


def length_grouped_plan(lengths: Sequence[int], batch_size: int, seed: int, group: int = 64) -> BatchPlan:
    """Plan: shuffle, then sort by length within windows of ``group`` micro-batches and
    shuffle the resulting micro-batches, so each batch holds similar lengths (less padding)
    while the epoch stays random. ``group=1`` is plain shuffling."""
    n = len(lengths)

    def plan(epoch: int) -> list[list[int]]:
        order = epoch_order(n, seed, epoch)
        window = batch_size * group
        batches = []
        for start in range(0, n, window):
            chunk = sorted(order[start : start + window], key=lambda i: -lengths[i])
            batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
        perm = np.random.default_rng([seed, epoch, 1]).permutation(len(batches))
        return [batches[i] for i in perm]

    return plan


def pack_rows(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Next-fit packing of positions ``0..len(lengths)-1`` (in the given order) into rows
    of at most ``max_length`` tokens; an example longer than a row gets a row of its own."""
    rows: list[list[int]] = []
    used = max_length + 1
    for i, n in enumerate(lengths):
        if used + n > max_length:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += n
    return rows


def packed_plan(lengths: Sequence[int], rows_per_batch: int, max_length: int, seed: int,
                shuffle: bool = True) -> BatchPlan:
    """Plan: shuffle, pack in that order into rows of ``max_length`` tokens, and put
    ``rows_per_batch`` rows in each micro-batch. ``packed_collate`` with the same
    ``max_length`` rebuilds the same rows from a micro-batch's examples."""
    n = len(lengths)

    def plan(epoch: int) -> list[list[int]]:
        order = epoch_order(n, seed, epoch, shuffle)
        rows = [[order[j] for j in row] for row in pack_rows([lengths[i] for i in order], max_length)]
        return [sum(rows[i : i + rows_per_batch], []) for i in range(0, len(rows), rows_per_batch)]

    return plan


def pad_collate(examples: Sequence[Example], pad_id: int, width: int | None = None) -> dict:
    """Right-pad ``input_ids`` (with ``pad_id``) and ``labels`` (with -100) to the longest
    example, or to ``width`` when given (static shapes for a compiled model);
    ``attention_mask`` marks real tokens. ``n_tokens`` (a Python int) counts them, for
    throughput without a device sync."""
    width = max([len(e["input_ids"]) for e in examples] + [width or 0])
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    n_tokens = 0
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.as_tensor(e["input_ids"], dtype=torch.long)
        labels[i, :n] = torch.as_tensor(e["labels"], dtype=torch.long)
        mask[i, :n] = 1
        n_tokens += n
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "n_tokens": n_tokens}


def packed_collate(examples: Sequence[Example], pad_id: int, max_length: int, width: int | None = None) -> dict:
    """Pack examples (in the given order, next-fit) into rows of at most ``max_length``
    tokens. Returns ``input_ids``, ``labels``, ``position_ids`` (restarting at 0 per
    example) and no ``attention_mask``. Row padding gets its own position run, so it forms
    a separate masked-out segment. Rows are as wide as the fullest one, or ``width`` when
    given (static shapes for a compiled model)."""
    rows = pack_rows([len(e["input_ids"]) for e in examples], max_length)
    width = max([sum(len(examples[i]["input_ids"]) for i in row) for row in rows] + [width or 0])
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    n_tokens = 0
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            e = examples[i]
            n = len(e["input_ids"])
            ids[r, at : at + n] = torch.as_tensor(e["input_ids"], dtype=torch.long)
            labels[r, at : at + n] = torch.as_tensor(e["labels"], dtype=torch.long)
            # The token before this example belongs to another one: it must not learn to
            # predict this example's first token (unpacked, that label is never used).
            labels[r, at] = IGNORE_INDEX
            pos[r, at : at + n] = torch.arange(n)
            at += n
        pos[r, at:] = torch.arange(width - at)
        n_tokens += at
    return {"input_ids": ids, "labels": labels, "position_ids": pos, "n_tokens": n_tokens}


def minibatch_plan(n: int, minibatches: int, micro_batch_size: int, seed: int, step: int, pass_index: int,
                   shuffle: bool = True) -> list[list[list[int]]]:
    """One pass over a rollout batch of ``n`` samples: ``minibatches`` near-equal parts (one
    optimizer step each), each cut into micro-batches of at most ``micro_batch_size``
    sample indices. The order is a function of ``(seed, step, pass_index)`` only, so a
    resumed run makes the same minibatches. A part is empty when ``n < minibatches``."""
    order = np.random.default_rng([seed, step, pass_index]).permutation(n) if shuffle else np.arange(n)
    parts = np.array_split(order, minibatches)
    return [[part[i : i + micro_batch_size].tolist() for i in range(0, len(part), micro_batch_size)]
            for part in parts]
