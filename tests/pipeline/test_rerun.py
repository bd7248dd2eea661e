"""Run directories are reproducible and never silently stale: ``posttrain run
RUN/recipe.yaml`` into a fresh directory gives the same weights; a finished stage whose
section, input model, upstream stage or data changed stops the run with one line naming
it; ``--force-stage`` re-runs a stage and every stage after it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from pipeline_helpers import chat_rows, write_jsonl
from safetensors.torch import load_file

from posttrain.pipeline import StaleStageError, run_recipe
from posttrain.recipe import RecipeError, validate_recipe

ROOT = Path(__file__).resolve().parents[2]


def _posttrain(*args, cache: Path):
    env = {**os.environ, "POSTTRAIN_CACHE": str(cache), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "posttrain.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def _weights(stage_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(stage_dir / "model" / "model.safetensors"))


@pytest.mark.timeout(600)
def test_run_directory_recipe_reproduces_the_run(tmp_path, tiny_model_dir, data_dir):
    run, again = tmp_path / "run", tmp_path / "again"
    recipe = tmp_path / "recipe.yaml"
    # Non-default stage fields (packing, sum reduction, constant schedule): a recipe.yaml
    # that dropped them would train differently.
    recipe.write_text(yaml.safe_dump({
        "output_dir": str(run), "seed": 5, "model": {"name_or_path": str(tiny_model_dir)},
        "stages": {"sft": {"train_data": [{"path": str(data_dir / "chats.jsonl"), "amount": 24}],
                           "learning_rate": 2e-3, "max_steps": 3, "per_device_batch_size": 4, "max_length": 128,
                           "packing": True, "loss_reduction": "sum", "lr_scheduler": "constant",
                           "warmup_ratio": 0.0}}}))
    first = _posttrain("run", str(recipe), cache=tmp_path / "cache")
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.splitlines()[1].split()[:3] == ["sft", "sft", "ran"]
    dumped = yaml.safe_load((run / "recipe.yaml").read_text())
    assert dumped["stages"]["sft"]["packing"] is True and dumped["stages"]["sft"]["loss_reduction"] == "sum"

    second = _posttrain("run", str(run / "recipe.yaml"), "--set", f"output_dir={again}", cache=tmp_path / "cache2")
    assert second.returncode == 0, second.stderr[-3000:]
    a, b = _weights(run / "sft"), _weights(again / "sft")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    assert not torch.equal(a["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])

    # The stage's own record says what it ran with.
    record = json.loads((run / "sft" / "stage.json").read_text())
    assert record["config"] == dumped["stages"]["sft"] and record["type"] == "sft"
    assert list(record["inputs"]["data"]) == [str(data_dir / "chats.jsonl")]
    assert record["finished"] and record["seconds"] > 0 and "torch" in record["versions"]

    # A changed section does not reuse the finished stage: one line, exit 2, nothing touched.
    changed = _posttrain("run", str(recipe), "--set", "stages.sft.learning_rate=1.0e-3", cache=tmp_path / "cache")
    assert changed.returncode == 2
    assert changed.stderr.strip() == (
        f"posttrain run: error: stage sft: its recipe section changed since it ran in {run} (learning_rate: 0.002 "
        "-> 0.001); to keep both, set a new output_dir; to replace it, add --force-stage sft (re-runs sft and every "
        "stage after it)")
    assert all(torch.equal(a[k], v) for k, v in _weights(run / "sft").items())


def _two_stages(tmp_path: Path, model: Path, data: Path, **more) -> dict:
    sft = {"train_data": [{"path": str(data), "amount": 16}], "learning_rate": 1e-3, "max_steps": 2,
           "per_device_batch_size": 4, "max_length": 64, "logging_steps": 1}
    return {"output_dir": str(tmp_path / "run"), "model": {"name_or_path": str(model)},
            "stages": {"sft": sft, "sft_more": {**sft, "type": "sft", **more}}}


def _run_id(run: Path, stage: str) -> str:
    return json.loads((run / stage / "DONE").read_text())["run_id"]


@pytest.mark.timeout(600)
def test_changed_stage_or_input_stops_and_force_stage_reruns(tmp_path, tiny_model_dir, data_dir):
    run = tmp_path / "run"
    data = data_dir / "chats.jsonl"
    raw = _two_stages(tmp_path, tiny_model_dir, data)
    run_recipe(validate_recipe(raw))
    ids = {s: _run_id(run, s) for s in ("sft", "sft_more")}
    assert json.loads((run / "sft_more" / "stage.json").read_text())["inputs"]["model"] == {"stage": "sft",
                                                                                          "run_id": ids["sft"]}
    run_recipe(validate_recipe(raw))  # unchanged: both reused
    assert {s: _run_id(run, s) for s in ids} == ids

    changed = _two_stages(tmp_path, tiny_model_dir, data, learning_rate=5e-4)
    with pytest.raises(StaleStageError, match=r"^stage sft_more: its recipe section changed since it ran in .* "
                                              r"\(learning_rate: 0.001 -> 0.0005\); .* --force-stage sft_more "):
        run_recipe(validate_recipe(changed))
    with pytest.raises(RecipeError, match=r"^--force-stage: no stage 'dpo' in this recipe \(stages: sft, sft_more\)$"):
        run_recipe(validate_recipe(changed), force_stage="dpo")

    # --force-stage sft: sft and everything after it run again (new run ids).
    run_recipe(validate_recipe(changed), force_stage="sft")
    new = {s: _run_id(run, s) for s in ids}
    assert new["sft"] != ids["sft"] and new["sft_more"] != ids["sft_more"]
    assert json.loads((run / "sft_more" / "stage.json").read_text())["config"]["learning_rate"] == 5e-4

    # An earlier stage that runs again makes a finished later stage stale before anything runs.
    (run / "sft" / "DONE").unlink()
    (run / "sft" / "stage.json").unlink()
    with pytest.raises(StaleStageError, match=r"^stage sft_more: its input changed since it ran in .* \(stage sft, "
                                              r"its input, runs again\); .* --force-stage sft_more "):
        run_recipe(validate_recipe(changed))
    assert not (run / "sft" / "DONE").exists()  # nothing ran
    run_recipe(validate_recipe(changed), force_stage="sft")

    # A data file edited after the run is a changed input too.
    write_jsonl(data, chat_rows(48, start=7))
    with pytest.raises(StaleStageError, match=rf"^stage sft: its input changed since it ran in .* \(data file "
                                              rf"{data} changed\)"):
        run_recipe(validate_recipe(changed))


@pytest.mark.timeout(600)
def test_unfinished_stage_with_a_changed_section_does_not_resume(tmp_path, tiny_model_dir, data_dir):
    run = tmp_path / "run"
    raw = _two_stages(tmp_path, tiny_model_dir, data_dir / "chats.jsonl")
    del raw["stages"]["sft_more"]
    run_recipe(validate_recipe(raw))
    (run / "sft" / "DONE").unlink()  # as a kill before the end leaves it: started, not finished
    raw["stages"]["sft"]["max_length"] = 96
    with pytest.raises(StaleStageError, match=r"^stage sft: its recipe section changed since it started in .* "
                                              r"\(max_length: 64 -> 96\)"):
        run_recipe(validate_recipe(raw))
    dry = _posttrain("run", str(_write(tmp_path / "r.yaml", raw)), "--dry-run", cache=tmp_path / "cache")
    assert dry.returncode == 2 and "stage sft: its recipe section changed since it started" in dry.stderr
    raw["stages"]["sft"]["max_length"] = 64
    dry = _posttrain("run", str(_write(tmp_path / "r.yaml", raw)), "--dry-run", cache=tmp_path / "cache")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[-1] == "plan: sft resume"
    # Stopped before its first checkpoint (e.g. on bad data, then fixed): nothing to resume,
    # so a changed section or input just starts it afresh.
    shutil.rmtree(run / "sft" / "checkpoints")
    shutil.rmtree(run / "sft" / "model")
    raw["stages"]["sft"]["max_length"] = 96
    dry = _posttrain("run", str(_write(tmp_path / "r.yaml", raw)), "--dry-run", cache=tmp_path / "cache")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[-1] == "plan: sft run"


def _write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path
