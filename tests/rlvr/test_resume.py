"""A GRPO run SIGKILLed after a checkpoint resumes from it and, with the ``hf`` engine and a
fixed seed, ends with bitwise the same weights and optimizer state as an uninterrupted
run. Only finished checkpoints count: a ``.tmp`` folder is never one."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from posttrain.training.checkpoint import latest_checkpoint
from rlvr_helpers import kill_and_resume, same_optimizer, same_tensors, stage, step_rows, write_recipe

STEPS = 5


@pytest.mark.timeout(900)
def test_killed_grpo_run_resumes_to_identical_weights(workdir, tiny_model_dir):
    def recipe(name):
        rlvr = stage(workdir, max_steps=STEPS, save_steps=1, keep_last=10, beta=0.01, learning_rate=3e-3,
                     dynamic_sampling=True, max_sampling_rounds=2)
        return write_recipe(workdir, tiny_model_dir, {"rlvr": rlvr}, name=f"{name}.yaml",
                            output_dir=str(workdir / name))

    straight, killed, done = kill_and_resume(workdir, recipe, STEPS)
    a, b = latest_checkpoint(straight / "checkpoints"), latest_checkpoint(killed / "checkpoints")
    assert a.name == b.name and a.name.startswith(f"step{STEPS}-")
    assert same_tensors(load_file(a / "model.safetensors"), load_file(b / "model.safetensors"))
    oa, ob = (torch.load(x / "trainer_state" / "optimizer.pt") for x in (a, b))
    assert oa["state"] and same_optimizer(oa, ob)
    assert same_tensors(load_file(straight / "model" / "model.safetensors"),
                        load_file(killed / "model" / "model.safetensors"))
    # the metrics of the steps after the resume are the uninterrupted run's
    ra = {x["step"]: x for x in step_rows(straight / "metrics.jsonl")}
    rb = {x["step"]: x for x in step_rows(killed / "metrics.jsonl")}
    for s in range(done + 1, STEPS + 1):
        for key in ("reward/mean", "policy/loss", "policy/kl", "length/mean", "sampling/rounds"):
            assert ra[s][key] == rb[s][key], (s, key)
