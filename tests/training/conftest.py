"""Fixtures for the training tests: very small real OLMo-2s (plain, with dropout, and a
second one for a value model), hand-made token examples, and a real StageContext."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory) -> Path:
    """A ~100k-parameter OLMo-2 with the tiny tokenizer (fast enough for many steps)."""
    from posttrain.models import TinyModelSpec, init_tiny_model

    return init_tiny_model(tmp_path_factory.mktemp("small") / "model", seed=0, spec=TinyModelSpec(**SMALL))


@pytest.fixture(scope="session")
def small_value_model_dir(tmp_path_factory) -> Path:
    """A second small OLMo-2 (seed 1): the value model of the online-driver tests."""
    from posttrain.models import TinyModelSpec, init_tiny_model

    return init_tiny_model(tmp_path_factory.mktemp("value") / "model", seed=1, spec=TinyModelSpec(**SMALL))


@pytest.fixture(scope="session")
def small_dropout_model_dir(tmp_path_factory, small_model_dir) -> Path:
    """The small model with attention dropout 0.1, so that training draws on the RNG."""
    import json
    import shutil

    d = tmp_path_factory.mktemp("dropout") / "model"
    shutil.copytree(small_model_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["attention_dropout"] = 0.1
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.fixture
def examples():
    """``examples(n, seed=0, ...)``: see ``make_examples``."""
    return make_examples


def make_examples(n: int, seed: int = 0, vocab: int = 500, lo: int = 5, hi: int = 24) -> list[dict]:
    """Token examples of random lengths whose first part (a random "prompt") is masked."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(lo, hi)
        ids = [rng.randrange(5, vocab) for _ in range(length)]
        prompt = rng.randint(1, length - 1)
        out.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return out


def make_ctx(tmp_path: Path, model_dir: Path, **fields):
    """A StageContext for an ``sft`` stage with the given config fields."""
    from posttrain.metrics import MetricsWriter
    from posttrain.recipe.load import validate_recipe
    from posttrain.stages.context import StageContext

    stage = {"train_data": [{"path": "unused/hub-name"}], "learning_rate": 1e-3, **fields}
    recipe = validate_recipe({"output_dir": str(tmp_path), "stages": {"sft": stage}})
    return StageContext(name="sft", config=recipe.stages["sft"], recipe=recipe, input_model=str(model_dir),
                        input_revision=None, stage_dir=tmp_path / "sft",
                        metrics=MetricsWriter(tmp_path / "sft" / "metrics.jsonl"))


@pytest.fixture
def ctx_factory(tmp_path, small_model_dir):
    """``ctx_factory(**fields)``: a fresh StageContext per call, each in its own folder."""
    count = iter(range(1000))
    return lambda **fields: make_ctx(tmp_path / f"run{next(count)}", small_model_dir, **fields)
