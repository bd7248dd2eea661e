"""A GRPO run on the ``vllm`` engine SIGKILLed after a checkpoint resumes from it and ends
with the weights of an uninterrupted run. vLLM samples each request from its own seeded
generator (the stage derives the seeds from the recipe seed and the step), and the
resumed run syncs the checkpoint's weights into a fresh engine before its first sample,
so the tokens after the resume are the uninterrupted run's and the updates are too."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from posttrain.training.checkpoint import latest_checkpoint
from rlvr_helpers import kill_and_resume, stage, step_rows, write_recipe

pytest.importorskip("vllm")

STEPS = 4


@pytest.mark.timeout(1500)
def test_killed_grpo_run_on_vllm_resumes_to_the_uninterrupted_weights(workdir, tiny_model_dir):
    def recipe(name):
        # max_length 2048: prompts are limited to 2048 - 6 tokens, within the tiny model's
        # 1024 positions only once vLLM caps them (see test_stage's vLLM test)
        rlvr = stage(workdir, engine="vllm", vllm={"kv_cache_gb": 1}, max_length=2048, max_steps=STEPS,
                     save_steps=1, keep_last=10, beta=0.0, learning_rate=3e-3)
        return write_recipe(workdir, tiny_model_dir, {"rlvr": rlvr}, name=f"{name}.yaml",
                            output_dir=str(workdir / name))

    straight, killed, done = kill_and_resume(workdir, recipe, STEPS, kill_after=1)
    a, b = latest_checkpoint(straight / "checkpoints"), latest_checkpoint(killed / "checkpoints")
    assert a.name == b.name and a.name.startswith(f"step{STEPS}-")
    wa, wb = load_file(straight / "model" / "model.safetensors"), load_file(killed / "model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    # fp32 on CPU: vLLM's sampled tokens are reproducible, the updates from them bitwise so
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst == 0.0, worst
    ra = {x["step"]: x for x in step_rows(straight / "metrics.jsonl")}
    rb = {x["step"]: x for x in step_rows(killed / "metrics.jsonl")}
    for s in range(done + 1, STEPS + 1):
        assert ra[s]["reward/mean"] == rb[s]["reward/mean"] and ra[s]["length/mean"] == rb[s]["length/mean"], s
