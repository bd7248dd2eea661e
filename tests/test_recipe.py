"""Recipe validation: a bad recipe fails before any model loads, with one line naming the
field path and the problem."""

import subprocess
import sys
import textwrap

import pytest

from posttrain.recipe import RecipeError, load_recipe


@pytest.fixture
def data_file(tmp_path):
    p = tmp_path / "chats.jsonl"
    p.write_text('{"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]}\n')
    return p


def write(tmp_path, body: str):
    p = tmp_path / "recipe.yaml"
    p.write_text(textwrap.dedent(body))
    return p


GOOD = """
output_dir: {out}
seed: 1
stages:
  sft:
    train_data: [{{path: {data}, amount: 1.0}}]
    learning_rate: 1.0e-4
"""


def test_good_recipe_loads_with_defaults_and_overrides(tmp_path, data_file):
    p = write(tmp_path, GOOD.format(out=tmp_path / "run", data=data_file))
    r = load_recipe(p, ["stages.sft.learning_rate=3e-5", "model.init_seed=7"])
    assert r.stages["sft"].learning_rate == 3e-5
    assert r.stages["sft"].seed == 1  # inherited from the recipe
    assert r.model.name_or_path == "tiny" and r.model.init_seed == 7


BAD = [
    # (change to the good recipe as --set overrides, expected message)
    (["outptu_dir=x"], "outptu_dir: unknown field"),
    (["stages.sft.learning_rate=fast"], "stages.sft.learning_rate: Input should be a valid number"),
    (["stages.sft.learning_rate=-1"], "stages.sft.learning_rate: Input should be greater than 0"),
    (["stages.sft.warmup_ratio=1.5"], "stages.sft.warmup_ratio: Input should be less than 1"),
    (["stages.sft.train_data=[{path: missing.jsonl}]"], "stages.sft.train_data.0.path: no such data file: missing.jsonl"),
    (["stages.sft.train_data=[{path: %DATA%, amount: 0}]"], "stages.sft.train_data.0.amount: amount must be > 0"),
    (["stages.sft.lora={rank: 8}"], "stages.sft.lora.rank: unknown field"),
    (["stages.sft.lora={r: 0}"], "stages.sft.lora.r: Input should be greater than 0"),
    (["stages.ppo={learning_rate: 1}"], "stages.ppo: unknown stage"),
    (["model.dtype=int8"], "model.dtype: Input should be 'auto', 'float32', 'bfloat16' or 'float16'"),
    (["model.name_or_path=./no/such/folder"], "model: Value error, name_or_path: no model folder"),
    (["stages={}"], "stages: a recipe needs at least one stage"),
    (["eval={data: nothing.jsonl}"], "eval.data: no such data file: nothing.jsonl"),
    (["stages.sft.learning_rate.x=1"], "--set stages.sft.learning_rate.x: stages.sft.learning_rate is not a section"),
    (["learning_rate"], "--set 'learning_rate': expected dotted.path=value"),
    (["stages.sft.type=rlhf"], "stages.sft.type: unknown stage type 'rlhf' (known: sft, dpo"),
    (["stages.sft2={type: sft, train_data: [{from_stage: sft}], learning_rate: 1.0}"],
     "stages.sft2.train_data.0.from_stage: stage 'sft' (sft) writes a model, not data"),
    (["stages.sft.eval_data=[{from_stage: sft2}]", "stages.sft2={type: sft, train_data: [{path: %DATA%}], "
      "learning_rate: 1.0}"], "stages.sft.eval_data.0.from_stage: stage 'sft2' runs after 'sft'"),
    (["stages.sft.train_data=[{from_stage: pairs}]"], "stages.sft.train_data.0.from_stage: no stage 'pairs' in this"),
    (["stages.sft.train_data=[{path: %DATA%, from_stage: sft}]"], "stages.sft.train_data.0: give either path"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_recipes_name_the_field(tmp_path, data_file, overrides, message):
    p = write(tmp_path, GOOD.format(out=tmp_path / "run", data=data_file))
    overrides = [o.replace("%DATA%", str(data_file)) for o in overrides]
    with pytest.raises(RecipeError) as e:
        load_recipe(p, overrides)
    assert str(e.value).startswith(message.replace("Value error, ", "")), str(e.value)
    assert "\n" not in str(e.value)


def test_missing_output_dir_and_bad_yaml(tmp_path, data_file):
    p = write(tmp_path, f"stages: {{sft: {{train_data: [{{path: {data_file}}}], learning_rate: 1.0}}}}\n")
    with pytest.raises(RecipeError, match="^output_dir: required field is missing$"):
        load_recipe(p)
    p.write_text("stages: [unclosed\n")
    with pytest.raises(RecipeError, match="is not valid YAML"):
        load_recipe(p)
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe(tmp_path / "nope.yaml")


def test_cli_bad_recipe_is_one_line_and_exit_2(tmp_path, data_file):
    p = write(tmp_path, GOOD.format(out=tmp_path / "run", data=data_file))
    r = subprocess.run([sys.executable, "-m", "posttrain.cli", "run", str(p), "--set", "stages.sft.max_length=1"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == "posttrain run: error: stages.sft.max_length: Input should be greater than 1"
    assert not (tmp_path / "run").exists()  # nothing was started


def test_cli_impossible_stage_order_is_one_line_and_exit_2(tmp_path, data_file):
    p = write(tmp_path, GOOD.format(out=tmp_path / "run", data=data_file))
    r = subprocess.run([sys.executable, "-m", "posttrain.cli", "run", str(p), "--set",
                        "stages.sft.train_data=[{from_stage: dpo}]", "--set",
                        f"stages.dpo={{train_data: [{{path: {data_file}}}]}}"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == ("posttrain run: error: stages.sft.train_data.0.from_stage: stage 'dpo' runs after "
                                "'sft'; a stage reads only what an earlier stage wrote, so put 'dpo' before 'sft'")
    assert not (tmp_path / "run").exists()


def test_cli_dry_run(tmp_path, data_file):
    p = write(tmp_path, GOOD.format(out=tmp_path / "run", data=data_file))
    r = subprocess.run([sys.executable, "-m", "posttrain.cli", "run", str(p), "--dry-run"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "recipe OK: stages sft" in r.stdout


def test_model_path_with_folders_must_exist(tmp_path, data_file):
    p = write(tmp_path, GOOD.format(out=tmp_path / "run", data=data_file))
    with pytest.raises(RecipeError, match="no model folder at 'models/not/here'"):
        load_recipe(p, ["model.name_or_path=models/not/here"])
    # a hub id is taken as such (nothing is fetched at validation time)
    assert load_recipe(p, ["model.name_or_path=allenai/OLMo-2-0425-1B"]).model.name_or_path == "allenai/OLMo-2-0425-1B"
