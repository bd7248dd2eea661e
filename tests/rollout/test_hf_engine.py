"""What is particular to the ``hf`` engine: sharing the trainer's model object (free,
never stale sync), train mode and gradient checkpointing left as they were, batching
that does not change results, and LoRA weights merged for sync."""

from __future__ import annotations

import copy

import pytest
import torch

from posttrain.policy import LoraSettings, Policy
from posttrain.rollout import SamplingConfig, make_engine, policy_weights, rollout_mismatch
from rollout_helpers import PROMPTS, greedy_reference, optimizer_step


def test_shared_model_needs_no_sync(trainer):
    engine = make_engine("hf", None, trainer.tokenizer, model=trainer.model)
    assert engine.shares_weights
    optimizer_step(trainer, lr=1e-2)
    greedy = SamplingConfig(max_new_tokens=10, temperature=0.0)
    r = engine.generate(PROMPTS, 1, greedy)  # no update_weights: it is the trainer's model
    assert r.token_ids == greedy_reference(trainer.model, PROMPTS, 10)
    assert rollout_mismatch(trainer.model, PROMPTS, r, greedy, trainer.tokenizer.pad_token_id).max <= 1e-5
    engine.update_weights(iter(()))  # accepted, nothing to copy
    assert engine.weight_syncs == 1


def test_generation_restores_train_mode_and_works_under_gradient_checkpointing(tiny_model_dir):
    plain = Policy.load(tiny_model_dir, device="cpu")
    ckpt = Policy.load(tiny_model_dir, device="cpu", gradient_checkpointing=True)
    assert ckpt.model.config.use_cache is False
    ckpt.model.train()
    sampling = SamplingConfig(max_new_tokens=8, temperature=1.0, seed=4)
    a = make_engine("hf", None, ckpt.tokenizer, model=ckpt.model).generate(PROMPTS, 2, sampling)
    assert ckpt.model.training, "generate must give the trainer its model back in train mode"
    b = make_engine("hf", None, plain.tokenizer, model=plain.model).generate(PROMPTS, 2, sampling)
    assert a.token_ids == b.token_ids
    torch.testing.assert_close(torch.tensor(sum(a.logprobs, [])), torch.tensor(sum(b.logprobs, [])))


def test_batch_size_does_not_change_greedy_results(tiny_model_dir, trainer):
    greedy = SamplingConfig(max_new_tokens=10, temperature=0.0)
    one = make_engine("hf", None, trainer.tokenizer, model=trainer.model, batch_size=1).generate(PROMPTS, 2, greedy)
    many = make_engine("hf", None, trainer.tokenizer, model=trainer.model, batch_size=4).generate(PROMPTS, 2, greedy)
    assert one.token_ids == many.token_ids
    torch.testing.assert_close(torch.tensor(sum(one.logprobs, [])), torch.tensor(sum(many.logprobs, [])),
                               atol=1e-5, rtol=0)


def test_lora_weights_are_merged_for_sync(tiny_model_dir):
    lora = Policy.load(tiny_model_dir, device="cpu", lora=LoraSettings(r=4, alpha=8))
    optimizer_step(lora, lr=1e-2)  # moves the adapters away from zero
    synced = dict(policy_weights(lora.model))
    merged = copy.deepcopy(lora.model).merge_and_unload().state_dict()
    assert synced.keys() == merged.keys()
    for name in merged:
        torch.testing.assert_close(synced[name], merged[name], msg=name)
    assert any(not torch.equal(synced[n], t) for n, t in Policy.load(tiny_model_dir, device="cpu").model.state_dict().items())

    engine = make_engine("hf", tiny_model_dir, lora.tokenizer)  # a plain model of its own
    engine.update_weights(policy_weights(lora.model))
    greedy = SamplingConfig(max_new_tokens=10, temperature=0.0)
    r = engine.generate(PROMPTS, 1, greedy)
    assert rollout_mismatch(lora.model, PROMPTS, r, greedy, lora.tokenizer.pad_token_id).max <= 1e-5


def test_unknown_weight_name_is_refused(tiny_model_dir, trainer):
    engine = make_engine("hf", tiny_model_dir, trainer.tokenizer)
    with pytest.raises(KeyError, match="not.a.weight"):
        engine.update_weights([("not.a.weight", torch.zeros(1))])
