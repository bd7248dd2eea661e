"""Two processes under torchrun (gloo on the CPU; plain DDP) train like one process that
accumulates the same two micro-batches per step: the shared loop's ``mean`` divides by the
tokens of the whole step across processes, so the losses and gradient norms of every step
(to 1e-4) and the final weights agree."""

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


def _recipe(tmp_path, name, accumulation):
    p = tmp_path / f"{name}.yaml"
    p.write_text(textwrap.dedent(f"""
        output_dir: {tmp_path / name}
        seed: 0
        model: {{name_or_path: {ROOT / 'posttrain/models/tiny_base'}}}
        stages:
          sft:
            train_data: [{{path: {ROOT / 'data/tiny/sft_train.jsonl'}, amount: 64}}]
            learning_rate: 1.0e-3
            max_steps: 3
            per_device_batch_size: 4
            gradient_accumulation_steps: {accumulation}
            max_length: 256
            warmup_ratio: 0.0
            logging_steps: 1
    """))
    return p


def _run(cmd, cache):
    # A private tokenization cache: no sharing with other runs of the suite on the machine.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "POSTTRAIN_CACHE": str(cache)}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _losses(run):
    rows = [json.loads(x) for x in (run / "sft/metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["grad_norm"]) for r in rows if "loss" in r]


def test_two_processes_match_one_process_with_accumulation(tmp_path):
    # --standalone: the rendezvous store binds a port the system picks and the workers use
    # that store, so runs side by side on one machine never fight over a fixed port.
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    r = _run([*torchrun, "-m", "posttrain.cli", "run", str(_recipe(tmp_path, "two", 1))], tmp_path / "cache")
    assert "3 steps of 2 micro-batches x 4" in r.stderr  # a world of 2, not two lone runs
    _run([sys.executable, "-m", "posttrain.cli", "run", str(_recipe(tmp_path, "one", 2))], tmp_path / "cache")
    losses = [_losses(tmp_path / run) for run in ("one", "two")]
    assert [r[0] for r in losses[0]] == [r[0] for r in losses[1]] == [1, 2, 3]
    for a, b in zip(*losses):
        assert a[1:] == pytest.approx(b[1:], rel=1e-4)
    two = load_file(tmp_path / "two/sft/model/model.safetensors")
    one = load_file(tmp_path / "one/sft/model/model.safetensors")
    base = load_file(ROOT / "posttrain/models/tiny_base/model.safetensors")
    assert two.keys() == one.keys()
    moved = False
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=2e-5, rtol=1e-4)
        moved |= not torch.allclose(one[k].float(), base[k].float())
    assert moved
