"""Masked reductions and mergeable metrics."""

import math

import pytest
import torch

from posttrain.rl.stats import Metrics, masked_mean, masked_sum, masked_var


def test_masked_reductions_by_hand():
    x = torch.tensor([[1.0, 2.0, float("nan")], [3.0, float("inf"), 5.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_sum(x, mask).item() == 6.0  # 1 + 2 + 3; NaN and inf are padding
    assert masked_mean(x, mask).item() == 2.0
    assert masked_mean(x, mask, dim=1).tolist() == [1.5, 3.0]
    assert masked_var(x, mask).item() == pytest.approx(1.0)  # (1 + 0 + 1) / (3 - 1)
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(2 / 3)
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0


def test_metrics_merge_like_one_batch():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    whole = Metrics().mean("m", values, mask).max("top", values, mask).min("low", values, mask)
    parts = Metrics()
    for i in range(2):
        parts.update(Metrics().mean("m", values[i:i + 1], mask[i:i + 1]).max("top", values[i:i + 1], mask[i:i + 1])
                     .min("low", values[i:i + 1], mask[i:i + 1]))
    assert whole.compute() == parts.compute() == {"m": 7 / 3, "top": 4.0, "low": 1.0}
    empty = Metrics().mean("m", values, torch.zeros_like(mask)).max("top", values, torch.zeros_like(mask))
    assert all(math.isnan(v) for v in empty.compute().values())
    assert parts.all_reduce() is parts  # no process group: unchanged


def test_item_sums_for_the_trainer():
    m = Metrics().add("clip", 2.0, 8).max("top", torch.tensor([3.0]))
    # mean 2/8 = 0.25, times 8 items = 2 (the plain sum when items are what it counts)
    assert {k: v.item() for k, v in m.item_sums(8).items()} == {"clip": 2.0}
    assert m.item_sums(4)["clip"].item() == 1.0  # 0.25 x 4 sequences
