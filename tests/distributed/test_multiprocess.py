"""Two processes under torchrun (gloo on the CPU) train like one process that accumulates
the same two micro-batches per step: the shared loop's ``mean`` divides by the tokens of
the whole step across processes, so the final weights agree."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

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


def _run(cmd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_two_processes_match_one_process_with_accumulation(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
    r = _run([*torchrun, "-m", "posttrain.cli", "run", str(_recipe(tmp_path, "two", 1))])
    assert "3 steps of 2 micro-batches x 4" in r.stderr  # a world of 2, not two lone runs
    _run([sys.executable, "-m", "posttrain.cli", "run", str(_recipe(tmp_path, "one", 2))])
    two = load_file(tmp_path / "two/sft/model/model.safetensors")
    one = load_file(tmp_path / "one/sft/model/model.safetensors")
    base = load_file(ROOT / "posttrain/models/tiny_base/model.safetensors")
    assert two.keys() == one.keys()
    moved = False
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=2e-5, rtol=1e-4)
        moved |= not torch.allclose(one[k].float(), base[k].float())
    assert moved
