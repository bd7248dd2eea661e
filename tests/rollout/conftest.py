"""Fixtures of the rollout tests (helpers live in ``rollout_helpers.py``)."""

from __future__ import annotations

import pytest
import torch

from posttrain.policy import Policy


@pytest.fixture
def trainer(tiny_model_dir) -> Policy:
    """A fresh fp32 trainer policy on the tiny OLMo-2 (each test may train it)."""
    torch.manual_seed(0)
    return Policy.load(tiny_model_dir, device="cpu", dtype="float32")
