"""A PPO run SIGKILLed after a checkpoint resumes from it and, with the ``hf`` engine and a
fixed seed, ends with bitwise the same policy, value model and both optimizers' states as
an uninterrupted run (several PPO epochs and minibatches per step, so the value clip and
the minibatch shuffle are part of what must replay)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from posttrain.training.checkpoint import latest_checkpoint, list_checkpoints
from rlvr_helpers import kill_and_resume, same_optimizer, same_tensors, stage, step_rows, write_recipe

STEPS = 4


@pytest.mark.timeout(900)
def test_killed_ppo_run_resumes_to_identical_models_and_optimizers(workdir, tiny_model_dir):
    def recipe(name):
        rlvr = stage(workdir, algorithm="ppo", max_steps=STEPS, save_steps=1, keep_last=10, beta=0.05,
                     learning_rate=3e-3, num_iterations=2, num_minibatches=2, non_stop_penalty=-10.0,
                     ppo={"value_learning_rate": 5e-3})
        return write_recipe(workdir, tiny_model_dir, {"rlvr": rlvr}, name=f"{name}.yaml",
                            output_dir=str(workdir / name))

    straight, killed, done = kill_and_resume(workdir, recipe, STEPS)
    a, b = latest_checkpoint(straight / "checkpoints"), latest_checkpoint(killed / "checkpoints")
    assert a.name == b.name and a.name.startswith(f"step{STEPS}-")
    assert same_tensors(load_file(a / "model.safetensors"), load_file(b / "model.safetensors"))
    value = "models/value/model.safetensors"
    assert same_tensors(load_file(a / value), load_file(b / value))
    for opt in ("optimizer.pt", "optimizer-value.pt"):
        oa, ob = (torch.load(x / "trainer_state" / opt) for x in (a, b))
        assert oa["state"] and same_optimizer(oa, ob), opt
    # the value model really trained: it differs from the one at the first checkpoint
    first = sorted(list_checkpoints(straight / "checkpoints"))[0]
    assert not same_tensors(load_file(first / value), load_file(a / value))
    assert same_tensors(load_file(straight / "model" / "model.safetensors"),
                        load_file(killed / "model" / "model.safetensors"))
    ra = {x["step"]: x for x in step_rows(straight / "metrics.jsonl")}
    rb = {x["step"]: x for x in step_rows(killed / "metrics.jsonl")}
    for s in range(done + 1, STEPS + 1):
        for key in ("reward/mean", "policy/loss", "value/loss", "value/clip_frac", "value/explained_variance",
                    "reward/kl_penalty"):
            assert ra[s][key] == rb[s][key], (s, key)
