"""PPO's per-token rewards, GAE, returns and whitening for a rollout batch, against values
worked out by hand (``posttrain.stages.rlvr.ppo_targets``)."""

import math

import pytest
import torch

from posttrain.stages.rlvr.ppo_targets import ppo_targets

# Two responses: row 0 has 3 tokens and reward 10, row 1 has 2 tokens (then padding) and
# reward 0. Padding holds junk that must not leak anywhere.
REWARDS = torch.tensor([10.0, 0.0])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
LOGPROBS = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, 5.0]])
REF = torch.tensor([[-1.5, -2.0, -1.0], [-1.0, -2.0, 0.0]])
VALUES = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 99.0]])


def test_kl_in_reward_gae_and_whitening_by_hand():
    out = ppo_targets(REWARDS, VALUES, MASK, logprobs=LOGPROBS, ref_logprobs=REF, beta=0.1, kl_estimator="k1",
                      gamma=1.0, lam=0.5)
    # k1 = logprob - ref: row 0 (0.5, 0, 0.5), row 1 (0, 1); x -0.1 on every token, the
    # sequence reward on the last token:
    assert out.rewards.flatten().tolist() == pytest.approx([-0.05, 0.0, 9.95, 0.0, -0.1, 0.0], abs=1e-6)
    # GAE, gamma 1, lam 0.5, V after the last token 0:
    # row 0: t2 delta 9.95 - 3 = 6.95 -> A 6.95; t1 delta 0 + 3 - 2 = 1 -> A 1 + 0.5 x 6.95 = 4.475;
    #        t0 delta -0.05 + 2 - 1 = 0.95 -> A 0.95 + 0.5 x 4.475 = 3.1875
    # row 1: t1 delta -0.1 - 0.5 = -0.6 -> A -0.6; t0 delta 0 + 0.5 - 0.5 = 0 -> A 0.5 x -0.6 = -0.3
    raw = [3.1875, 4.475, 6.95, -0.3, -0.6]
    # returns = A + V: (4.1875, 6.475, 9.95), (0.2, -0.1), 0 on padding
    assert out.returns.flatten().tolist() == pytest.approx([4.1875, 6.475, 9.95, 0.2, -0.1, 0.0], abs=1e-6)
    # whitening over the 5 tokens: mean 13.7125 / 5 = 2.7425; squared deviations
    # 0.198025 + 3.00155625 + 17.70305625 + 9.25680625 + 11.17230625 = 41.33175, / 4 = 10.3329375
    std = math.sqrt(10.3329375 + 1e-8)
    white = [(a - 2.7425) / std for a in raw]
    assert out.advantages.flatten().tolist() == pytest.approx(white + [0.0], abs=1e-5)
    m = out.metrics
    # summed penalties: row 0 -0.1, row 1 -0.1; totals 9.9 and -0.1
    assert m["reward/kl_penalty"] == pytest.approx(-0.1, abs=1e-6)
    assert m["reward/total"] == pytest.approx(4.9, abs=1e-6)
    # explained variance: R - V is the raw advantage (var 10.3329375); var(R): mean 20.7125 / 5
    # = 4.1425, squared deviations 0.002025 + 5.44055625 + 33.72705625 + 15.54330625 +
    # 17.99880625 = 72.71175, / 4 = 18.1779375
    assert m["value/explained_variance"] == pytest.approx(1 - 10.3329375 / 18.1779375, abs=1e-5)
    assert m["advantages/raw_std"] == pytest.approx(math.sqrt(10.3329375), abs=1e-5)
    assert m["value/rollout_mean"] == pytest.approx(7.0 / 5, abs=1e-6)  # (1 + 2 + 3 + 0.5 + 0.5) / 5
    assert m["value/returns_mean"] == pytest.approx(20.7125 / 5, abs=1e-6)


def test_untrained_responses_stay_out_of_whitening():
    out = ppo_targets(REWARDS, VALUES, MASK, trained=torch.tensor([True, False]), gamma=1.0, lam=0.5)
    # no KL: rewards (0, 0, 10) -> row 0: A2 = 10 - 3 = 7, A1 = 1 + 3.5 = 4.5, A0 = 1 + 2.25 = 3.25
    # whitened over row 0's tokens only: mean 14.75 / 3; the untrained row gets zeros
    raw = [3.25, 4.5, 7.0]
    mean = sum(raw) / 3
    std = math.sqrt(sum((a - mean) ** 2 for a in raw) / 2 + 1e-8)
    assert out.advantages[0].tolist() == pytest.approx([(a - mean) / std for a in raw], abs=1e-5)
    assert out.advantages[1].tolist() == [0.0, 0.0, 0.0]
    assert out.metrics["reward/total"] == pytest.approx(10.0)  # the trained row's reward only


def test_kl_placement_and_estimators():
    # the KL in the loss: the reward holds the sequence reward only
    out = ppo_targets(REWARDS, VALUES, MASK, logprobs=LOGPROBS, ref_logprobs=REF, beta=0.1, kl_in_reward=False)
    assert out.rewards.tolist() == [[0.0, 0.0, 10.0], [0.0, 0.0, 0.0]]
    # k3 = e^(ref - lp) - 1 - (ref - lp): row 0 ref - lp = (-0.5, 0, -0.5) -> e^-0.5 - 0.5 = 0.106531
    out = ppo_targets(REWARDS, VALUES, MASK, logprobs=LOGPROBS, ref_logprobs=REF, beta=1.0, kl_estimator="k3",
                      whiten_advantages=False)
    k3 = math.exp(-0.5) - 0.5
    assert out.rewards[0].tolist() == pytest.approx([-k3, 0.0, 10 - k3], abs=1e-6)
    # k2 = (lp - ref)^2 / 2: row 1 (0, 1) -> (0, 0.5)
    out = ppo_targets(REWARDS, VALUES, MASK, logprobs=LOGPROBS, ref_logprobs=REF, beta=1.0, kl_estimator="k2")
    assert out.rewards[1].tolist() == pytest.approx([0.0, -0.5, 0.0], abs=1e-6)
    # beta 0 or no reference: no KL at all
    assert ppo_targets(REWARDS, VALUES, MASK, logprobs=LOGPROBS, ref_logprobs=REF, beta=0.0).rewards[0, 0] == 0
    with pytest.raises(ValueError, match="log-probs"):
        ppo_targets(REWARDS, VALUES, MASK, ref_logprobs=REF, beta=0.1)


def test_unwhitened_advantages_are_plain_gae():
    out = ppo_targets(REWARDS, VALUES, MASK, gamma=1.0, lam=0.5, whiten_advantages=False)
    # as the second test's row 0, and row 1 with reward 0: A1 = 0 - 0.5, A0 = 0 + 0.5 x -0.5 = -0.25
    assert out.advantages.flatten().tolist() == pytest.approx([3.25, 4.5, 7.0, -0.25, -0.5, 0.0], abs=1e-6)
