"""A GRPO run SIGKILLed after a checkpoint resumes from it and, with the ``hf`` engine and a
fixed seed, ends with bitwise the same weights and optimizer state as an uninterrupted
run. Only finished checkpoints count: a ``.tmp`` folder is never one."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from posttrain.training.checkpoint import latest_checkpoint, list_checkpoints
from rlvr_helpers import env, posttrain_cmd, stage, step_rows, write_recipe

STEPS = 5


def _recipe(workdir, model_dir, name):
    rlvr = stage(workdir, max_steps=STEPS, save_steps=1, keep_last=10, beta=0.01, learning_rate=3e-3,
                 dynamic_sampling=True, max_sampling_rounds=2)
    return write_recipe(workdir, model_dir, {"rlvr": rlvr}, name=f"{name}.yaml", output_dir=str(workdir / name))


def _start(recipe, workdir, log):
    return subprocess.Popen(posttrain_cmd() + ["run", str(recipe)], stdout=log, stderr=subprocess.STDOUT,
                            env=env(workdir), cwd=workdir)


@pytest.mark.timeout(900)
def test_killed_grpo_run_resumes_to_identical_weights(workdir, tiny_model_dir):
    straight = _recipe(workdir, tiny_model_dir, "straight")
    killed = _recipe(workdir, tiny_model_dir, "killed")
    ckpts = workdir / "killed" / "rlvr" / "checkpoints"
    with open(workdir / "straight.log", "w") as a, open(workdir / "killed.log", "w") as b:
        proc_straight = _start(straight, workdir, a)
        proc = _start(killed, workdir, b)
        deadline = time.time() + 600
        # kill once step 2's checkpoint is finished (renamed from .tmp, with its trainer state)
        while not any(p.name.startswith("step2-") for p in list_checkpoints(ckpts)):
            assert proc.poll() is None, (workdir / "killed.log").read_text()[-3000:]
            assert time.time() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    done = [int(p.name.split("-")[0][4:]) for p in list_checkpoints(ckpts)]
    assert max(done) < STEPS, "the run finished before it was killed"
    with open(workdir / "resumed.log", "w") as c:
        resumed = _start(killed, workdir, c)
        assert resumed.wait(timeout=600) == 0, (workdir / "resumed.log").read_text()[-3000:]
    assert proc_straight.wait(timeout=600) == 0, (workdir / "straight.log").read_text()[-3000:]
    assert "resuming at step" in (workdir / "resumed.log").read_text()

    a = latest_checkpoint(workdir / "straight" / "rlvr" / "checkpoints")
    b = latest_checkpoint(ckpts)
    assert a.name == b.name and a.name.startswith(f"step{STEPS}-")
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    oa, ob = (torch.load(x / "trainer_state" / "optimizer.pt") for x in (a, b))
    for k, s in oa["state"].items():
        assert all(torch.equal(s[n], ob["state"][k][n]) for n in s)
    final_a = load_file(workdir / "straight" / "rlvr" / "model" / "model.safetensors")
    final_b = load_file(workdir / "killed" / "rlvr" / "model" / "model.safetensors")
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    # the metrics of the steps after the resume are the uninterrupted run's
    ra = {x["step"]: x for x in step_rows(workdir / "straight" / "rlvr" / "metrics.jsonl")}
    rb = {x["step"]: x for x in step_rows(workdir / "killed" / "rlvr" / "metrics.jsonl")}
    for s in range(max(done) + 1, STEPS + 1):
        for key in ("reward/mean", "policy/loss", "policy/kl", "length/mean", "sampling/rounds"):
            assert ra[s][key] == rb[s][key], (s, key)
