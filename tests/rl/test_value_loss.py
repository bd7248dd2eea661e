"""PPO's clipped value loss, value clip fraction and explained variance, by hand."""

import math

import pytest
import torch

from posttrain.losses.policy import aggregate
from posttrain.losses.value import VF_COEF, clipped_value_loss, explained_variance


def test_clipped_value_loss_by_hand():
    # token 0: V 1.5, V_old 1.0, R 2: plain (1.5-2)^2 = 0.25; V_clip = 1 + 0.2 = 1.2 -> 0.64
    #          -> 0.5 * 0.64 = 0.32, clipped branch active: no gradient
    # token 1: V 0, V_old 0, R 1: both 1 -> 0.5, gradient V - R = -1
    # token 2: V 2, V_old 2, R 1: both 1 -> 0.5, gradient V - R = +1
    # token 3: padding (V 100) contributes nothing
    v = torch.tensor([[1.5, 0.0, 2.0, 100.0]], requires_grad=True)
    old = torch.tensor([[1.0, 0.0, 2.0, 0.0]])
    ret = torch.tensor([[2.0, 1.0, 1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    out = clipped_value_loss(v, old, ret, mask, clip=0.2)
    assert out.per_token.tolist()[0] == pytest.approx([0.32, 0.5, 0.5, 0.0], abs=1e-6)
    total, n = aggregate(out.per_token, mask, "token_mean")
    assert (total / n).item() == pytest.approx(0.44, abs=1e-6)  # (0.32 + 0.5 + 0.5) / 3
    (total / n).backward()
    assert v.grad.tolist()[0] == pytest.approx([0.0, -1 / 3, 1 / 3, 0.0], abs=1e-6)
    m = out.metrics.compute()
    assert m["value/clip_frac"] == pytest.approx(1 / 3)
    assert m["value/loss"] == pytest.approx(0.44, abs=1e-6)
    assert VF_COEF == 0.1


def test_unclipped_value_loss():
    out = clipped_value_loss(torch.tensor([[1.5]]), torch.tensor([[1.0]]), torch.tensor([[2.0]]),
                             torch.tensor([[True]]), clip=None)
    assert out.per_token.item() == pytest.approx(0.125)  # 0.5 * 0.25
    assert out.metrics.compute()["value/clip_frac"] == 0.0


def test_explained_variance_by_hand():
    # R (1, 2, 3, 4), V (1, 2, 3, 3): R - V = (0, 0, 0, 1), var (Bessel) = 0.75 / 3 = 0.25
    # var(R) = (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3 -> 1 - 0.25 / (5/3) = 0.85
    r = torch.tensor([[1.0, 2.0, 3.0, 4.0, 50.0]])
    v = torch.tensor([[1.0, 2.0, 3.0, 3.0, -50.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    assert explained_variance(v, r, mask).item() == pytest.approx(0.85, abs=1e-6)
    assert explained_variance(r, r, mask).item() == pytest.approx(1.0)
    assert math.isnan(explained_variance(v, torch.ones_like(r), mask).item())
