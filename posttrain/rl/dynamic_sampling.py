"""DAPO's dynamic sampling: a group whose responses all got the same reward has zero
advantage under ``grpo``/``rloo`` (every sample equals its baseline), so it adds nothing to
the gradient but still dilutes a per-token mean. DAPO drops such groups and samples more
prompts until the batch is full; these helpers say which groups to drop."""

from __future__ import annotations

import torch

from posttrain.rl.advantages import grouped


def constant_groups(rewards: torch.Tensor, group_size: int, atol: float = 0.0) -> torch.Tensor:
    """``(B / G,)`` bool: true for each group whose rewards are all equal (within
    ``atol``: max - min <= atol). Groups are ``group_size`` consecutive rows."""
    g = grouped(rewards, group_size)
    return (g.max(dim=1).values - g.min(dim=1).values) <= atol


def informative_rows(rewards: torch.Tensor, group_size: int, atol: float = 0.0) -> torch.Tensor:
    """``(B,)`` bool: true for the rows of groups whose rewards differ (the rows to keep)."""
    return (~constant_groups(rewards, group_size, atol)).repeat_interleave(group_size)
