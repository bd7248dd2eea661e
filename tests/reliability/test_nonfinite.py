"""A NaN or Inf in an optimizer step's loss or gradients: the stage stops before applying
it (the checkpoints already written stay the last good ones), or, with
``skip_nonfinite_steps: true``, the step is skipped and counted. Real ``posttrain run``,
no fault injected into our code, in SFT and in the RLVR stage (GRPO):

- SFT on the tiny base: a learning rate of 1e30 makes the first update blow the weights
  up, and the second step's forward pass overflows into NaN.
- GRPO on the tiny model: a KL coefficient of 1e38. At step 1 the policy is its
  reference, so the KL and its gradient are exactly 0 and the step (moved by the
  verifier rewards) is applied; from step 2 on, beta x KL overflows fp32 into inf. (An
  RLVR run cannot use the 1e30 learning rate: its next step samples from the blown-up
  weights before any loss is computed; see ``test_rlvr_update_that_blows_up_the_weights``.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

SFT_RECIPE = """
output_dir: run
model: {name_or_path: {model}}
stages:
  sft:
    train_data: [{path: {data}}]
    learning_rate: 1.0e+30
    lr_scheduler: constant
    warmup_ratio: 0.0
    max_steps: 4
    save_steps: 1
    keep_last: 4
    per_device_batch_size: 4
    logging_steps: 1
"""


@pytest.fixture
def workdir(sft_workdir) -> Path:
    return sft_workdir(SFT_RECIPE)


def posttrain(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "POSTTRAIN_CACHE": str(workdir / "cache"), "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "posttrain.cli", "run", "recipe.yaml", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=600)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _all_finite(weights: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in weights.values())


def test_nan_step_stops_the_stage_and_keeps_the_last_good_checkpoint(workdir):
    r = posttrain(workdir)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert r.stderr.splitlines()[-1].startswith(
        "posttrain run: error: model 'policy': optimizer step 2: the loss or gradient is not finite"), r.stderr[-2000:]
    assert "stopped before applying it" in r.stderr.splitlines()[-1]
    stage = workdir / "run" / "sft"
    assert not (stage / "model").exists() and not (stage / "DONE").exists()
    checkpoints = sorted(p.name for p in (stage / "checkpoints").iterdir())
    assert len(checkpoints) == 1 and checkpoints[0].startswith("step1-"), checkpoints
    weights = _weights(stage / "checkpoints" / checkpoints[0])
    assert _all_finite(weights)
    assert max(float(t.abs().max()) for t in weights.values()) > 1e20  # the first update did happen


def test_skip_nonfinite_steps_skips_and_counts_them(workdir):
    r = posttrain(workdir, "--set", "stages.sft.skip_nonfinite_steps=true")
    assert r.returncode == 0, r.stderr[-3000:]
    stage = workdir / "run" / "sft"
    rows = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    last = [row for row in rows if "loss" in row][-1]
    assert last["step"] == 4 and last["nonfinite_skipped_steps"] == 3
    assert "nonfinite_skipped_steps" not in [row for row in rows if "loss" in row][0]  # step 1 was fine
    # Steps 2-4 were all skipped: the final model is step 1's weights, bit for bit, and finite.
    final = _weights(stage / "model")
    step1 = _weights(next((stage / "checkpoints").glob("step1-*")))
    assert _all_finite(final)
    assert final.keys() == step1.keys() and all(torch.equal(final[k], step1[k]) for k in final)


# ------------------------------------------------------------------------------ RLVR
def _rlvr_recipe(workdir: Path, model: Path, **fields) -> None:
    """A short GRPO stage on prompts scored by the built-in ``max_length`` verifier by
    characters: the tiny model's responses differ in length, so each group gets mixed
    rewards and step 1's update moves the policy away from its reference."""
    truth = json.dumps({"length": 3, "unit": "chars", "scale": 8})
    rows = [{"messages": [{"role": "user", "content": f"Say {i} in three letters."}], "dataset": "max_length",
             "ground_truth": truth} for i in range(8)]
    (workdir / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rlvr = {"type": "rlvr", "train_data": [{"path": "prompts.jsonl"}], "max_steps": 3, "prompts_per_step": 2,
            "samples_per_prompt": 4, "max_new_tokens": 6, "max_length": 64, "learning_rate": 1e-2,
            "per_device_batch_size": 4, "verifier_workers": 1, "save_steps": 1, "keep_last": 5, **fields}
    recipe = {"output_dir": "run", "seed": 0, "model": {"name_or_path": str(model)}, "stages": {"rlvr": rlvr}}
    (workdir / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))


def _step_rows(stage: Path) -> list[dict]:
    rows = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if "policy/loss" in row]


def test_rlvr_nonfinite_step_stops_the_stage_and_keeps_the_last_good_checkpoint(tmp_path, tiny_model_dir):
    _rlvr_recipe(tmp_path, tiny_model_dir, beta=1e38)
    r = posttrain(tmp_path)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    last = r.stderr.splitlines()[-1]
    assert last.startswith("posttrain run: error: model 'policy': optimizer step 2: the loss or gradient is not "
                           "finite (loss sum on this process inf); stopped before applying it"), last
    stage = tmp_path / "run" / "rlvr"
    assert not (stage / "model").exists() and not (stage / "DONE").exists()
    rows = _step_rows(stage)
    assert [row["step"] for row in rows] == [1]
    assert rows[0]["policy/kl"] == 0.0 and rows[0]["policy/grad_norm"] > 0  # step 1: KL 0, yet it moved
    checkpoints = sorted(p.name for p in (stage / "checkpoints").iterdir())
    assert len(checkpoints) == 1 and checkpoints[0].startswith("step1-"), checkpoints
    step1, start = _weights(stage / "checkpoints" / checkpoints[0]), _weights(tiny_model_dir)
    assert _all_finite(step1)
    assert any(not torch.equal(step1[k], start[k]) for k in step1)  # step 1's update is in the checkpoint


def test_rlvr_skip_nonfinite_steps_skips_and_counts_them(tmp_path, tiny_model_dir):
    _rlvr_recipe(tmp_path, tiny_model_dir, beta=1e38, skip_nonfinite_steps=True)
    r = posttrain(tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    stage = tmp_path / "run" / "rlvr"
    rows = _step_rows(stage)
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert "nonfinite_skipped_steps" not in rows[0]  # step 1 was fine
    assert [row["nonfinite_skipped_steps"] for row in rows[1:]] == [1, 2]
    # Steps 2 and 3 were skipped: the final model is step 1's weights, bit for bit.
    final = _weights(stage / "model")
    step1 = _weights(next((stage / "checkpoints").glob("step1-*")))
    assert _all_finite(final)
    assert final.keys() == step1.keys() and all(torch.equal(final[k], step1[k]) for k in final)


def test_rlvr_update_that_blows_up_the_weights_stops_with_one_line(tmp_path, tiny_model_dir):
    """A learning rate of 1e30 leaves finite but huge weights (the guard passes the step);
    the next step's sampling meets non-finite probabilities and must say so, not crash."""
    _rlvr_recipe(tmp_path, tiny_model_dir, learning_rate=1e30)
    r = posttrain(tmp_path)
    assert r.returncode == 2, r.stderr[-3000:]
    last = r.stderr.splitlines()[-1]
    assert "not finite" in last and "lower the learning rate" in last, last
    assert "Traceback" not in r.stderr
