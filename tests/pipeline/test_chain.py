"""Stage types and chaining, checked at load time (nothing trains here): ``type:`` picks
the runner, ``from_stage`` must name an earlier stage of the right kind, the run
directory's recipe keeps every stage field, and every recipe in ``recipes/`` validates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from posttrain.pipeline.run import resolved_recipe_yaml
from posttrain.recipe import RecipeError, load_recipe, validate_recipe
from posttrain.recipe.chain import resolve_data_sources, stage_refs
from posttrain.recipe.schema import DataSource, ModelFromStage

from pipeline_helpers import write_recipe

ROOT = Path(__file__).resolve().parents[2]


def _raw(data_dir: Path, tmp_path: Path, **stages) -> dict:
    return {"output_dir": str(tmp_path / "run"), "stages": stages}


def _sft(data_dir, **fields) -> dict:
    return {"train_data": [{"path": str(data_dir / "chats.jsonl")}], "learning_rate": 1e-3, **fields}


def test_type_runs_one_runner_under_two_names(data_dir, tmp_path):
    r = validate_recipe(_raw(data_dir, tmp_path, sft=_sft(data_dir),
                             sft_more={**_sft(data_dir, packing=True), "type": "sft"}))
    assert [(n, c.type, type(c).__name__) for n, c in r.stages.items()] == [("sft", "sft", "SFTConfig"),
                                                                          ("sft_more", "sft", "SFTConfig")]
    assert r.stages["sft_more"].packing is True  # validated against SFT's own fields


def test_from_stage_data_source_is_checked_and_resolved(data_dir, tmp_path, side_stages):
    r = validate_recipe(_raw(data_dir, tmp_path,
                             rows={"type": "test_rows", "source": str(data_dir / "chats.jsonl")},
                             sft=_sft(data_dir, train_data=[{"from_stage": "rows", "amount": 0.5},
                                                            {"path": str(data_dir / "more.jsonl")}]),
                             copy={"type": "test_copy_model", "init_from": {"from_stage": "sft"}}))
    sft = r.stages["sft"]
    # the file check does not fire for a stage's output, which does not exist yet
    assert sft.train_data[0].path is None and sft.train_data[0].from_stage == "rows"
    assert [(x.field, x.stage, x.wants) for x in stage_refs(sft)] == [("train_data.0.from_stage", "rows", "data")]
    assert [(x.field, x.stage, x.wants) for x in stage_refs(r.stages["copy"])] == [
        ("init_from.from_stage", "sft", "model")]
    assert isinstance(r.stages["copy"].init_from, ModelFromStage)

    resolved = resolve_data_sources(sft, lambda name: tmp_path / "run" / name / "data.jsonl")
    assert resolved.train_data[0].path == str(tmp_path / "run" / "rows" / "data.jsonl")
    assert resolved.train_data[0].amount == 0.5 and resolved.train_data[1] is sft.train_data[1]
    assert sft.train_data[0].path is None  # the recipe keeps what was written


CHAIN_ERRORS = [
    # (stages, expected message)
    ({"sft": {"train_data": [{"from_stage": "rows"}]}, "rows": {"type": "test_rows", "source": "%CHATS%"}},
     "stages.sft.train_data.0.from_stage: stage 'rows' runs after 'sft'; a stage reads only what an earlier "
     "stage wrote, so put 'rows' before 'sft'"),
    ({"sft": {"train_data": [{"from_stage": "sft"}]}}, "stages.sft.train_data.0.from_stage: a stage cannot read "
                                                         "its own output"),
    ({"sft": {"train_data": [{"from_stage": "pairs"}]}},
     "stages.sft.train_data.0.from_stage: no stage 'pairs' in this recipe (stages: sft)"),
    ({"sft": {}, "dpo": {"train_data": [{"from_stage": "sft"}]}},
     "stages.dpo.train_data.0.from_stage: stage 'sft' (sft) writes a model, not data; a data source can name a "
     "stage of type "),
    ({"rows": {"type": "test_rows", "source": "%CHATS%"}, "copy": {"type": "test_copy_model",
                                                                   "init_from": {"from_stage": "rows"}}},
     "stages.copy.init_from.from_stage: stage 'rows' (test_rows) writes data, not a model"),
    ({"sft": {"train_data": [{"path": "%CHATS%", "from_stage": "x"}]}},
     "stages.sft.train_data.0: give either path (a file or hub dataset) or from_stage"),
    ({"sft": {"train_data": [{"amount": 0.5}]}}, "stages.sft.train_data.0: give either path"),
    ({"sft": {"type": "rlhf"}}, "stages.sft.type: unknown stage type 'rlhf' (known: sft, dpo"),
    ({"rlvr_math": {"learning_rate": 1.0}}, "stages.rlvr_math: unknown stage type 'rlvr_math' (known: sft, dpo"),
    ({"base": {"type": "sft"}}, "stages.base: 'base' is the run directory's folder for the tiny starting model"),
    ({"my/sft": {"type": "sft"}}, "stages.my/sft: a stage name is its folder in the run directory"),
]


@pytest.mark.parametrize("stages,message", CHAIN_ERRORS, ids=[m.split(":")[0] + f"-{i}"
                                                              for i, (_, m) in enumerate(CHAIN_ERRORS)])
def test_impossible_chains_fail_naming_the_field(data_dir, tmp_path, side_stages, stages, message):
    chats = str(data_dir / "chats.jsonl")
    fixed = {}
    for name, section in stages.items():
        section = yaml.safe_load(yaml.safe_dump(section).replace("'%CHATS%'", chats).replace("%CHATS%", chats))
        if section.get("type", name) in ("sft", "dpo"):
            section = {"train_data": [{"path": chats}], "learning_rate": 1e-3, **section}
        fixed[name] = section
    with pytest.raises(RecipeError) as e:
        validate_recipe(_raw(data_dir, tmp_path, **fixed))
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)


def test_a_stage_written_twice_is_an_error_not_a_silent_drop(data_dir, tmp_path):
    p = write_recipe(tmp_path / "r.yaml", f"""
        output_dir: {tmp_path / 'run'}
        stages:
          sft: {{train_data: [{{path: {data_dir / 'chats.jsonl'}}}], learning_rate: 1.0e-3}}
          sft: {{train_data: [{{path: {data_dir / 'more.jsonl'}}}], learning_rate: 1.0e-3}}
        """)
    with pytest.raises(RecipeError, match=r"r\.yaml: line 5: duplicate key 'sft' \(to run sft twice, give each "
                                          r"stage its own name and type: sft\)$"):
        load_recipe(p)


def test_run_directory_recipe_keeps_every_stage_field(data_dir, tmp_path, side_stages):
    raw = _raw(data_dir, tmp_path, rows={"type": "test_rows", "source": str(data_dir / "chats.jsonl"), "n": 5},
               sft=_sft(data_dir, packing=True, loss_reduction="sum", train_data=[{"from_stage": "rows", "amount": 3}]),
               dpo={"train_data": [{"path": str(data_dir / "chats.jsonl")}], "beta": 0.25, "loss": "ipo"})
    recipe = validate_recipe(raw)
    text = resolved_recipe_yaml(recipe)
    dumped = yaml.safe_load(text)
    assert dumped["stages"]["sft"]["packing"] is True and dumped["stages"]["sft"]["loss_reduction"] == "sum"
    assert dumped["stages"]["dpo"]["beta"] == 0.25 and dumped["stages"]["dpo"]["loss"] == "ipo"
    assert dumped["stages"]["rows"] == {"type": "test_rows", "seed": 0, "source": str(data_dir / "chats.jsonl"),
                                        "n": 5}
    assert dumped["stages"]["sft"]["train_data"] == [{"path": None, "from_stage": "rows", "amount": 3,
                                                      "split": "train"}]
    again = load_recipe(write_recipe(tmp_path / "again.yaml", text))
    assert again.model_dump(mode="json") == recipe.model_dump(mode="json")
    assert isinstance(again.stages["sft"].train_data[0].amount, int)  # 3 rows, not 3x


def _posttrain(*args):
    return subprocess.run([sys.executable, "-m", "posttrain.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_schema_per_type_and_an_unknown_type():
    ok = _posttrain("schema", "dpo")
    assert ok.returncode == 0, ok.stderr
    assert "stages.dpo.type  (default None)" in ok.stdout and "stages.dpo.beta  (default 5.0)" in ok.stdout
    assert "stages.dpo.train_data.from_stage" in ok.stdout
    bad = _posttrain("schema", "ppo")
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("posttrain schema: error: unknown stage type 'ppo' (known: sft, dpo")


def _recipe_files() -> list[Path]:
    return sorted((ROOT / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", _recipe_files(), ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path, monkeypatch):
    """Schema and stage chaining only: hub models and datasets are named, not fetched."""
    monkeypatch.chdir(ROOT)  # recipe paths are relative to the repository root
    raw = yaml.safe_load(path.read_text())
    overrides = []
    start = str((raw.get("model") or {}).get("name_or_path", ""))
    if start.startswith(("runs/", "./runs/")):  # an earlier run's output, absent from a fresh clone
        overrides.append("model.name_or_path=tiny")
    recipe = load_recipe(path, overrides)
    assert recipe.stages
    for config in recipe.stages.values():
        for src in (getattr(config, "train_data", []) or []):
            assert isinstance(src, DataSource)
