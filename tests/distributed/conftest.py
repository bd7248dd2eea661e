"""Fixtures of the multi-process tests: a very small real OLMo-2 (fast enough for several
launches per test); the launcher helpers live in ``dist_launch.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory) -> Path:
    """A ~100k-parameter OLMo-2 with the tiny tokenizer."""
    from posttrain.models import TinyModelSpec, init_tiny_model

    return init_tiny_model(tmp_path_factory.mktemp("small") / "model", seed=0, spec=TinyModelSpec(**SMALL))
