"""Samples -> micro-batches (``posttrain.stages.rlvr.batch``): both layouts checked by hand,
then against each other on the real tiny OLMo-2 (same log-probs, entropies and
gradients), the layout choice, and the loss mask."""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.logprobs import logprobs_at
from posttrain.stages.rlvr.batch import collate_samples, layout_flops, prompt_runs, sequence_batch
from posttrain.stages.rlvr.rollouts import Sample

PAD = 1
# two samples of prompt [0, 5, 6], then one of prompt [0, 7]
PROMPTS = [[0, 5, 6], [0, 5, 6], [0, 7]]
RESPONSES = [[10, 11], [12], [13, 14, 15]]


def test_prompt_runs_are_consecutive_equal_prompts():
    assert prompt_runs(PROMPTS) == [range(0, 2), range(2, 3)]
    assert prompt_runs([[1], [2], [1]]) == [range(0, 1), range(1, 2), range(2, 3)]  # only neighbours share


def test_one_row_per_sample_by_hand():
    b = sequence_batch(PROMPTS, RESPONSES, PAD, share="off")
    assert not b["shared"]
    assert b["input_ids"].tolist() == [[0, 5, 6, 10, 11], [0, 5, 6, 12, PAD], [0, 7, 13, 14, 15]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert b["position_ids"][:, :4].tolist() == [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]]
    # response token k is predicted at the column before it: row * width + column
    assert b["positions"].tolist() == [2, 3, 5 + 2, 10 + 1, 10 + 2, 10 + 3]
    assert b["targets"].tolist() == [10, 11, 12, 13, 14, 15]
    assert b["lengths"].tolist() == [2, 1, 3] and b["n_tokens"] == 5 + 4 + 5


def test_shared_prompt_rows_by_hand():
    b = sequence_batch(PROMPTS, RESPONSES, PAD, share="on")
    assert b["shared"]
    assert b["input_ids"].tolist() == [[0, 5, 6, 10, 11, 12], [0, 7, 13, 14, 15, PAD]]
    # responses continue from the prompt's positions; the second response restarts at 3
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 4, 3], [0, 1, 2, 3, 4, 0]]
    # the first token of both responses of prompt 0 is predicted by the prompt's last column (2)
    assert b["positions"].tolist() == [2, 3, 2, 6 + 1, 6 + 2, 6 + 3]
    assert b["targets"].tolist() == [10, 11, 12, 13, 14, 15]
    allow = b["attention_mask"]
    assert allow.shape == (2, 1, 6, 6) and allow.dtype == torch.bool
    assert allow[0, 0].int().tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],  # response 0 sees the prompt and itself
        [1, 1, 1, 1, 1, 0],
        [1, 1, 1, 0, 0, 1],  # response 1 sees the prompt and itself, never response 0
    ]
    assert allow[1, 0].int().tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],  # padding sees only itself
    ]
    assert b["n_tokens"] == 6 + 5


def test_auto_shares_short_responses_and_not_long_ones():
    tiny = (256, 688)
    assert sequence_batch(PROMPTS, RESPONSES, PAD, share="auto", dims=tiny)["shared"]
    # 16 responses of 2,048 tokens to one 100-token prompt (OLMo 2 1B's RLVR, 1B dims):
    # one 32k-token row with a dense mask costs far more attention than it saves.
    prompts, responses = [[0] * 100] * 16, [[5] * 2048] * 16
    runs = prompt_runs(prompts)
    shared = layout_flops(prompts, responses, runs, True, (2048, 8192))
    alone = layout_flops(prompts, responses, runs, False, (2048, 8192))
    assert shared > alone
    assert not sequence_batch(prompts, responses, PAD, share="auto", dims=(2048, 8192))["shared"]
    # hand check of the estimate for one 3-token row: 3 tokens x linear + 9 pairs x 4 x hidden
    assert layout_flops([[0, 1]], [[2]], [range(1)], False, (2, 3)) == 3 * 2 * (4 * 4 + 3 * 6) + 9 * 8


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from posttrain.policy import Policy

    return Policy.load(tiny_model_dir, device="cpu", dtype="float32").model


