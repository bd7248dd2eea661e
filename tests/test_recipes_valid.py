"""Every recipe in ``recipes/`` passes what ``posttrain run --dry-run`` checks before any
model loads (schema, stage types, ``from_stage`` chaining, local inputs, the run plan),
with the network closed: validating a recipe never downloads anything. The real OLMo 2
recipes also name the published pipeline, hub data sets and a source for every value."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
REAL = {"olmo2-1b-instruct.yaml", "tulu3-olmo2-7b.yaml"}


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt (a hub download) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"recipe validation tried to open a connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def validate(path: Path, tmp_path: Path, tiny_model_dir: Path):
    """What ``posttrain run RECIPE --dry-run`` does, into a fresh run directory. A recipe that
    starts from another run's output folder (``dpo_only.yaml`` reads ``runs/tiny/sft/model``)
    gets a real tiny model folder in its place when that run has not been made here."""
    from posttrain.pipeline import plan_run
    from posttrain.recipe import load_recipe
    from posttrain.recipe.validate_inputs import check_inputs

    raw = yaml.safe_load(path.read_text())
    sets = [f"output_dir={tmp_path / 'run'}"]
    start = raw.get("model", {}).get("name_or_path", "tiny")
    if start.startswith((".", "/")) and not (ROOT / start).is_dir():
        sets.append(f"model.name_or_path={tiny_model_dir}")
    recipe = load_recipe(path, sets)
    check_inputs(recipe)
    steps = plan_run(recipe, Path(recipe.output_dir))
    assert [s.action for s in steps] == ["run"] * len(recipe.stages)
    return recipe, steps


def test_there_are_recipes():
    assert REAL <= {p.name for p in RECIPES} and "tiny.yaml" in {p.name for p in RECIPES}


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_validates_without_downloading(path, tmp_path, tiny_model_dir, no_network, monkeypatch):
    monkeypatch.chdir(ROOT)  # recipe paths are relative to the repository root
    recipe, steps = validate(path, tmp_path, tiny_model_dir)
    assert steps[0].input_stage is None


def test_olmo2_1b_instruct_is_sft_dpo_then_two_grpo_stages(tmp_path, tiny_model_dir, no_network, monkeypatch):
    monkeypatch.chdir(ROOT)
    recipe, steps = validate(ROOT / "recipes/olmo2-1b-instruct.yaml", tmp_path, tiny_model_dir)
    assert recipe.model.name_or_path == "allenai/OLMo-2-0425-1B"
    assert [(s.name, s.spec.name) for s in steps] == [("sft", "sft"), ("dpo", "dpo"), ("rlvr_mixed", "rlvr"),
                                                      ("rlvr_math", "rlvr")]
    # Each policy stage starts from the one before it: RLVR 2 from RLVR 1, not from DPO.
    assert [s.input_stage for s in steps] == [None, "sft", "dpo", "rlvr_mixed"]
    st = recipe.stages
    assert [d.path for d in st["sft"].train_data] == ["allenai/tulu-3-sft-olmo-2-mixture-0225"]
    assert [d.path for d in st["dpo"].train_data] == ["allenai/olmo-2-0425-1b-preference-mix"]
    assert [d.path for d in st["rlvr_mixed"].train_data] == ["allenai/RLVR-GSM-MATH-IF-Mixed-Constraints"]
    assert [d.path for d in st["rlvr_math"].train_data] == ["allenai/RLVR-MATH"]
    for name in ("rlvr_mixed", "rlvr_math"):
        c = st[name]
        assert (c.algorithm, c.learning_rate, c.beta, c.prompts_per_step, c.samples_per_prompt) == (
            "grpo", 5e-7, 0.01, 48, 16)
        assert c.max_steps == 2_000_000 // (48 * 16)  # total_episodes 2,000,000 in whole steps, as grpo_fast counts
    assert (st["dpo"].loss, st["dpo"].beta, st["dpo"].learning_rate) == ("dpo_norm", 5.0, 2.5e-6)
    # Effective batch 128 on 8 processes, as published.
    assert st["sft"].per_device_batch_size * st["sft"].gradient_accumulation_steps * 8 == 128
    assert st["dpo"].per_device_batch_size * st["dpo"].gradient_accumulation_steps * 8 == 128


def test_tulu3_olmo2_7b_is_sft_dpo_then_ppo(tmp_path, tiny_model_dir, no_network, monkeypatch):
    monkeypatch.chdir(ROOT)
    recipe, steps = validate(ROOT / "recipes/tulu3-olmo2-7b.yaml", tmp_path, tiny_model_dir)
    assert recipe.model.name_or_path == "allenai/OLMo-2-1124-7B"
    assert [(s.name, s.spec.name, s.input_stage) for s in steps] == [("sft", "sft", None), ("dpo", "dpo", "sft"),
                                                                     ("rlvr", "rlvr", "dpo")]
    st = recipe.stages
    assert [d.path for d in st["sft"].train_data] == ["allenai/tulu-3-sft-olmo-2-mixture"]
    assert [d.path for d in st["dpo"].train_data] == ["allenai/olmo-2-1124-7b-preference-mix"]
    assert [d.path for d in st["rlvr"].train_data] == ["allenai/RLVR-GSM-MATH-IF-Mixed-Constraints"]
    rl = st["rlvr"]
    assert (rl.algorithm, rl.learning_rate, rl.beta, rl.non_stop_penalty) == ("ppo", 3e-7, 0.05, -10.0)
    assert rl.ppo.value_model == "allenai/OLMo-2-1124-7B-RM"
    assert st["sft"].per_device_batch_size * st["sft"].gradient_accumulation_steps * 8 == 128
    assert st["dpo"].per_device_batch_size * st["dpo"].gradient_accumulation_steps * 8 == 128


VALUE_LINE = re.compile(r"^\s*(?:- )?[A-Za-z_]+:\s*[^\s#{][^#]*?(#.*)?$")


@pytest.mark.parametrize("name", sorted(REAL))
def test_every_value_of_a_real_recipe_names_its_source(name):
    """A ``key: value`` line (not a section header) carries a comment; in stage sections the
    comment names a source tag from the file's header, e.g. ``[olmo2.md]``."""
    text = (ROOT / "recipes" / name).read_text()
    tags = set(re.findall(r"^#\s+(\[[^\]]+\])", text, flags=re.M))
    assert tags, "the header lists the sources"
    missing, untagged = [], []
    in_stages = False
    for n, line in enumerate(text.splitlines(), 1):
        if re.match(r"^\S", line):
            in_stages = line.startswith("stages:")
        m = VALUE_LINE.match(line)
        if not m or line.lstrip().startswith("#"):
            continue
        if m.group(1) is None:
            missing.append(f"{n}: {line.strip()}")
        elif in_stages and not any(t in m.group(1) for t in tags) and not line.strip().startswith("type: "):
            untagged.append(f"{n}: {line.strip()}")
    assert not missing, "values without a comment:\n" + "\n".join(missing)
    assert not untagged, "stage values whose comment names no source:\n" + "\n".join(untagged)


