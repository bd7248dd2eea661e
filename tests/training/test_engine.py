"""The step engine on its own: the optimizer holds the prepared parameters, bf16 compute
keeps fp32 master weights (where plain bf16 weights lose a small update), fp16 is refused,
and the minibatch plan of a rollout batch is a pure function of (seed, step, pass)."""

from __future__ import annotations

import pytest
import torch

from posttrain.errors import PosttrainError
from posttrain.training import LossOutput, OptimizerSettings, StepEngine, get_accelerator
from posttrain.training.batching import minibatch_plan, pad_collate


@pytest.fixture(autouse=True)
def _fp32_afterwards():
    yield
    get_accelerator("no")  # the accelerator's precision is per process: leave it as the other tests expect


def _model(path, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)


def _sft_step(engine, name, examples):
    def loss_fn(model, batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logp = torch.log_softmax(logits[:, :-1].float(), -1)
        mask = batch["labels"][:, 1:] != -100
        nll = -logp.gather(-1, batch["labels"][:, 1:].clamp(min=0)[..., None]).squeeze(-1)
        return LossOutput((nll * mask).sum(), mask.sum())

    return engine.step(name, [pad_collate(examples[:4], pad_id=1), pad_collate(examples[4:], pad_id=1)], loss_fn)


def test_optimizer_holds_the_prepared_parameters(small_model_dir):
    engine = StepEngine()
    tm = engine.add_model("policy", _model(small_model_dir), OptimizerSettings(learning_rate=1e-3), total_steps=1)
    prepared = [p for p in tm.module.parameters() if p.requires_grad]
    in_optimizer = [p for g in tm.optimizer.param_groups for p in g["params"]]
    assert {id(p) for p in in_optimizer} == {id(p) for p in prepared} and len(in_optimizer) == len(prepared)
    with pytest.raises(ValueError, match="already"):
        engine.add_frozen("policy", _model(small_model_dir))


def _fraction_changed(before, model) -> float:
    """Of the weights outside the input embedding (whose unused rows get no gradient)."""
    changed = total = 0
    for name, p in model.named_parameters():
        if "embed_tokens" in name:
            continue
        changed += int((p.detach() != before[name]).sum())
        total += p.numel()
    return changed / total


def test_bf16_compute_updates_fp32_master_weights_at_small_learning_rates(small_model_dir, examples):
    """An Adam step moves each weight by about lr (1e-6 here). Near 0.02, fp32 values are
    about 1.9e-9 apart, so the step shows; bf16 values are about 1.2e-4 apart, so a bf16
    weight rounds back to itself unless it is within about 2.6e-4 of 0 (under 2% of
    weights drawn with std 0.02)."""
    exs = examples(8, seed=3)
    settings = OptimizerSettings(learning_rate=1e-6, lr_scheduler="constant", max_grad_norm=None)

    mixed = StepEngine(mixed_precision="bf16")
    tm = mixed.add_model("policy", _model(small_model_dir), settings, total_steps=1)
    before = {n: p.detach().clone() for n, p in tm.model.named_parameters()}
    dtypes: list = []
    tm.model.model.layers[0].mlp.register_forward_hook(lambda mod, args, out: dtypes.append(out.dtype))
    _sft_step(mixed, "policy", exs)
    assert dtypes == [torch.bfloat16, torch.bfloat16]  # bf16 compute in both micro-batches
    assert all(p.dtype == torch.float32 for p in tm.model.parameters())  # fp32 master weights
    assert _fraction_changed(before, tm.model) > 0.9

    plain = StepEngine(mixed_precision="no")
    tm = plain.add_model("policy", _model(small_model_dir, torch.bfloat16), settings, total_steps=1)
    before = {n: p.detach().clone() for n, p in tm.model.named_parameters()}
    _sft_step(plain, "policy", exs)
    assert _fraction_changed(before, tm.model) < 0.05


def test_fp16_is_refused(small_model_dir):
    with pytest.raises(PosttrainError, match="fp16"):
        StepEngine(mixed_precision="fp16")
    with pytest.raises(PosttrainError, match="fp16"):
        StepEngine().add_model("policy", _model(small_model_dir, torch.float16), OptimizerSettings(1e-3),
                               total_steps=1)


def test_minibatch_plan_is_a_pure_function_of_seed_step_and_pass():
    plan = minibatch_plan(10, 3, 2, seed=0, step=4, pass_index=1)
    assert plan == minibatch_plan(10, 3, 2, seed=0, step=4, pass_index=1)
    assert [sum(len(mb) for mb in part) for part in plan] == [4, 3, 3]  # near-equal parts
    assert all(len(mb) <= 2 for part in plan for mb in part)
    assert sorted(i for part in plan for mb in part for i in mb) == list(range(10))  # each sample once
    assert plan != minibatch_plan(10, 3, 2, seed=0, step=4, pass_index=0)  # reshuffled per pass
    assert plan != minibatch_plan(10, 3, 2, seed=0, step=5, pass_index=1)  # and per step
    assert minibatch_plan(4, 2, 8, seed=0, step=0, pass_index=0, shuffle=False) == [[[0, 1]], [[2, 3]]]
    assert minibatch_plan(1, 2, 8, seed=0, step=0, pass_index=0)[1] == []  # fewer samples than parts