def _logprobs_and_grads(model, b):
    model.zero_grad()
    out = logprobs_at(model, b["input_ids"], b["positions"], b["targets"], attention_mask=b["attention_mask"],
                      position_ids=b["position_ids"], temperature=0.7, entropy=True)
    # a weighted sum, so that every token's gradient counts differently
    (out.logprobs * torch.arange(1.0, len(out.logprobs) + 1)).sum().backward()
    return out.logprobs.detach(), out.entropy.detach(), [p.grad.clone() for p in model.parameters()]


def test_shared_prompts_give_the_same_logprobs_and_gradients(model):
    g = torch.Generator().manual_seed(0)
    prompts = [[0, 5, 6, 7, 8]] * 3 + [[0, 9, 10]] * 2 + [[0, 11, 12, 13]]
    responses = [torch.randint(2, 500, (n,), generator=g).tolist() for n in (4, 1, 6, 3, 5, 2)]
    lp_a, ent_a, grads_a = _logprobs_and_grads(model, sequence_batch(prompts, responses, PAD, share="off"))
    lp_b, ent_b, grads_b = _logprobs_and_grads(model, sequence_batch(prompts, responses, PAD, share="on"))
    assert torch.allclose(lp_a, lp_b, atol=2e-5) and torch.allclose(ent_a, ent_b, atol=2e-5)
    scale = max(float(g.abs().max()) for g in grads_a)
    assert max(float((a - b).abs().max()) for a, b in zip(grads_a, grads_b)) < 1e-5 * scale
    # and each equals scoring the sample alone
    for i in (0, 2, 5):
        alone, _, _ = _logprobs_and_grads(model, sequence_batch([prompts[i]], [responses[i]], PAD, share="off"))
        start = sum(len(r) for r in responses[:i])
        assert torch.allclose(alone, lp_a[start : start + len(responses[i])], atol=2e-5)


def _sample(prompt, response, adv, trained=True, **kw):
    n = len(response)
    return Sample(prompt_ids=prompt, response_ids=response, engine_logprobs=torch.full((n,), -1.0),
                  advantages=torch.full((n,), float(adv)), trained=trained, **kw)


def test_collate_masks_and_padding_by_hand():
    samples = [_sample(PROMPTS[0], RESPONSES[0], 1.5), _sample(PROMPTS[1], RESPONSES[1], -0.5, trained=False),
               _sample(PROMPTS[2], RESPONSES[2], 2.0)]
    b = collate_samples(samples, PAD, share="on")
    assert b["response_mask"].int().tolist() == [[1, 1, 0], [1, 0, 0], [1, 1, 1]]
    # the untrained sample (a truncated response under mask_truncated) is out of the loss
    assert b["loss_mask"].int().tolist() == [[1, 1, 0], [0, 0, 0], [1, 1, 1]]
    assert b["advantages"].tolist() == [[1.5, 1.5, 0.0], [-0.5, 0.0, 0.0], [2.0, 2.0, 2.0]]
    assert b["engine_logprobs"].tolist() == [[-1.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [-1.0, -1.0, -1.0]]
    assert b["n_response_tokens"] == 6 and "old_logprobs" not in b and "ref_logprobs" not in b


def test_collate_applies_a_masking_correction_before_the_forward():
    # engine log-prob -1 everywhere; old (trainer) log-probs -1 and -1 + 1.5: ratios 1 and
    # e^1.5 = 4.48, outside [1/2, 2] with tis_cap 2, so that token leaves the loss
    s = [_sample([0, 5], [10, 11], 1.0, old_logprobs=torch.tensor([-1.0, 0.5])),
         _sample([0, 5], [12], 1.0, old_logprobs=torch.tensor([-1.0]))]
    b = collate_samples(s, PAD, correction="mask_token", tis_cap=2.0, share="off")
    assert b["loss_mask"].int().tolist() == [[1, 0], [1, 0]]
    b = collate_samples(s, PAD, correction="tis", tis_cap=2.0, share="off")
    assert b["loss_mask"].int().tolist() == [[1, 1], [1, 0]]
    assert torch.allclose(b["correction_weights"], torch.tensor([[1.0, 2.0], [1.0, 0.0]]))
    assert math.isclose(float(b["old_logprobs"][0, 1]), 0.5)
