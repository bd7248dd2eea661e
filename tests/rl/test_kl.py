"""KL estimators against values by hand, their gradient, and masking."""

import math

import pytest
import torch

from posttrain.losses.kl import kl_estimate, kl_estimator_names

LN2 = math.log(2)


def test_estimators_by_hand():
    # token 0: p = 0.5, ref = 0.25 -> log r = log(ref / p) = -ln 2
    #   k1 = ln 2 = 0.693147; k2 = (ln 2)^2 / 2 = 0.240227; k3 = 0.5 - 1 + ln 2 = 0.193147
    # token 1: p = 0.25, ref = 0.5 -> log r = ln 2
    #   k1 = -ln 2; k2 = 0.240227; k3 = 2 - 1 - ln 2 = 0.306853
    logp = torch.tensor([[math.log(0.5), math.log(0.25)]])
    ref = torch.tensor([[math.log(0.25), math.log(0.5)]])
    assert kl_estimate(logp, ref, "k1").tolist()[0] == pytest.approx([LN2, -LN2], abs=1e-6)
    assert kl_estimate(logp, ref, "k2").tolist()[0] == pytest.approx([LN2 ** 2 / 2] * 2, abs=1e-6)
    assert kl_estimate(logp, ref, "k3").tolist()[0] == pytest.approx([0.5 - 1 + LN2, 1 - LN2], abs=1e-6)
    assert kl_estimate(logp, ref, "k3").tolist()[0] == pytest.approx([0.193147, 0.306853], abs=1e-6)


def test_k3_gradient_by_hand():
    # d/dlogp [exp(ref - logp) - (ref - logp) - 1] = 1 - exp(ref - logp) = 1 - 0.5 = 0.5
    logp = torch.tensor([[math.log(0.5)]], requires_grad=True)
    kl_estimate(logp, torch.tensor([[math.log(0.25)]]), "k3").sum().backward()
    assert logp.grad.item() == pytest.approx(0.5, abs=1e-6)


def test_mask_clamp_and_names():
    logp, ref = torch.tensor([[0.0, -1.0, -30.0]]), torch.tensor([[0.0, -2.0, 0.0]])
    out = kl_estimate(logp, ref, "k1", mask=torch.tensor([[1, 1, 0]]))
    assert out.tolist() == [[0.0, 1.0, 0.0]]
    # k3 with log r = 30 is e^30 - 31; clamp 10 bounds it
    assert kl_estimate(logp, ref, "k3", clamp=10.0)[0, 2].item() == 10.0
    assert kl_estimator_names() == ["k1", "k2", "k3"]
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        kl_estimate(logp, ref, "k4")
