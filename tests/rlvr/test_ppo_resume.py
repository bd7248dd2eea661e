"""A PPO run SIGKILLed after a checkpoint resumes from it and, with the ``hf`` engine and a
fixed seed, ends with bitwise the same policy, value model and both optimizers' states as
an uninterrupted run (several PPO epochs and minibatches per step, so the value clip and
the minibatch shuffle are part of what must replay)."""

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

STEPS = 4


def _recipe(workdir, model_dir, name):
    rlvr = stage(workdir, algorithm="ppo", max_steps=STEPS, save_steps=1, keep_last=10, beta=0.05,
                 learning_rate=3e-3, num_iterations=2, num_minibatches=2, non_stop_penalty=-10.0,
                 ppo={"value_learning_rate": 5e-3})
    return write_recipe(workdir, model_dir, {"rlvr": rlvr}, name=f"{name}.yaml", output_dir=str(workdir / name))


def _start(recipe, workdir, log):
    return subprocess.Popen(posttrain_cmd() + ["run", str(recipe)], stdout=log, stderr=subprocess.STDOUT,
                            env=env(workdir), cwd=workdir)


def _same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _same_optimizer(a, b) -> bool:
    return a["state"].keys() == b["state"].keys() and all(
        torch.equal(s[n], b["state"][k][n]) for k, s in a["state"].items() for n in s)


@pytest.mark.timeout(900)
def test_killed_ppo_run_resumes_to_identical_models_and_optimizers(workdir, tiny_model_dir):
    straight = _recipe(workdir, tiny_model_dir, "straight")
    killed = _recipe(workdir, tiny_model_dir, "killed")
    ckpts = workdir / "killed" / "rlvr" / "checkpoints"
    with open(workdir / "straight.log", "w") as a, open(workdir / "killed.log", "w") as b:
        proc_straight = _start(straight, workdir, a)
        proc = _start(killed, workdir, b)
        deadline = time.time() + 600
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
    assert _same_tensors(load_file(a / "model.safetensors"), load_file(b / "model.safetensors"))
    value = "models/value/model.safetensors"
    assert _same_tensors(load_file(a / value), load_file(b / value))
    for opt in ("optimizer.pt", "optimizer-value.pt"):
        oa, ob = (torch.load(x / "trainer_state" / opt) for x in (a, b))
        assert oa["state"] and _same_optimizer(oa, ob), opt
    # the value model really trained: it differs from the one at the first checkpoint
    first = sorted(list_checkpoints(workdir / "straight" / "rlvr" / "checkpoints"))[0]
    assert not _same_tensors(load_file(first / value), load_file(a / value))
    final_a = load_file(workdir / "straight" / "rlvr" / "model" / "model.safetensors")
    final_b = load_file(workdir / "killed" / "rlvr" / "model" / "model.safetensors")
    assert _same_tensors(final_a, final_b)
    ra = {x["step"]: x for x in step_rows(workdir / "straight" / "rlvr" / "metrics.jsonl")}
    rb = {x["step"]: x for x in step_rows(workdir / "killed" / "rlvr" / "metrics.jsonl")}
    for s in range(max(done) + 1, STEPS + 1):
        for key in ("reward/mean", "policy/loss", "value/loss", "value/clip_frac", "value/explained_variance",
                    "reward/kl_penalty"):
            assert ra[s][key] == rb[s][key], (s, key)
