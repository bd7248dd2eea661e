"""Fixtures of the RLVR tests: a verifier plugin whose score depends on the response
(so random tiny models get mixed rewards), small prompt files, and a runner for the
``posttrain`` command in a subprocess (helpers live in ``rlvr_helpers.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlvr_helpers import write_prompts, write_verifier


@pytest.fixture
def workdir(tmp_path) -> Path:
    """A folder with ``evenlen.py`` (verifier ``evenlen:score``) and ``prompts.jsonl`` /
    ``eval.jsonl`` prompt files scored by it."""
    write_verifier(tmp_path)
    write_prompts(tmp_path / "prompts.jsonl", 8)
    write_prompts(tmp_path / "eval.jsonl", 4, start=50)
    return tmp_path
