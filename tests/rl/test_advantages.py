"""Advantage estimators and whitening against values worked out by hand (arithmetic in
the comments)."""

import math

import pytest
import torch

from posttrain.rl.advantages import (AdvantageInputs, AdvantageParams, advantage_names, compute_advantages,
                                     gae_advantages, get_advantage, grpo_advantages, rloo_advantages, whiten)

T = lambda *v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
# Three groups of two: (0, 10), (10, 10), (4, 0).
REWARDS = T(0, 10, 10, 10, 4, 0)


def test_registry():
    assert {"grpo", "rloo", "gae"} <= set(advantage_names())
    assert get_advantage("gae").needs_values and get_advantage("gae").token_rewards
    assert not get_advantage("grpo").needs_values
    with pytest.raises(KeyError, match="unknown advantage estimator 'nope'"):
        get_advantage("nope")


def test_grpo_group_std_by_hand():
    # (0, 10): mean 5, centered (-5, 5), std with Bessel sqrt((25 + 25) / 1) = sqrt(50).
    # (10, 10): centered (0, 0). (4, 0): mean 2, centered (2, -2), std sqrt(8).
    adv = grpo_advantages(REWARDS, 2, "group", std_eps=0.0)
    expect = [-5 / math.sqrt(50), 5 / math.sqrt(50), 0, 0, 2 / math.sqrt(8), -2 / math.sqrt(8)]
    assert adv.tolist() == pytest.approx(expect, abs=1e-6)
    assert adv[0].item() == pytest.approx(-0.70710678, abs=1e-6)
    # The default eps 1e-4 is added to the std: -5 / (7.0710678 + 0.0001)
    assert grpo_advantages(REWARDS, 2)[0].item() == pytest.approx(-5 / (math.sqrt(50) + 1e-4), abs=1e-7)


def test_grpo_batch_std_and_none_by_hand():
    # batch mean 34/6; sum of squares 316 - 6 (34/6)^2 = 123.333; / 5 = 24.667; std 4.96655
    std = math.sqrt((316 - 34 ** 2 / 6) / 5)
    assert std == pytest.approx(4.96655, abs=1e-5)
    adv = grpo_advantages(REWARDS, 2, "batch", std_eps=0.0)
    assert adv.tolist() == pytest.approx([-5 / std, 5 / std, 0, 0, 2 / std, -2 / std], abs=1e-6)
    assert adv[1].item() == pytest.approx(1.006735, abs=1e-5)
    assert grpo_advantages(REWARDS, 2, "none").tolist() == [-5, 5, 0, 0, 2, -2]


def test_rloo_by_hand():
    # (3, 6, 0): baselines (6+0)/2 = 3, (3+0)/2 = 1.5, (3+6)/2 = 4.5 -> 0, 4.5, -4.5
    assert rloo_advantages(T(3, 6, 0), 3).tolist() == [0.0, 4.5, -4.5]
    # = G/(G-1) (r - mean) = 1.5 * (0, 3, -3)


def test_group_checks():
    with pytest.raises(ValueError, match="do not split into groups of 4"):
        grpo_advantages(REWARDS, 4)
    with pytest.raises(ValueError, match="at least 2"):
        rloo_advantages(REWARDS, 1)


def test_outcome_estimators_fill_response_tokens_only():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    out = compute_advantages("rloo", AdvantageInputs(T(1, 3), mask, group_size=2))
    # baselines 3 and 1: advantages -2, 2 on the response tokens, 0 on padding
    assert out.advantages.tolist() == [[-2, -2, 0], [2, 0, 0]] and out.returns is None


