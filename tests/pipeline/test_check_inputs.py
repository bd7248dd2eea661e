"""``run_recipe`` checks what the run will read before any model loads, for a library
caller as for ``posttrain run``: a bad row in a later stage's file stops the run before
the first stage trains, with the one-line message naming the field, file and line.
``posttrain run --dry-run`` (which plans without ``run_recipe``) checks the same."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import yaml
from pipeline_helpers import chat_rows, write_jsonl

from posttrain.errors import DataError, PosttrainError
from posttrain.pipeline import run_recipe
from posttrain.recipe import validate_recipe


def _recipe(tmp_path, model, prompts) -> dict:
    sft = {"train_data": [{"path": str(write_jsonl(tmp_path / "chats.jsonl", chat_rows(8)))}], "learning_rate": 1e-3,
           "max_steps": 1, "per_device_batch_size": 4, "max_length": 64}
    rlvr = {"type": "rlvr", "train_data": [{"path": str(prompts)}], "max_steps": 1, "prompts_per_step": 1,
            "samples_per_prompt": 2, "max_new_tokens": 4, "max_length": 64}
    return {"output_dir": str(tmp_path / "run"), "model": {"name_or_path": str(model)},
            "stages": {"sft": sft, "rlvr": rlvr}}


def test_a_bad_row_of_a_later_stage_stops_run_recipe_before_the_first_stage(tmp_path, tiny_model_dir):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "1 + 1?", "dataset": "gsm8k", "ground_truth": "2"}\n'
                       '{"prompt": "2 + 2?", "dataset": "gsm8k", "ground_truth": "four"}\n')
    with pytest.raises(DataError) as e:
        run_recipe(validate_recipe(_recipe(tmp_path, tiny_model_dir, prompts)))
    assert str(e.value) == (f"stages.rlvr.train_data.0: {prompts}: line 2: ground_truth 'four' cannot be read by "
                            "verifier 'gsm8k' (it has no number)")
    assert not (tmp_path / "run").exists()  # the SFT stage never started


def test_a_model_folder_without_weights_stops_run_recipe(tmp_path, tiny_model_dir):
    empty = tmp_path / "no-weights"
    shutil.copytree(tiny_model_dir, empty)
    for f in empty.glob("*.safetensors"):
        f.unlink()
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "1 + 1?", "dataset": "gsm8k", "ground_truth": "2"}])
    with pytest.raises(PosttrainError, match=r"^model\.name_or_path: .*no-weights: no weights \(model\.safetensors"):
        run_recipe(validate_recipe(_recipe(tmp_path, empty, prompts)))
    assert not (tmp_path / "run").exists()


def test_dry_run_checks_the_inputs_too(tmp_path, tiny_model_dir):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "1 + 1?", "dataset": "gsm8k", "ground_truth": "four"}\n')
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(tmp_path, tiny_model_dir, prompts)))
    env = {**os.environ, "POSTTRAIN_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "posttrain.cli", "run", str(recipe), "--dry-run"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.splitlines() == [f"posttrain run: error: stages.rlvr.train_data.0: {prompts}: line 1: ground_truth "
                                     "'four' cannot be read by verifier 'gsm8k' (it has no number)"], r.stderr[-3000:]
