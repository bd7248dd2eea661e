"""Rewards from verifier scores: the Scorer's multiplier applied once, the non-stop
penalty, truncation masking and PPO's per-token rewards, by hand."""

import pytest
import torch

from posttrain.rl.rewards import (apply_non_stop_penalty, drop_truncated, last_token_index, reward_totals,
                                  sequence_rewards, stopped_mask, token_rewards, verifier_accuracy)
from posttrain.verifiers import score_rows


def test_scorer_results_become_rewards_without_a_second_multiplier():
    rows = [{"response": "so 7 + 5 = 12.\n#### 12", "dataset": "gsm8k", "ground_truth": "12"},
            {"response": "#### 13", "dataset": "gsm8k", "ground_truth": "12"}]
    results = score_rows(rows, multiplier=10.0, workers=0)
    # gsm8k scores 1 and 0; the Scorer multiplies by 10; nothing multiplies again.
    assert sequence_rewards(results).tolist() == [10.0, 0.0]
    assert sequence_rewards([0.5, 2]).dtype == torch.float32


def test_non_stop_penalty_replaces_the_reward():
    done = stopped_mask(["stop", "length", "length"])
    assert done.tolist() == [True, False, False]
    rewards = torch.tensor([10.0, 0.0, 10.0])
    # the unstopped ones get -10 whatever they scored (replaced, not added)
    assert apply_non_stop_penalty(rewards, done, -10.0).tolist() == [10.0, -10.0, -10.0]
    assert apply_non_stop_penalty(rewards, done, None) is rewards
    with pytest.raises(ValueError, match="unknown finish reason 'abort'"):
        stopped_mask(["abort"])


def test_drop_truncated_clears_their_rows():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert drop_truncated(mask, torch.tensor([True, False])).tolist() == [[True, True, False], [False, False, False]]


def test_last_token_index():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 0, 1, 0], [0, 0, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 3, -1]


def test_ppo_token_rewards_by_hand():
    scores = torch.tensor([10.0, -10.0, 3.0])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    kl = torch.tensor([[0.1, 0.2, -0.1, 5.0], [0.5, 9.0, 9.0, 9.0], [1.0, 1.0, 1.0, 1.0]])
    out = token_rewards(scores, mask, kl, beta=0.05)
    # row 0: -0.05 * (0.1, 0.2, -0.1) = (-0.005, -0.01, 0.005), + 10 on the last token
    # row 1: -0.05 * 0.5 = -0.025, + (-10) on its only token
    # row 2: no response token, no reward
    assert out.tolist()[0] == pytest.approx([-0.005, -0.01, 10.005, 0.0], abs=1e-6)
    assert out.tolist()[1] == pytest.approx([-10.025, 0.0, 0.0, 0.0], abs=1e-6)
    assert out.tolist()[2] == [0.0, 0.0, 0.0, 0.0]
    # totals (open-instruct's rlhf_reward): 10 - 0.05 * 0.2 = 9.99; -10.025; 0
    assert reward_totals(out, mask).tolist() == pytest.approx([9.99, -10.025, 0.0], abs=1e-6)
    # KL in the loss instead: only the verifier reward, on the last token
    assert token_rewards(scores, mask).tolist()[0] == [0.0, 0.0, 10.0, 0.0]


def test_verifier_accuracy_per_name():
    acc = verifier_accuracy([10, 0, 10, 5], ["gsm8k", "gsm8k", "MATH", ["gsm8k", "math"]])
    assert acc == {"all": 0.75, "gsm8k": 0.5, "math": 1.0, "gsm8k+math": 1.0}
