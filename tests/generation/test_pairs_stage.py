"""The ``pairs`` stage through ``posttrain run``: it samples from its input model, scores,
writes pairs, trains nothing, and the next stage (DPO) starts from the same input model and
trains on the pairs through ``{from_stage: pairs}``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from posttrain.data.onpolicy_pairs import build_pairs

VERIFIER = '''
def short(response, ground_truth, prompt=None):
    return float(len(response) <= int(ground_truth))
'''


def _run(recipe: Path, *extra, cwd: Path):
    exe = Path(sys.executable).parent / "posttrain"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "posttrain.cli"]
    env = dict(os.environ, PYTHONPATH=str(cwd), POSTTRAIN_CACHE=str(cwd / "cache"))
    return subprocess.run(cmd + ["run", str(recipe), *extra], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=900)


def _recipe(tmp_path: Path, model_dir: Path, **pairs_overrides) -> Path:
    (tmp_path / "lenverifier.py").write_text(VERIFIER)
    questions = ["What is 2 + 3?", "Add 4 and 9.", "Subtract 7 from 35.", "12+30=?", "What is 8 - 5?", "Sum 6 and 1."]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": q, "dataset": "lenverifier:short", "ground_truth": 14}) + "\n"
                               for q in questions))
    recipe = {
        "output_dir": str(tmp_path / "run"),
        "seed": 0,
        "model": {"name_or_path": str(model_dir)},
        "stages": {
            "pairs": {"prompt_data": [{"path": str(prompts)}], "n": 4, "max_new_tokens": 8, "batch_size": 4,
                      "verifier_workers": 1, **pairs_overrides},
            "dpo": {"train_data": [{"from_stage": "pairs"}], "max_steps": 2, "per_device_batch_size": 2,
                    "max_length": 96, "learning_rate": 1e-5, "logging_steps": 1},
        },
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))  # stages run in the order written
    return path


def test_pairs_stage_feeds_dpo_and_passes_the_model_through(tiny_model_dir, tmp_path):
    r = _run(_recipe(tmp_path, tiny_model_dir), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    run = tmp_path / "run"
    samples = [json.loads(line) for line in (run / "pairs" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 * 4 and all(s["score"] == float(len(s["response"]) <= 14) for s in samples)
    pairs = [json.loads(line) for line in (run / "pairs" / "data.jsonl").read_text().splitlines()]
    assert pairs and pairs == build_pairs(samples, seed=0)[0]  # the stage's seed is the recipe's
    metrics = [json.loads(line) for line in (run / "pairs" / "metrics.jsonl").read_text().splitlines()]
    logged = {k: v for m in metrics for k, v in m.items()}
    assert logged["pairs/pairs"] == len(pairs) and logged["prompts/kept"] == 6 and "samples/pass@4" in logged
    assert not (run / "pairs" / "model").exists()  # it trains nothing
    # DPO starts from the pairs stage's own input (the recipe's model), not from a pairs model...
    dpo_inputs = json.loads((run / "dpo" / "stage.json").read_text())["inputs"]
    assert "base" in dpo_inputs["model"] and "pairs" in dpo_inputs["stages"]
    assert f"stage dpo (dpo): from {tiny_model_dir} into" in r.stderr
    # ...and trains on every pair the pairs stage wrote.
    dpo_metrics = {k: v for line in (run / "dpo" / "metrics.jsonl").read_text().splitlines()
                   for k, v in json.loads(line).items()}
    assert dpo_metrics["data/train/kept"] == len(pairs)
    assert (run / "dpo" / "model" / "config.json").is_file()


def test_pairs_stage_config_is_checked_before_anything_runs(tiny_model_dir, tmp_path):
    r = _run(_recipe(tmp_path, tiny_model_dir, n=1), "--dry-run", cwd=tmp_path)
    assert r.returncode == 2 and "stages.pairs.n" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _run(_recipe(tmp_path, tiny_model_dir, samples=3), "--dry-run", cwd=tmp_path)
    assert r.returncode == 2 and "stages.pairs.samples" in r.stderr
    r = _run(_recipe(tmp_path, tiny_model_dir), "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
