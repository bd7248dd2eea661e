"""A recipe's ``eval: {suites: ...}`` runs the standard suites after each policy stage
(local copies of the data sets from ../shared/conformance), and bad suite settings fail
when the recipe loads."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipeline"))
from pipeline_helpers import chat_rows, write_jsonl, write_recipe  # noqa: E402

from posttrain.errors import PosttrainError  # noqa: E402
from posttrain.pipeline import run_recipe  # noqa: E402
from posttrain.recipe import load_recipe  # noqa: E402


def _recipe(tmp_path, eval_section: str) -> Path:
    write_jsonl(tmp_path / "chats.jsonl", chat_rows(16))
    return write_recipe(tmp_path / "r.yaml", f"""
        output_dir: {tmp_path / 'run'}
        model: {{name_or_path: tiny}}
        stages:
          sft:
            train_data: [{{path: {tmp_path / 'chats.jsonl'}}}]
            max_steps: 1
            per_device_batch_size: 4
        eval: {eval_section}
        """)


def test_suites_run_after_a_stage(tmp_path, monkeypatch, conformance_dir):
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))
    gsm = conformance_dir / "gsm8k" / "test.jsonl"
    ifeval = conformance_dir / "ifeval" / "input_data.jsonl"
    recipe = _recipe(tmp_path, f"{{suites: [gsm8k, ifeval], suite_data: {{gsm8k: {gsm}, ifeval: {ifeval}}}, "
                               f"limit: 2, batch_size: 2}}")
    run = run_recipe(load_recipe(recipe))
    ev = json.loads((run / "sft" / "eval.json").read_text())
    assert set(ev["suites"]) == {"gsm8k", "ifeval"}
    assert ev["suites"]["gsm8k"]["n"] == 2 and ev["suites"]["ifeval"]["n"] == 2
    assert "prompt_level_strict" in ev["suites"]["ifeval"]
    assert "accuracy" not in ev  # no prompt file: only the suites' results
    rows = [json.loads(line) for line in (run / "sft" / "eval_responses.jsonl").read_text().splitlines()]
    assert [r["suite"] for r in rows] == ["gsm8k", "gsm8k", "ifeval", "ifeval"]


@pytest.mark.parametrize("section, message", [
    ("{suites: [gsm9k]}", "eval.suites: .*unknown suite 'gsm9k'"),
    ("{suites: [gsm8k], suite_data: {math500: x.jsonl}}", "suite_data.math500: not one of suites"),
    ("{suites: [gsm8k], suite_data: {gsm8k: /nonexistent.jsonl}}", "no such file"),
    ("{limit: 3}", "give data .* suites, or both"),
])
def test_bad_suite_settings_fail_at_load(tmp_path, section, message):
    with pytest.raises(PosttrainError, match=message):
        load_recipe(_recipe(tmp_path, section))
