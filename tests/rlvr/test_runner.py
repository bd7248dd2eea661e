"""The stage's wiring (``runner.build_run``) on the real tiny OLMo-2: which models it
loads. ``beta: 0`` loads no reference model; ``beta > 0`` loads one frozen copy of the
input model; with LoRA the reference is the policy with its adapter disabled (no second
copy), and its log-probs are the input model's."""

from __future__ import annotations

import pytest
import torch

from posttrain.metrics import MetricsWriter
from posttrain.recipe.load import validate_recipe
from posttrain.stages.context import StageContext
from posttrain.stages.rlvr.runner import build_run
from rlvr_helpers import stage


def _build(workdir, model_dir, **overrides):
    recipe = validate_recipe({"output_dir": str(workdir / "run"), "seed": 0,
                              "model": {"name_or_path": str(model_dir), "dtype": "float32"},
                              "stages": {"rlvr": stage(workdir, **overrides)}})
    ctx = StageContext(name="rlvr", config=recipe.stages["rlvr"], recipe=recipe, input_model=str(model_dir),
                       input_revision=None, stage_dir=workdir / "run" / "rlvr",
                       metrics=MetricsWriter(workdir / "run" / "rlvr" / "metrics.jsonl"))
    return ctx, build_run(ctx)


@pytest.mark.parametrize("beta, lora, copies", [(0.0, None, 0), (0.01, None, 1), (0.01, {"r": 4, "alpha": 8}, 0)])
def test_reference_model_only_when_needed(workdir, tiny_model_dir, monkeypatch, beta, lora, copies):
    monkeypatch.syspath_prepend(str(workdir))  # the prompts' verifier plugin, evenlen.py
    ctx, run = _build(workdir, tiny_model_dir, beta=beta, lora=lora)
    try:
        frozen = run.trainer.engine.frozen
        assert len(frozen) == copies and set(frozen) <= {"reference"}
        assert (run.source.reference is None) == (beta == 0)
        if copies:
            ref = frozen["reference"]
            assert ref is not run.policy.model and not any(p.requires_grad for p in ref.parameters())
        if beta:  # the reference's log-probs are the input model's, whichever way it is held
            from posttrain.policy import Policy

            prompts, responses = [[0, 17, 42, 99]], [[310, 7, 256]]
            want = Policy.load(tiny_model_dir, device="cpu", dtype="float32").response_logprobs(prompts, responses)[0]
            got = run.source.reference(run.trainer.modules, prompts, responses)[0]
            assert torch.allclose(got, want, atol=1e-5), (got, want)
    finally:
        run.close()
        ctx.metrics.close()


def test_prompts_and_responses_fit_the_model_positions(tiny_model_dir):
    from types import SimpleNamespace

    from transformers import AutoConfig

    from posttrain.errors import PosttrainError
    from posttrain.stages.rlvr.engines import prompt_limit

    positions = AutoConfig.from_pretrained(tiny_model_dir).max_position_embeddings  # 1024 here
    ctx = SimpleNamespace(name="rlvr", input_model=str(tiny_model_dir), input_revision=None)

    def cfg(**fields):
        return validate_recipe({"output_dir": "/tmp/unused",
                                "stages": {"rlvr": {"train_data": [{"path": "a/b"}], **fields}}}).stages["rlvr"]

    assert prompt_limit(cfg(max_length=64, max_new_tokens=6), ctx) == 64
    # the defaults (2048 + 2048) exceed the model: prompts are cut to what leaves room
    assert prompt_limit(cfg(max_length=2048, max_new_tokens=80), ctx) == positions - 80
    assert prompt_limit(cfg(max_length=2048, max_new_tokens=80, eval_max_new_tokens=100), ctx) == positions - 100
    with pytest.raises(PosttrainError, match=r"^stages\.rlvr\.max_new_tokens: 1024-token responses leave no room"):
        prompt_limit(cfg(max_new_tokens=positions), ctx)
