"""The policy's loss on one micro-batch (``posttrain.stages.rlvr.loss``) on the real tiny
OLMo-2, against values written out by hand from the policy's own log-probs: with one
update the ratio is exactly 1, so the clipped loss of a token is ``-A``; ``beta x k3`` is
added per token; ``token_mean`` divides by the loss tokens; a truncated importance weight
multiplies the policy term; the mismatch metrics measure engine vs trainer."""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.recipe.load import validate_recipe
from posttrain.stages.rlvr.batch import collate_samples
from posttrain.stages.rlvr.loss import count_items, make_policy_loss, sample_logprobs
from posttrain.stages.rlvr.rollouts import Sample

PAD = 1
PROMPTS = [[0, 17, 42, 99], [0, 17, 42, 99], [0, 5, 6]]
RESPONSES = [[101, 102, 103], [104, 105], [106, 107, 108, 109]]
ADV = [1.5, -0.5, 2.0]


def config(**fields):
    stage = {"train_data": [{"path": "unused/hub-name"}], "temperature": 0.8, "max_new_tokens": 10, **fields}
    return validate_recipe({"output_dir": "/tmp/unused", "stages": {"rlvr": stage}}).stages["rlvr"]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from posttrain.policy import Policy

    return Policy.load(tiny_model_dir, device="cpu", dtype="float32").model.train()


@pytest.fixture(scope="module")
def own_logprobs(model):
    return sample_logprobs(model, PROMPTS, RESPONSES, PAD, temperature=0.8, batch_size=8, share="off")


def _batch(logprobs, *, engine_shift=0.0, ref_shift=None, share="on", trained=(True, True, True)):
    samples = [Sample(prompt_ids=p, response_ids=r, engine_logprobs=lp + engine_shift,
                      advantages=torch.full((len(r),), a), trained=t,
                      ref_logprobs=None if ref_shift is None else lp + ref_shift)
               for p, r, lp, a, t in zip(PROMPTS, RESPONSES, logprobs, ADV, trained)]
    return collate_samples(samples, PAD, share=share)


def test_one_update_loss_is_minus_the_mean_advantage_per_token(model, own_logprobs):
    cfg = config(beta=0.0)
    out = make_policy_loss(cfg)(model, _batch(own_logprobs))
    # tokens: 3 with A = 1.5, 2 with A = -0.5, 4 with A = 2.0
    assert int(out.n_items) == 9 == count_items("token_mean")(_batch(own_logprobs))
    assert math.isclose(float(out.loss_sum.detach()), -(3 * 1.5 + 2 * -0.5 + 4 * 2.0), rel_tol=1e-6)
    # the entropy metric is the mean over loss tokens (times the item count, as the trainer sums it)
    assert out.metrics["entropy"] > 0 and out.metrics["clip_frac_low"] == 0 and out.metrics["ratio_mean"] == 9
    out.loss_sum.backward()  # differentiable through the log-probs
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad()


def test_kl_term_and_mismatch_metrics(model, own_logprobs):
    # reference log-probs 0.1 below the policy's: log r = -0.1, k3 = e^-0.1 - 1 + 0.1 per token
    k3 = math.exp(-0.1) - 1 + 0.1
    cfg = config(beta=0.05, kl_estimator="k3")
    out = make_policy_loss(cfg)(model, _batch(own_logprobs, engine_shift=0.02, ref_shift=-0.1))
    expected = -(3 * 1.5 + 2 * -0.5 + 4 * 2.0) + 0.05 * k3 * 9
    assert math.isclose(float(out.loss_sum.detach()), expected, rel_tol=1e-5)
    assert math.isclose(float(out.metrics["kl"]) / 9, k3, rel_tol=1e-4)
    # engine log-probs 0.02 above the trainer's: |diff| 0.02, k1 = mean(-(trainer - engine)) = 0.02
    assert math.isclose(float(out.metrics["mismatch/abs_diff_mean"]) / 9, 0.02, rel_tol=1e-3)
    assert math.isclose(float(out.metrics["mismatch/k1"]) / 9, 0.02, rel_tol=1e-3)


def test_truncated_importance_weight_from_the_forward_itself(model, own_logprobs):
    # engine log-probs log(3) below the trainer's: ratio 3, capped at tis_cap 2 -> policy term x 2
    cfg = config(beta=0.0, rollout_correction="tis", tis_cap=2.0)
    out = make_policy_loss(cfg)(model, _batch(own_logprobs, engine_shift=-math.log(3)))
    assert math.isclose(float(out.loss_sum.detach()), 2 * -(3 * 1.5 + 2 * -0.5 + 4 * 2.0), rel_tol=1e-5)
    assert math.isclose(float(out.metrics["mismatch/corrected_frac"]) / 9, 1.0, rel_tol=1e-6)


def test_aggregations_and_masked_samples(model, own_logprobs):
    batch = _batch(own_logprobs, trained=(True, False, True))
    out = make_policy_loss(config(beta=0.0, loss_aggregation="token_mean"))(model, batch)
    assert int(out.n_items) == 7 and math.isclose(float(out.loss_sum.detach()), -(3 * 1.5 + 4 * 2.0), rel_tol=1e-6)
    out = make_policy_loss(config(beta=0.0, loss_aggregation="seq_mean_token_mean"))(model, batch)
    # each trained response's token mean (-1.5, -2.0), summed; 2 responses
    assert int(out.n_items) == 2 and math.isclose(float(out.loss_sum.detach()), -1.5 - 2.0, rel_tol=1e-6)
    out = make_policy_loss(config(beta=0.0, loss_aggregation="seq_mean_token_sum_norm"))(model, batch)
    # token sums / max_new_tokens (10), over all 3 rows
    assert int(out.n_items) == 3 and math.isclose(float(out.loss_sum.detach()), -(3 * 1.5 + 4 * 2.0) / 10, rel_tol=1e-6)


def test_several_updates_use_the_old_logprobs(model, own_logprobs):
    # old log-probs 0.5 below the current ones: ratio e^0.5 = 1.65 > 1 + 0.2, so positive
    # advantages are clipped (constant 1.2 x -A, no gradient) and the negative one is not
    samples = [Sample(prompt_ids=p, response_ids=r, engine_logprobs=lp, advantages=torch.full((len(r),), a),
                      old_logprobs=lp - 0.5) for p, r, lp, a in zip(PROMPTS, RESPONSES, own_logprobs, ADV)]
    out = make_policy_loss(config(beta=0.0))(model, collate_samples(samples, PAD, share="off"))
    r = math.exp(0.5)
    expected = 3 * -1.5 * 1.2 + 2 * 0.5 * r + 4 * -2.0 * 1.2
    assert math.isclose(float(out.loss_sum.detach()), expected, rel_tol=1e-5)
    assert math.isclose(float(out.metrics["clip_frac_high"]) / 9, 7 / 9, rel_tol=1e-6)
