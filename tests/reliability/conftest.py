"""Fixtures of the reliability tests: a folder with a small SFT data file and a recipe
over the stored tiny base (the disk and non-finite tests share it)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY_BASE = ROOT / "posttrain" / "models" / "tiny_base"


@pytest.fixture
def sft_workdir(tmp_path) -> Callable[[str], Path]:
    """``make(recipe) -> folder``: ``tmp_path`` holding ``sft.jsonl`` (16 one-turn sums)
    and ``recipe`` as ``recipe.yaml``, with ``{data}`` in it replaced by the data file's
    absolute path and ``{model}`` by the stored tiny base's folder."""

    def make(recipe: str) -> Path:
        rows = [{"messages": [{"role": "user", "content": f"{i} + {i}?"},
                              {"role": "assistant", "content": str(2 * i)}]} for i in range(16)]
        (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        text = textwrap.dedent(recipe).replace("{data}", str(tmp_path / "sft.jsonl")).replace("{model}",
                                                                                              str(TINY_BASE))
        (tmp_path / "recipe.yaml").write_text(text)
        return tmp_path

    return make
