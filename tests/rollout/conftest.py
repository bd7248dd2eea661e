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


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    """The tiny model's tokenizer, prepared as the trainer prepares it."""
    from transformers import AutoTokenizer

    from posttrain.policy import prepare_tokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    prepare_tokenizer(tok)
    return tok
