"""Fixtures for the pipeline tests: small chat and eval files, and two real stages of the
kinds that produce no policy, registered for a test and removed after."""

from __future__ import annotations

from pathlib import Path

import pytest
from pipeline_helpers import CopyModelConfig, RowsConfig, chat_rows, run_copy_model, run_rows, write_jsonl

from posttrain.stages import registry


@pytest.fixture
def data_dir(tmp_path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    write_jsonl(d / "chats.jsonl", chat_rows(48))
    write_jsonl(d / "more.jsonl", chat_rows(24, start=100))
    write_jsonl(d / "eval.jsonl", [{"prompt": f"What is {i} + 2?", "dataset": "gsm8k", "ground_truth": str(i + 2)}
                                   for i in range(6)])
    return d


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def side_stages():
    """Registers ``test_rows`` (produces data) and ``test_copy_model`` (produces a model)."""
    registry.register_stage("test_rows", RowsConfig, produces="data")(run_rows)
    registry.register_stage("test_copy_model", CopyModelConfig, produces="model")(run_copy_model)
    yield
    for name in ("test_rows", "test_copy_model"):
        registry._STAGES.pop(name, None)
