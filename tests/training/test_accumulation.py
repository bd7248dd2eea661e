"""The loop's reductions under gradient accumulation: 4 micro-batches of 2 give the same
gradient as one batch of 8, for ``mean`` (per-token mean over the whole step) and ``sum``."""

from functools import partial

import pytest
import torch

from posttrain.losses.sft import sft_loss
from posttrain.policy import Policy
from posttrain.stages.sft import count_label_tokens, sft_loss_fn
from posttrain.training import Trainer
from posttrain.training.batching import pad_collate


def _grads(ctx, examples, group, reduction, count_items=None):
    policy = Policy.load(ctx.input_model, device="cpu")
    trainer = Trainer(ctx, policy, examples, partial(pad_collate, pad_id=1), sft_loss_fn, reduction=reduction,
                      count_items=count_items, progress=False)
    loss_sum, items, _, tokens = trainer.compute_gradients(group)
    assert tokens == sum(len(e["input_ids"]) for e in examples)
    return {n: p.grad.clone() for n, p in policy.model.named_parameters()}, loss_sum, items, policy


@pytest.mark.parametrize("count_items", [None, count_label_tokens], ids=["rescale-grads", "count-first"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_accumulated_micro_batches_equal_one_big_batch(ctx_factory, examples, reduction, count_items):
    exs = examples(8, seed=11, lo=4, hi=40)  # very different lengths and label counts
    split, _, items, _ = _grads(ctx_factory(per_device_batch_size=2, gradient_accumulation_steps=4), exs,
                                [[0, 1], [2, 3], [4, 5], [6, 7]], reduction, count_items)
    whole, _, items_whole, policy = _grads(ctx_factory(per_device_batch_size=8), exs, [list(range(8))], reduction,
                                           count_items)
    assert int(items) == int(items_whole)

    # and both equal the gradient of the textbook loss on the whole batch
    policy.model.zero_grad()
    batch = pad_collate(exs, pad_id=1)
    logits = policy.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    total, n = sft_loss(logits, batch["labels"])
    (total / n if reduction == "mean" else total).backward()
    for name, p in policy.model.named_parameters():
        # equal up to float32 summation order: tolerance relative to the tensor's scale
        atol = 1e-5 * whole[name].abs().max().item()
        torch.testing.assert_close(split[name], whole[name], rtol=1e-4, atol=atol)
        torch.testing.assert_close(whole[name], p.grad, rtol=1e-4, atol=atol)


def test_mean_is_not_a_mean_of_micro_batch_means(ctx_factory, examples):
    """Guard against the common bug (averaging per-micro-batch means): with unequal token
    counts that weighting differs from the per-token mean checked above."""
    exs = examples(4, seed=2, lo=4, hi=40)
    grads, _, _, policy = _grads(ctx_factory(per_device_batch_size=2, gradient_accumulation_steps=2), exs,
                                 [[0, 1], [2, 3]], "mean")
    policy.model.zero_grad()
    for half in ([0, 1], [2, 3]):
        b = pad_collate([exs[i] for i in half], pad_id=1)
        total, n = sft_loss(policy.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["labels"])
        (total / n / 2).backward()
    diff = max((grads[k] - p.grad).abs().max().item() for k, p in policy.model.named_parameters())
    assert diff > 1e-6
