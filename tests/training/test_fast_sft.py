"""The SFT speed paths give the same numbers as the plain ones: the LM head applied at
label positions only, static-width collates, and ``compile: true`` in the Trainer."""

from __future__ import annotations

import pytest
import torch

from posttrain.losses.sft import label_positions
from posttrain.training.batching import packed_collate, pad_collate


def _loss_and_grads(model, batch, loss_fn):
    model.zero_grad()
    out = loss_fn(model, batch)
    out.loss_sum.backward()
    return out.loss_sum.detach(), int(out.n_items), {n: p.grad.clone() for n, p in model.named_parameters()
                                                      if p.grad is not None}


def _with_positions(batch):
    batch = dict(batch)
    batch["loss_positions"], batch["loss_targets"] = label_positions(batch["labels"])
    return batch


@pytest.mark.parametrize("packed", [False, True])
def test_label_position_loss_equals_full_logits_loss(small_model_dir, examples, packed):
    from transformers import AutoModelForCausalLM

    from posttrain.stages.sft import decoder_and_head, sft_loss_fn

    model = AutoModelForCausalLM.from_pretrained(small_model_dir)
    assert decoder_and_head(model) is not None
    exs = examples(12, seed=3, lo=3, hi=30)
    batch = packed_collate(exs, pad_id=1, max_length=64) if packed else pad_collate(exs, pad_id=1)
    loss_a, n_a, grads_a = _loss_and_grads(model, batch, sft_loss_fn)  # full logits
    loss_b, n_b, grads_b = _loss_and_grads(model, _with_positions(batch), sft_loss_fn)
    assert n_a == n_b > 0
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-5, atol=1e-5, msg=name)


def test_label_positions_layout():
    labels = torch.tensor([[-100, -100, 7, 8], [-100, 5, -100, -100]])
    pos, tgt = label_positions(labels)
    # row 0: positions 1, 2 predict 7, 8; row 1: position 0 predicts 5 (flat index 4)
    assert pos.tolist() == [1, 2, 4] and tgt.tolist() == [7, 8, 5]


def test_static_width_collates(examples):
    exs = examples(5, seed=1, lo=3, hi=10)
    assert pad_collate(exs, pad_id=1, width=32)["input_ids"].shape == (5, 32)
    b = packed_collate(exs, pad_id=1, max_length=32, width=32)
    assert b["input_ids"].shape[1] == 32 and b["n_tokens"] == sum(len(e["input_ids"]) for e in exs)


def test_lora_label_position_loss_trains_the_adapter(small_model_dir, examples):
    from posttrain.policy import LoraSettings, Policy
    from posttrain.stages.sft import sft_loss_fn

    policy = Policy.load(small_model_dir, device="cpu", lora=LoraSettings(r=4, alpha=8))
    batch = pad_collate(examples(6, seed=2), pad_id=1)
    loss_a, _, grads_a = _loss_and_grads(policy.model, batch, sft_loss_fn)
    loss_b, _, grads_b = _loss_and_grads(policy.model, _with_positions(batch), sft_loss_fn)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-5)
    assert grads_b and all("lora_" in n for n in grads_b)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-5, atol=1e-5, msg=name)


def test_compiled_trainer_matches_eager(ctx_factory, small_model_dir, examples):
    """Same data, same seed: a compiled run ends within float tolerance of an eager one,
    and its saved model has the plain parameter names."""
    from safetensors.torch import load_file

    from posttrain.policy import Policy
    from posttrain.stages.sft import count_label_tokens, make_batching, sft_loss_fn
    from posttrain.training import Trainer

    exs = examples(24, seed=4, lo=5, hi=30)
    weights = {}
    for compiled in (False, True):
        ctx = ctx_factory(per_device_batch_size=8, max_steps=3, packing=True, max_length=64, compile=compiled,
                          warmup_ratio=0.0, logging_steps=1)
        policy = Policy.load(small_model_dir, device="cpu")
        collate, plan = make_batching(ctx.config, exs, 1, seed=0)
        Trainer(ctx, policy, exs, collate, sft_loss_fn, exs[:8], batch_plan=plan, count_items=count_label_tokens,
                progress=False).train()
        weights[compiled] = load_file(ctx.model_dir / "model.safetensors")
    assert weights[True].keys() == weights[False].keys()
    for name in weights[False]:
        torch.testing.assert_close(weights[True][name], weights[False][name], rtol=1e-4, atol=1e-5, msg=name)
