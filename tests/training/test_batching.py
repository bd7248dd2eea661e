"""Plans and collates, and the property packing rests on: a packed batch gives the same
loss and gradients as the same examples padded."""

import pytest
import torch

from posttrain.training.batching import (chunked_plan, length_grouped_plan, pack_rows, packed_collate, packed_plan,
                                         pad_collate)


def test_plans_are_pure_functions_of_seed_and_epoch(examples):
    lengths = [len(e["input_ids"]) for e in examples(50)]
    for make in (lambda s: chunked_plan(50, 4, s), lambda s: length_grouped_plan(lengths, 4, s, group=3),
                 lambda s: packed_plan(lengths, 2, 64, s)):
        a, b = make(1), make(1)
        assert a(0) == b(0) and a(3) == b(3)
        assert a(0) != a(1) and make(2)(0) != a(0)
        assert sorted(sum(a(2), [])) == list(range(50))  # every example once per epoch


def test_pack_rows_next_fit():
    assert pack_rows([3, 4, 2, 6, 1], 7) == [[0, 1], [2], [3, 4]]
    assert pack_rows([9, 1], 7) == [[0], [1]]  # too long for a row: a row of its own


def test_packed_plan_batches_rebuild_the_same_rows(examples):
    exs = examples(40, seed=3)
    plan = packed_plan([len(e["input_ids"]) for e in exs], 3, 48, seed=0)(0)
    for mb in plan:
        batch = packed_collate([exs[i] for i in mb], pad_id=1, max_length=48)
        assert batch["input_ids"].shape[0] <= 3 and batch["input_ids"].shape[1] <= 48
        assert batch["n_tokens"] == sum(len(exs[i]["input_ids"]) for i in mb)


def test_packed_collate_layout():
    exs = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}]
    b = packed_collate(exs, pad_id=1, max_length=8)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert b["labels"].tolist() == [[-100, 6, 7, -100, 9]]  # first label of each example masked
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert "attention_mask" not in b


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_equals_unpacked_loss_and_grads(small_model_dir, examples, attn):
    from transformers import AutoModelForCausalLM

    from posttrain.stages.sft import sft_loss_fn

    model = AutoModelForCausalLM.from_pretrained(small_model_dir, attn_implementation=attn)
    exs = examples(12, seed=5, lo=3, hi=30)

    def loss_and_grads(batch):
        model.zero_grad()
        out = sft_loss_fn(model, batch)
        out.loss_sum.backward()
        return out.loss_sum.detach(), int(out.n_items), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss_a, n_a, grads_a = loss_and_grads(pad_collate(exs, pad_id=1))
    packed = packed_collate(exs, pad_id=1, max_length=64)
    assert packed["input_ids"].shape[0] < len(exs)  # really packed, several examples per row
    loss_b, n_b, grads_b = loss_and_grads(packed)
    assert n_a == n_b
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-5)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-5, atol=1e-5, msg=name)
