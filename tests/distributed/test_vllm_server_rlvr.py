"""The ``rlvr`` stage on two FSDP2 processes (gloo) sampling from ONE vLLM server process
(``engine: vllm_server``), the layout of a run whose generation lives on another node:
each process sends its prompts over HTTP, and after each step the full weights, gathered
from the shards, are pushed by the main process only, before any process samples again.

At lr 1e-2 one step moves the tiny base's log-probs by ~1 nat (tests/rollout), so a
server still holding older weights at any step's rollout, on either process, would put
the logged engine/trainer mismatch far above the fp32 noise asserted here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request

import pytest
import torch
from safetensors.torch import load_file

from dist_launch import ROOT, launch

pytest.importorskip("vllm")

BASE = ROOT / "posttrain/models/tiny_base"
STEPS = 3

RECIPE = """
output_dir: {out}
seed: 0
model: {{name_or_path: {base}}}
stages:
  rlvr:
    train_data: [{{path: {prompts}}}]
    engine: vllm_server
    vllm: {{server_url: "{url}"}}
    max_steps: {steps}
    prompts_per_step: 4
    samples_per_prompt: 4
    max_new_tokens: 48
    max_length: 64
    non_stop_penalty: -1.0
    beta: 0.0
    per_device_batch_size: 4
    verifier_workers: 1
    learning_rate: 1.0e-2
    logging_steps: 1
"""


@pytest.fixture
def server(tmp_path):
    from posttrain.rollout.vllm_server import READY

    env = {**os.environ, "OMP_NUM_THREADS": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    with open(tmp_path / "server.log", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "posttrain.rollout.vllm_server", "serve", str(BASE),
                                 "--port", "0"], stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=ROOT)
    line = proc.stdout.readline()
    assert line.startswith(READY), (tmp_path / "server.log").read_text()[-3000:]
    yield line.split()[-1]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


@pytest.mark.timeout(900)
def test_rlvr_on_two_fsdp2_processes_with_one_vllm_server(tmp_path, server):
    rows = (ROOT / "data/tiny/rlvr_train.jsonl").read_text().splitlines()[:12]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(rows) + "\n")
    recipe = tmp_path / "rlvr.yaml"
    recipe.write_text(RECIPE.format(out=tmp_path / "run", base=BASE, prompts=prompts, url=server, steps=STEPS))
    launch("fsdp2.yaml", 2, ["run", recipe], tmp_path / "cache")

    metrics = [json.loads(x) for x in (tmp_path / "run/rlvr/metrics.jsonl").read_text().splitlines()]
    steps = [r for r in metrics if "policy/loss" in r]
    assert [r["step"] for r in steps] == list(range(1, STEPS + 1))
    # right, wrong and unfinished (-1) answers: the advantages are not all zero, it trains
    assert steps[0]["reward/std"] > 0 and steps[0]["policy/grad_norm"] > 0
    for r in steps:  # every rollout came from the current weights
        assert r["policy/mismatch/abs_diff_mean"] < 1e-3, r["policy/mismatch/abs_diff_mean"]
    with urllib.request.urlopen(server + "/health") as resp:
        assert json.loads(resp.read())["weight_syncs"] == STEPS  # one push per step, by one process
    trained, before = (load_file(d / "model.safetensors") for d in (tmp_path / "run/rlvr/model", BASE))
    assert max(float((trained[k] - before[k].float()).abs().max()) for k in trained) > 1e-3  # it trained
    assert all(v.dtype == torch.float32 for v in trained.values())
