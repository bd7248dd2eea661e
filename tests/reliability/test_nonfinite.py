"""A NaN or Inf in an optimizer step's loss or gradients: the stage stops before applying
it (the checkpoints already written stay the last good ones), or, with
``skip_nonfinite_steps: true``, the step is skipped and counted. Real tiny OLMo-2, real
``posttrain run``: a learning rate of 1e30 makes the first update blow the weights up, and
the second step's forward pass overflows into NaN."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
TINY_BASE = ROOT / "posttrain" / "models" / "tiny_base"

RECIPE = f"""
output_dir: run
model: {{name_or_path: {TINY_BASE}}}
stages:
  sft:
    train_data: [{{path: sft.jsonl}}]
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
def workdir(tmp_path) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"{i} + {i}?"}, {"role": "assistant", "content": str(2 * i)}]}
            for i in range(16)]
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "recipe.yaml").write_text(textwrap.dedent(RECIPE))
    return tmp_path


def posttrain(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "POSTTRAIN_CACHE": str(workdir / "cache"), "OMP_NUM_THREADS": "1"}
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
