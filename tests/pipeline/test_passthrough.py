"""Stages that produce no policy, through the real pipeline on the tiny OLMo-2: a data stage
and a model stage leave the policy as it was for the next stage, get no policy eval, and
their outputs reach later stages through ``from_stage`` (data mixtures resolved by the
pipeline, model fields by ``ctx.resolve_model``)."""

from __future__ import annotations

import json

import pytest

from posttrain.metrics import read_metrics
from posttrain.pipeline import run_recipe
from posttrain.recipe import validate_recipe


def _sft(**fields) -> dict:
    return {"learning_rate": 1e-3, "max_steps": 2, "per_device_batch_size": 4, "max_length": 64,
            "logging_steps": 1, "warmup_ratio": 0.0, **fields}


@pytest.mark.timeout(600)
def test_data_and_model_stages_pass_the_policy_through(tmp_path, tiny_model_dir, data_dir, side_stages, capsys):
    run = tmp_path / "run"
    raw = {
        "output_dir": str(run),
        "model": {"name_or_path": str(tiny_model_dir)},
        "stages": {
            "rows": {"type": "test_rows", "source": str(data_dir / "more.jsonl"), "n": 10},
            "sft": _sft(train_data=[{"from_stage": "rows", "amount": 1.0}]),
            "rm_like": {"type": "test_copy_model", "init_from": {"from_stage": "sft"}},
            "sft_b": {**_sft(train_data=[{"from_stage": "rows", "amount": 4},
                                         {"path": str(data_dir / "chats.jsonl"), "amount": 4}]), "type": "sft"},
        },
        "eval": {"data": str(data_dir / "eval.jsonl"), "max_new_tokens": 4, "limit": 3},
    }
    recipe = validate_recipe(raw)
    run_recipe(recipe)

    # The data stage started from the recipe's model and wrote its rows; SFT read them.
    assert (run / "rows" / "input_model.txt").read_text() == str(tiny_model_dir)
    assert len((run / "rows" / "data.jsonl").read_text().splitlines()) == 10
    sft_data = read_metrics(run / "sft" / "metrics.jsonl")[0]
    assert sft_data["data_rows"] == 10
    # ... and SFT started from the model the data stage was handed: the policy passed through.
    sft_record = json.loads((run / "sft" / "stage.json").read_text())
    assert sft_record["inputs"]["model"]["base"]["name_or_path"] == str(tiny_model_dir)
    assert sft_record["inputs"]["stages"] == {"rows": json.loads((run / "rows" / "stage.json").read_text())["run_id"]}
    assert sft_record["config"]["train_data"][0]["from_stage"] == "rows"  # recorded as written

    # The model stage was handed SFT's policy and copied the folder its from_stage named.
    assert (run / "rm_like" / "input_model.txt").read_text() == str(run / "sft" / "model")
    assert (run / "rm_like" / "copied_from.txt").read_text() == str(run / "sft" / "model")
    assert (run / "rm_like" / "model" / "config.json").is_file()
    # sft_b starts from SFT's model, not from the model stage's output.
    b_record = json.loads((run / "sft_b" / "stage.json").read_text())
    assert b_record["inputs"]["model"] == {"stage": "sft", "run_id": sft_record["run_id"]}
    assert b_record["type"] == "sft" and read_metrics(run / "sft_b" / "metrics.jsonl")[0]["data_rows"] == 8

    # The recipe's eval ran on the policy stages only.
    assert [s for s in ("rows", "sft", "rm_like", "sft_b") if (run / s / "eval.json").exists()] == ["sft", "sft_b"]
    out = capsys.readouterr().out
    lines = [line.split() for line in out.splitlines()]
    assert lines[0] == ["stage", "type", "outcome", "eval", "accuracy", "wall", "time"]
    assert [row[:3] for row in lines[1:5]] == [["rows", "test_rows", "ran"], ["sft", "sft", "ran"],
                                               ["rm_like", "test_copy_model", "ran"], ["sft_b", "sft", "ran"]]
    assert lines[1][3] == "-" and lines[3][3] == "-"
    acc = json.loads((run / "sft" / "eval.json").read_text())["accuracy"]
    assert lines[2][3] == f"{acc:.4f}"

    # Same recipe again: everything is reused. A changed eval section re-evaluates the
    # policy stages' models without retraining them.
    mtime = (run / "sft" / "model" / "model.safetensors").stat().st_mtime_ns
    run_recipe(validate_recipe({**raw, "eval": {**raw["eval"], "limit": 2}}))
    out = capsys.readouterr().out
    assert [line.split()[:3] for line in out.splitlines()[1:5]] == [
        ["rows", "test_rows", "reused"], ["sft", "sft", "reused"], ["rm_like", "test_copy_model", "reused"],
        ["sft_b", "sft", "reused"]]
    assert json.loads((run / "sft" / "eval.json").read_text())["n"] == 2
    assert json.loads((run / "sft_b" / "eval.json").read_text())["n"] == 2
    assert (run / "sft" / "model" / "model.safetensors").stat().st_mtime_ns == mtime
