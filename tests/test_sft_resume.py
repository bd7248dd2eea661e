"""Kill-and-resume, for real: ``posttrain run`` in a subprocess is SIGKILLed once a
checkpoint exists, started again with the same command, and must end with the same
weights as an uninterrupted run (bitwise). Attention dropout is on, so the RNG restore is
exercised, and the run crosses several epochs, so the data-order restore is too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from posttrain.training.checkpoint import list_checkpoints

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "tiny"


@pytest.fixture(scope="module")
def dropout_model(tmp_path_factory) -> Path:
    from posttrain.models import TinyModelSpec, init_tiny_model

    d = init_tiny_model(tmp_path_factory.mktemp("drop") / "model", seed=0,
                        spec=TinyModelSpec(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                           num_attention_heads=2))
    cfg = json.loads((d / "config.json").read_text())
    cfg["attention_dropout"] = 0.1
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def _recipe(tmp: Path, model: Path, name: str) -> Path:
    recipe = {
        "output_dir": str(tmp / name),
        "seed": 3,
        "model": {"name_or_path": str(model)},
        "stages": {"sft": {
            "train_data": [{"path": str(DATA / "sft_train.jsonl"), "amount": 96}],
            "eval_data": [{"path": str(DATA / "sft_eval.jsonl"), "amount": 16}],
            "learning_rate": 1e-3, "max_length": 128, "per_device_batch_size": 8,
            "gradient_accumulation_steps": 2, "max_steps": 60, "save_steps": 7, "keep_last": 2,
            "eval_steps": 25, "logging_steps": 5, "lr_scheduler": "cosine", "warmup_ratio": 0.1,
        }},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _cmd(recipe: Path) -> list[str]:
    return [sys.executable, "-m", "posttrain.cli", "run", str(recipe)]


def _env(tmp: Path) -> dict:
    return {**os.environ, "POSTTRAIN_CACHE": str(tmp / "cache"), "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1"}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "sft" / "model" / "model.safetensors"))


@pytest.mark.timeout(600)
def test_killed_run_resumes_to_identical_weights(tmp_path, dropout_model):
    env = _env(tmp_path)
    straight = _recipe(tmp_path, dropout_model, "straight")
    subprocess.run(_cmd(straight), env=env, check=True, capture_output=True, timeout=300)

    killed = _recipe(tmp_path, dropout_model, "killed")
    ckpts = tmp_path / "killed" / "sft" / "checkpoints"
    proc = subprocess.Popen(_cmd(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    # Wait for a *finished* checkpoint, as the resume will see it: one still being written
    # (``stepN-....tmp``) would be discarded and the rerun would rightly start over.
    while time.time() < deadline and proc.poll() is None and not list_checkpoints(ckpts):
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before a checkpoint could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list_checkpoints(ckpts), "no finished checkpoint before the kill"
    assert not (tmp_path / "killed" / "sft" / "model").exists()
    # what a kill in the middle of a save leaves: a newer but incomplete folder
    (ckpts / "step59-tokens9K.tmp" / "trainer_state").mkdir(parents=True)

    again = subprocess.run(_cmd(killed), env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming at step" in again.stderr
    assert not list(ckpts.glob("*.tmp"))
    assert sorted(p.name for p in ckpts.iterdir())[-1].startswith("step60-tokens")
    assert len(list(ckpts.iterdir())) == 2  # keep_last

    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "killed")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    base = load_file(str(dropout_model / "model.safetensors"))
    assert not torch.equal(a["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])

    def last_loss(run):
        rows = [json.loads(x) for x in (tmp_path / run / "sft" / "metrics.jsonl").read_text().splitlines()]
        return [r for r in rows if "loss" in r and r["step"] == 60][-1]["loss"]

    assert last_loss("straight") == last_loss("killed")
