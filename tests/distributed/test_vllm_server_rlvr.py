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
from rlvr_recipe import TINY_BASE, step_rows, write_recipe

pytest.importorskip("vllm")

STEPS = 3


@pytest.fixture
def server(tmp_path):
    from posttrain.rollout.vllm_server import READY

    env = {**os.environ, "OMP_NUM_THREADS": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    with open(tmp_path / "server.log", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "posttrain.rollout.vllm_server", "serve", str(TINY_BASE),
                                 "--port", "0"], stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=ROOT)
    line = proc.stdout.readline()
    assert line.startswith(READY), (tmp_path / "server.log").read_text()[-3000:]
    yield line.split()[-1]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


@pytest.mark.timeout(900)
def test_rlvr_on_two_fsdp2_processes_with_one_vllm_server(tmp_path, server):
    recipe = write_recipe(tmp_path, engine="vllm_server", vllm={"server_url": server}, max_steps=STEPS, beta=0.0,
                          learning_rate=1e-2)
    launch("fsdp2.yaml", 2, ["run", recipe], tmp_path / "cache")

    steps = step_rows(tmp_path / "run")
    assert [r["step"] for r in steps] == list(range(1, STEPS + 1))
    # right, wrong and unfinished (-1) answers: the advantages are not all zero, it trains
    assert steps[0]["reward/std"] > 0 and steps[0]["policy/grad_norm"] > 0
    for r in steps:  # every rollout came from the current weights
        assert r["policy/mismatch/abs_diff_mean"] < 1e-3, r["policy/mismatch/abs_diff_mean"]
    with urllib.request.urlopen(server + "/health") as resp:
        assert json.loads(resp.read())["weight_syncs"] == STEPS  # one push per step, by one process
    trained, before = (load_file(d / "model.safetensors") for d in (tmp_path / "run/rlvr/model", TINY_BASE))
    assert max(float((trained[k] - before[k].float()).abs().max()) for k in trained) > 1e-3  # it trained
    assert all(v.dtype == torch.float32 for v in trained.values())
