"""The SFT stage end to end on the tiny data: recipe validation, packing / sum reduction /
length grouping through ``run_recipe``, LoRA (adapter-only training, merged output that
plain transformers loads), and gradient checkpointing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from posttrain.metrics import read_metrics
from posttrain.pipeline import run_recipe
from posttrain.recipe.load import RecipeError, validate_recipe

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "tiny"


def _raw(tmp: Path, model: Path, **sft) -> dict:
    stage = {"train_data": [{"path": str(DATA / "sft_train.jsonl"), "amount": 48}],
             "eval_data": [{"path": str(DATA / "sft_eval.jsonl"), "amount": 8}],
             "learning_rate": 1e-3, "max_length": 96, "per_device_batch_size": 4, "max_steps": 4,
             "logging_steps": 2, **sft}
    return {"output_dir": str(tmp / "run"), "model": {"name_or_path": str(model)}, "stages": {"sft": stage}}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("field,value", [("loss_reduction", "avg"), ("overlong", "cut"), ("packing", 3),
                                         ("group_by_length", "maybe")])
def test_bad_sft_field_fails_at_load_naming_it(tmp_path, small_model_dir, field, value):
    with pytest.raises(RecipeError, match=rf"^stages\.sft\.{field}: "):
        validate_recipe(_raw(tmp_path, small_model_dir, **{field: value}))


@pytest.mark.parametrize("sft", [{"packing": True}, {"loss_reduction": "sum", "max_grad_norm": None},
                                 {"group_by_length": True, "gradient_accumulation_steps": 2}])
def test_sft_runs_and_logs(tmp_path, small_model_dir, sft):
    run = run_recipe(validate_recipe(_raw(tmp_path, small_model_dir, **sft)))
    rows = read_metrics(run / "sft" / "metrics.jsonl")
    train = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train] == [2, 4]
    assert all(r["tokens_per_s"] > 0 and r["grad_norm"] > 0 and r["lr"] >= 0 for r in train)
    assert any("eval_loss" in r for r in rows)
    assert (run / "sft" / "DONE").exists() and (run / "sft" / "model" / "config.json").exists()
    assert [p.name.split("-")[0] for p in sorted((run / "sft" / "checkpoints").iterdir())] == ["step4"]


def test_lora_trains_only_the_adapter_and_saves_a_merged_model(tmp_path, small_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    lora = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "up_proj"]}
    run = run_recipe(validate_recipe(_raw(tmp_path, small_model_dir, lora=lora, learning_rate=1e-2)))
    out = run / "sft" / "model"
    merged, base = load_file(str(out / "model.safetensors")), load_file(str(small_model_dir / "model.safetensors"))
    assert merged.keys() == base.keys()  # no peft names: a plain transformers folder
    changed = {k for k in base if not torch.equal(merged[k], base[k])}
    assert changed and all(any(t in k for t in lora["target_modules"]) for k in changed)

    plain = AutoModelForCausalLM.from_pretrained(out)
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(small_model_dir), out / "adapter")
    ids = torch.tensor([[5, 40, 41, 90, 7, 8]])
    torch.testing.assert_close(plain(ids).logits, with_adapter(ids).logits, rtol=1e-4, atol=1e-5)


def test_lora_trainer_optimizes_adapter_params_only(ctx_factory, examples):
    from functools import partial

    from posttrain.policy import LoraSettings, Policy
    from posttrain.stages.sft import sft_loss_fn
    from posttrain.training import Trainer
    from posttrain.training.batching import pad_collate

    ctx = ctx_factory(per_device_batch_size=4)
    policy = Policy.load(ctx.input_model, device="cpu", lora=LoraSettings(r=4, alpha=8))
    trainer = Trainer(ctx, policy, examples(8), partial(pad_collate, pad_id=1), sft_loss_fn, progress=False)
    names = {id(p): n for n, p in policy.model.named_parameters()}
    assert trainer.params and all("lora_" in names[id(p)] for p in trainer.params)
    opt_params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    assert len(opt_params) == len(trainer.params)


def test_gradient_checkpointing_gives_the_same_loss_and_grads(small_model_dir, examples):
    from posttrain.policy import Policy
    from posttrain.stages.sft import sft_loss_fn
    from posttrain.training.batching import pad_collate

    batch = pad_collate(examples(6, seed=4), pad_id=1)
    results = []
    for gc in (False, True):
        policy = Policy.load(small_model_dir, device="cpu", gradient_checkpointing=gc)
        policy.model.train()
        out = sft_loss_fn(policy.model, batch)
        out.loss_sum.backward()
        results.append((out.loss_sum.detach(), {n: p.grad for n, p in policy.model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-6, atol=1e-6)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-7)
