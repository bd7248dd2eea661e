"""DAPO's dynamic sampling: groups whose rewards are all equal are flagged."""

import torch

from posttrain.rl.dynamic_sampling import constant_groups, informative_rows


def test_constant_groups():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    assert constant_groups(rewards, 2).tolist() == [True, False, True]
    assert informative_rows(rewards, 2).tolist() == [False, False, True, True, False, False]
    assert constant_groups(torch.tensor([1.0, 1.05]), 2, atol=0.1).tolist() == [True]