def test_tiny_recipe_is_the_whole_tulu3_pipeline_on_held_out_questions(tmp_path, tiny_model_dir, no_network,
                                                                       monkeypatch):
    """SFT -> on-policy pairs from the SFT model -> DPO on those pairs -> GRPO, then a greedy
    eval on at least 500 held-out questions (none of them, nor their phrasings when marked
    held out, in any training file the recipe reads)."""
    import json

    from posttrain.data import tiny_task

    monkeypatch.chdir(ROOT)
    recipe, steps = validate(ROOT / "recipes/tiny.yaml", tmp_path, tiny_model_dir)
    assert [(s.name, s.spec.name) for s in steps] == [("sft", "sft"), ("pairs", "pairs"), ("dpo", "dpo"),
                                                      ("rlvr", "rlvr")]
    assert [s.input_stage for s in steps] == [None, "sft", "sft", "dpo"]  # pairs sample the SFT model
    assert [d.from_stage for d in recipe.stages["dpo"].train_data] == ["pairs"]
    assert recipe.stages["rlvr"].algorithm == "grpo"
    ev = recipe.eval
    rows = [json.loads(line) for line in Path(ev.data).read_text().splitlines()]
    assert min(len(rows), ev.limit or len(rows)) >= 500
    assert {r["phrasing"] for r in rows} == {"trained", "held_out"}
    held = {tuple(k) for k in tiny_task.split_keys(0)[1]}
    for r in rows:  # every eval question is a held-out triple
        x, y = map(int, re.findall(r"\d+", r["prompt"])[:2])
        assert any(k in held for k in ((min(x, y), max(x, y), "+"), (min(x, y), max(x, y), "-")))
    trained_questions = set()  # the user turns of every file the recipe trains on
    for cfg in recipe.stages.values():
        for field in ("train_data", "prompt_data"):
            for src in getattr(cfg, field, []) or []:
                if src.path:
                    for line in Path(src.path).read_text().splitlines():
                        row = json.loads(line)
                        trained_questions.update(m["content"] for m in row.get("messages", []) if m["role"] == "user")
    assert len(trained_questions) > 1000
    assert not {r["prompt"] for r in rows} & trained_questions
