"""The Bradley–Terry loss against values by hand."""

import math

import pytest
import torch

from posttrain.losses.reward_model import bradley_terry_loss, pair_score_metrics


def test_bradley_terry_by_hand():
    # gaps r_c - r_r: (2 - 1, 0 - 1) = (1, -1)
    # loss = -log sigmoid(gap) = log(1 + e^-gap): log(1 + e^-1) = 0.313262, log(1 + e) = 1.313262
    chosen = torch.tensor([2.0, 0.0], requires_grad=True)
    rejected = torch.tensor([1.0, 1.0])
    out = bradley_terry_loss(chosen, rejected)
    assert out.loss.tolist() == pytest.approx([math.log1p(math.exp(-1)), math.log1p(math.e)], abs=1e-6)
    assert out.loss.tolist() == pytest.approx([0.313262, 1.313262], abs=1e-6)
    assert out.accuracy.tolist() == [1.0, 0.0] and out.margin.tolist() == [1.0, -1.0]
    # d loss / d r_c = -(1 - sigmoid(gap)): gap 1 -> -(1 - 0.731059) = -0.268941; gap -1 -> -0.731059
    out.loss.sum().backward()
    assert chosen.grad.tolist() == pytest.approx([-0.268941, -0.731059], abs=1e-6)
    m = pair_score_metrics(out, chosen, rejected)
    assert {k: v.item() for k, v in m.items()} == {"accuracy": 1.0, "margin": 0.0, "chosen": 2.0, "rejected": 2.0}


def test_margin_and_centering_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    # margin 0.5: gaps - 0.5 = (0.5, -1.5): log(1 + e^-0.5) = 0.474077, log(1 + e^1.5) = 1.701413
    out = bradley_terry_loss(chosen, rejected, margin=0.5)
    assert out.loss.tolist() == pytest.approx([0.474077, 1.701413], abs=1e-6)
    # centering 0.01 adds 0.01 (r_c + r_r)^2: 0.01 * 9 = 0.09, 0.01 * 1 = 0.01
    out = bradley_terry_loss(chosen, rejected, center_coef=0.01)
    assert out.loss.tolist() == pytest.approx([0.313262 + 0.09, 1.313262 + 0.01], abs=1e-6)
    # a tie is not a correct ranking; its loss is log 2
    tie = bradley_terry_loss(torch.tensor([1.0]), torch.tensor([1.0]))
    assert tie.accuracy.item() == 0.0 and tie.loss.item() == pytest.approx(math.log(2))
    # per-pair margins
    out = bradley_terry_loss(chosen, rejected, margin=torch.tensor([0.5, 0.0]))
    assert out.loss.tolist() == pytest.approx([0.474077, 1.313262], abs=1e-6)
