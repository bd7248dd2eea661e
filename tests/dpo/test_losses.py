"""The DPO losses against values computed by hand with math (not torch)."""

import math

import pytest
import torch

from posttrain.losses.dpo import LossParams, PairLogps, dpo_loss_names, get_dpo_loss, pair_metrics


def _x(pc, pr, rc, rr, lc, lr):
    t = lambda v: torch.tensor([float(v)], dtype=torch.float64)  # noqa: E731
    return PairLogps(t(pc), t(pr), None if rc is None else t(rc), None if rr is None else t(rr), t(lc), t(lr))


def _logsig(v):
    return -math.log1p(math.exp(-v))


X = dict(pc=-10.0, pr=-14.0, rc=-11.0, rr=-12.0, lc=4, lr=8)


def test_registry_lists_the_family():
    assert {"dpo", "dpo_norm", "simpo", "ipo"} <= set(dpo_loss_names())
    assert not get_dpo_loss("simpo").needs_reference and get_dpo_loss("dpo").needs_reference
    with pytest.raises(KeyError, match="unknown DPO loss"):
        get_dpo_loss("nope")


def test_dpo_sigmoid_by_hand():
    # z = (-10 - -11) - (-14 - -12) = 1 + 2 = 3; beta 0.1 -> loss = -log sigmoid(0.3)
    out = get_dpo_loss("dpo").fn(_x(**X), LossParams(beta=0.1))
    assert out.loss.item() == pytest.approx(-_logsig(0.3), abs=1e-12)
    assert out.loss.item() == pytest.approx(0.554355244468527, abs=1e-12)
    assert out.chosen_rewards.item() == pytest.approx(0.1) and out.rejected_rewards.item() == pytest.approx(-0.2)


def test_dpo_norm_by_hand():
    # per token: chosen 1/4, rejected -2/8; z = 0.5; beta 5 -> -log sigmoid(2.5)
    out = get_dpo_loss("dpo_norm").fn(_x(**X), LossParams(beta=5.0))
    assert out.loss.item() == pytest.approx(0.07888973429254956, abs=1e-12)
    assert out.chosen_rewards.item() == pytest.approx(1.25) and out.rejected_rewards.item() == pytest.approx(-1.25)


def test_simpo_by_hand_is_reference_free():
    # -10/4 - -14/8 = -0.75; minus gamma/beta 0.5 -> -1.25; beta 2 -> -log sigmoid(-2.5)
    out = get_dpo_loss("simpo").fn(_x(-10, -14, None, None, 4, 8), LossParams(beta=2.0, gamma_beta_ratio=0.5))
    assert out.loss.item() == pytest.approx(-_logsig(-2.5), abs=1e-12)
    assert out.chosen_rewards.item() == pytest.approx(-5.0) and out.rejected_rewards.item() == pytest.approx(-3.5)


def test_ipo_by_hand():
    # z_norm = 0.5, beta 0.5 -> (0.5 - 1)^2 = 0.25
    out = get_dpo_loss("ipo").fn(_x(**X), LossParams(beta=0.5))
    assert out.loss.item() == pytest.approx(0.25, abs=1e-12)


def test_label_smoothing_conservative_and_robust():
    z, b, e = 3.0, 0.1, 0.1
    cons = get_dpo_loss("dpo").fn(_x(**X), LossParams(beta=b, label_smoothing=e))
    assert cons.loss.item() == pytest.approx(-(1 - e) * _logsig(b * z) - e * _logsig(-b * z), abs=1e-12)
    rob = get_dpo_loss("dpo").fn(_x(**X), LossParams(beta=b, label_smoothing=e, robust=True))
    assert rob.loss.item() == pytest.approx((-(1 - e) * _logsig(b * z) + e * _logsig(-b * z)) / (1 - 2 * e), abs=1e-12)


def test_dpo_norm_equals_dpo_with_beta_over_length_on_equal_lengths():
    g = torch.Generator().manual_seed(0)
    n, length, beta = 16, 7, 5.0
    v = [torch.randn(n, generator=g, dtype=torch.float64) * 5 for _ in range(4)]
    lens = torch.full((n,), float(length), dtype=torch.float64)
    x = PairLogps(*v, lens, lens)
    norm = get_dpo_loss("dpo_norm").fn(x, LossParams(beta=beta))
    plain = get_dpo_loss("dpo").fn(x, LossParams(beta=beta / length))
    torch.testing.assert_close(norm.loss, plain.loss)
    torch.testing.assert_close(norm.chosen_rewards, plain.chosen_rewards)


def test_reference_losses_need_reference():
    with pytest.raises(ValueError, match="needs reference"):
        get_dpo_loss("dpo").fn(_x(-1, -2, None, None, 1, 1), LossParams())


def test_gradient_pushes_chosen_up_and_rejected_down():
    x = _x(**X)
    x.policy_chosen.requires_grad_(True)
    x.policy_rejected.requires_grad_(True)
    get_dpo_loss("dpo_norm").fn(x, LossParams()).loss.sum().backward()
    assert x.policy_chosen.grad.item() < 0 < x.policy_rejected.grad.item()


def test_pair_metrics_are_sums():
    x = PairLogps(*(torch.tensor([-1.0, -5.0]),) * 2, torch.tensor([-2.0, -2.0]), torch.tensor([-2.0, -2.0]),
                  torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0]))
    x.policy_rejected = torch.tensor([-3.0, -1.0])
    m = pair_metrics(get_dpo_loss("dpo").fn(x, LossParams(beta=1.0)), x)
    assert m["rewards/accuracy"].item() == 1.0
    assert m["rewards/margin"].item() == pytest.approx(2.0 + -4.0)