def test_gae_right_padding_by_hand():
    # gamma 1, lam 0.5; rewards (0, 0, 1 | pad), values (0.5, 0.25, 0.5 | pad 9)
    # t=2: delta = 1 + 0 - 0.5 = 0.5           A = 0.5
    # t=1: delta = 0 + 0.5 - 0.25 = 0.25       A = 0.25 + 0.5 * 0.5 = 0.5
    # t=0: delta = 0 + 0.25 - 0.5 = -0.25      A = -0.25 + 0.5 * 0.5 = 0
    # returns = A + V = (0.5, 0.75, 1.0)
    adv, ret = gae_advantages(T(0, 0, 1, 0)[None], T(0.5, 0.25, 0.5, 9)[None], torch.tensor([[1, 1, 1, 0]]),
                              gamma=1.0, lam=0.5)
    assert adv.tolist() == [[0.0, 0.5, 0.5, 0.0]]
    assert ret.tolist() == [[0.5, 0.75, 1.0, 0.0]]


def test_gae_skips_a_hole_in_the_mask_by_hand():
    # gamma 0.5, lam 1; mask (1, 0, 1, 1); rewards (0, [7], 0, 2); values (1, [5], 1, 1)
    # t=3: delta = 2 + 0 - 1 = 1                A3 = 1
    # t=2: delta = 0 + 0.5 * 1 - 1 = -0.5       A2 = -0.5 + 0.5 * 1 = 0
    # t=1: masked: carries V = 1 (from t=2) and A = 0
    # t=0: delta = 0 + 0.5 * 1 - 1 = -0.5       A0 = -0.5 + 0.5 * 0 = -0.5
    adv, ret = gae_advantages(T(0, 7, 0, 2)[None], T(1, 5, 1, 1)[None], torch.tensor([[1, 0, 1, 1]]),
                              gamma=0.5, lam=1.0)
    assert adv.tolist() == [[-0.5, 0.0, 0.0, 1.0]]
    assert ret.tolist() == [[0.5, 0.0, 1.0, 2.0]]


def test_gae_rows_are_independent():
    rewards, values = torch.randn(3, 5), torch.randn(3, 5)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    adv, ret = gae_advantages(rewards, values, mask, 0.9, 0.95)
    for i in range(3):
        a, r = gae_advantages(rewards[i:i + 1], values[i:i + 1], mask[i:i + 1], 0.9, 0.95)
        assert torch.equal(a, adv[i:i + 1]) and torch.equal(r, ret[i:i + 1])


def test_whiten_by_hand():
    # (1, 2, 3 | pad 100): mean 2, var with Bessel (1 + 0 + 1) / 2 = 1 -> (-1, 0, 1)
    x, mask = T(1, 2, 3, 100)[None], torch.tensor([[1, 1, 1, 0]])
    assert whiten(x, mask).tolist()[0] == pytest.approx([-1, 0, 1, 0], abs=1e-6)
    assert whiten(x, mask, shift_mean=False).tolist()[0] == pytest.approx([1, 2, 3, 0], abs=1e-6)


def test_gae_estimator_whitens_and_returns_targets():
    mask = torch.tensor([[1, 1, 1, 0]])
    x = AdvantageInputs(T(0, 0, 1, 0)[None], mask, values=T(0.5, 0.25, 0.5, 9)[None])
    out = compute_advantages("gae", x, AdvantageParams(gamma=1.0, lam=0.5))
    # raw (0, 0.5, 0.5): mean 1/3, var (1/9 + 1/36 + 1/36) / 2 = 1/12 -> (-1/3, 1/6, 1/6) * sqrt(12)
    s = math.sqrt(12)
    assert out.advantages.tolist()[0] == pytest.approx([-s / 3, s / 6, s / 6, 0], abs=1e-5)
    assert out.returns.tolist() == [[0.5, 0.75, 1.0, 0.0]]
    with pytest.raises(ValueError, match="needs values"):
        compute_advantages("gae", AdvantageInputs(T(0, 0, 1, 0)[None], mask))
    with pytest.raises(ValueError, match=r"takes \(B,\) rewards"):
        compute_advantages("grpo", AdvantageInputs(T(0, 0, 1, 0)[None], mask))
