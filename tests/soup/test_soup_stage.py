"""The ``soup`` stage in a real recipe: two SFT stages on the tiny model, then their
soup, which the next stage starts from."""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipeline"))
from pipeline_helpers import chat_rows, write_jsonl, write_recipe  # noqa: E402

from posttrain.errors import PosttrainError  # noqa: E402
from posttrain.pipeline import run_recipe  # noqa: E402
from posttrain.recipe import load_recipe  # noqa: E402


def _recipe(tmp_path, soup_section: str) -> Path:
    write_jsonl(tmp_path / "chats.jsonl", chat_rows(32))
    return write_recipe(tmp_path / "r.yaml", f"""
        output_dir: {tmp_path / 'run'}
        seed: 0
        model: {{name_or_path: tiny}}
        stages:
          sft_a:
            type: sft
            train_data: [{{path: {tmp_path / 'chats.jsonl'}}}]
            max_steps: 2
            per_device_batch_size: 4
            learning_rate: 1.0e-3
          sft_b:
            type: sft
            train_data: [{{path: {tmp_path / 'chats.jsonl'}}}]
            max_steps: 2
            per_device_batch_size: 4
            learning_rate: 3.0e-3
          soup: {soup_section}
        """)


def test_soup_stage_averages_its_input_and_an_earlier_stage(tmp_path, monkeypatch):
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))
    run = run_recipe(load_recipe(_recipe(tmp_path, "{models: [{from_stage: sft_a}], weights: [3, 1]}")))
    a = load_file(run / "sft_a" / "model" / "model.safetensors")
    b = load_file(run / "sft_b" / "model" / "model.safetensors")  # the input: first ingredient
    s = load_file(run / "soup" / "model" / "model.safetensors")
    name = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(a[name], b[name])
    for k in s:
        torch.testing.assert_close(s[k], 0.75 * b[k] + 0.25 * a[k], rtol=0, atol=1e-6)
    recorded = json.loads((run / "soup" / "model" / "soup.json").read_text())
    assert recorded["weights"] == [0.75, 0.25]


@pytest.mark.parametrize("section, message", [
    ("{include_input: false, models: [{from_stage: sft_a}]}", "at least two ingredients, got 1"),
    ("{models: [{from_stage: sft_a}], weights: [1]}", "1 weights for 2 ingredients"),
    ("{models: [{from_stage: later}]}", "later"),
])
def test_bad_soup_sections_fail_at_load(tmp_path, section, message):
    with pytest.raises(PosttrainError, match=message):
        load_recipe(_recipe(tmp_path, section))
