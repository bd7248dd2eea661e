"""Shared fixtures: a real tiny OLMo-2 written once per test session, and paths to the
read-only conformance data beside the project."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A freshly initialised tiny OLMo-2 (seed 0) as a save_pretrained folder."""
    from posttrain.models import init_tiny_model

    return init_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    d = SHARED / "conformance"
    if not d.is_dir():
        pytest.skip(f"conformance data not found at {d}")
    return d
