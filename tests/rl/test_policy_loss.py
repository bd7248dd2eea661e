"""Policy losses and aggregations against values by hand: the clipped surrogate with
clip-higher and dual clip, GSPO's sequence ratio, CISPO, correction weights, the KL term,
padding, and micro-batch invariance of every aggregation."""

import math

import pytest
import torch

from posttrain.losses.policy import (PolicyLossInputs, PolicyLossParams, aggregate, aggregation_count,
                                     get_policy_loss, policy_loss, policy_loss_names)

DAPO = PolicyLossParams(clip_low=0.2, clip_high=0.28)


def _inputs(ratios, adv, mask, old=-1.0, **kw):
    """Inputs whose log-probs are ``old + log(ratio)``; returns (inputs, leaf logprobs)."""
    r = torch.tensor(ratios, dtype=torch.float64)
    logp = (old + r.log()).float().requires_grad_(True)
    x = PolicyLossInputs(logp, torch.full_like(logp, old).detach(), torch.tensor(adv, dtype=torch.float32),
                         torch.tensor(mask, dtype=torch.bool), **kw)
    return x, logp


def test_registry():
    assert policy_loss_names() == ["cispo", "clipped", "gspo"]
    with pytest.raises(KeyError, match="unknown policy loss 'ppo2'"):
        get_policy_loss("ppo2")


def test_clipped_surrogate_clip_higher_by_hand():
    # clip range [0.8, 1.28]
    # token 0: rho 1.5, A +1: max(-1.5, -1.28) = -1.28   (upper clip active: no gradient)
    # token 1: rho 0.7, A -1: max(0.7, 0.8) = 0.8        (lower clip active: no gradient)
    # token 2: rho 1.1, A -2: max(2.2, 2.2) = 2.2        (inside: gradient -A rho = 2.2)
    # token 3: padding (advantage 5) contributes nothing
    x, logp = _inputs([[1.5, 0.7, 1.1, 1.0]], [[1.0, -1.0, -2.0, 5.0]], [[1, 1, 1, 0]])
    out = get_policy_loss("clipped")(x, DAPO)
    assert out.per_token.tolist()[0] == pytest.approx([-1.28, 0.8, 2.2, 0.0], abs=1e-5)
    total, n = aggregate(out.per_token, x.mask, "token_mean")
    assert (total.item(), int(n)) == (pytest.approx(1.72, abs=1e-5), 3)
    (total / n).backward()
    assert logp.grad.tolist()[0] == pytest.approx([0.0, 0.0, 2.2 / 3, 0.0], abs=1e-5)
    m = out.metrics.compute()
    assert m["policy/clip_frac_low"] == pytest.approx(1 / 3) and m["policy/clip_frac_high"] == pytest.approx(1 / 3)
    assert m["policy/ratio_mean"] == pytest.approx(1.1, abs=1e-5)
    assert m["policy/ratio_max"] == pytest.approx(1.5, abs=1e-5)
    assert m["policy/ratio_min"] == pytest.approx(0.7, abs=1e-5)
    # k3 of KL(old || new): rho - 1 - log rho = 0.094535, 0.056675, 0.004690 -> mean 0.051967
    assert m["policy/approx_kl"] == pytest.approx((0.5 - math.log(1.5) - 0.3 - math.log(0.7) + 0.1 - math.log(1.1)) / 3,
                                                  abs=1e-5)
    assert m["policy/approx_kl"] == pytest.approx(0.051967, abs=1e-5)


def test_symmetric_clip_is_plain_ppo():
    # clip 0.2 both sides: token 0 (rho 1.5, A +1) -> -1.2
    x, _ = _inputs([[1.5]], [[1.0]], [[1]])
    assert get_policy_loss("clipped")(x, PolicyLossParams()).per_token.item() == pytest.approx(-1.2, abs=1e-5)


def test_dual_clip_by_hand():
    # A = -1: rho 5 -> max(5, 0.8) = 5, capped at c = 3 -> 3 (no gradient)
    #         rho 2 -> max(2, 0.8) = 2 < 3 -> 2 (gradient -A rho = 2)
    x, logp = _inputs([[5.0, 2.0]], [[-1.0, -1.0]], [[1, 1]])
    out = get_policy_loss("clipped")(x, PolicyLossParams(dual_clip=3.0))
    assert out.per_token.tolist()[0] == pytest.approx([3.0, 2.0], abs=1e-5)
    out.per_token.sum().backward()
    assert logp.grad.tolist()[0] == pytest.approx([0.0, 2.0], abs=1e-5)
    assert out.metrics.compute()["policy/dual_clip_frac"] == 0.5


def test_gspo_sequence_ratio_by_hand():
    # token log-ratios (ln 2, 0): mean ln2 / 2 -> s = sqrt(2) = 1.414214 on both tokens
    # A = +1: s > 1.28 -> -1.28 on each token (clipped, no gradient)
    x, _ = _inputs([[2.0, 1.0, 1.0]], [1.0], [[1, 1, 0]])
    out = get_policy_loss("gspo")(x, DAPO)
    assert out.per_token.tolist()[0] == pytest.approx([-1.28, -1.28, 0.0], abs=1e-5)
    assert out.metrics.compute()["policy/ratio_mean"] == pytest.approx(math.sqrt(2), abs=1e-5)
    # A = -1: max(s, 1.28) = s = 1.414214 per token; each token's gradient -A s = 1.414214
    x, logp = _inputs([[2.0, 1.0, 1.0]], [-1.0], [[1, 1, 0]])
    out = get_policy_loss("gspo")(x, DAPO)
    assert out.per_token.tolist()[0] == pytest.approx([math.sqrt(2), math.sqrt(2), 0.0], abs=1e-5)
    out.per_token.sum().backward()
    assert logp.grad.tolist()[0] == pytest.approx([math.sqrt(2), math.sqrt(2), 0.0], abs=1e-5)


def test_cispo_by_hand():
    # p = (0.6, 0.25), rho = (6, 0.5), A = (+1, -2), cap 5 -> weights (5, 0.5), detached
    # loss = -w A log p: -5 * 1 * ln 0.6 = 2.554128; -0.5 * -2 * ln 0.25 = -1.386294
    # gradient -w A: (-5, +1): the capped token still learns
    logp = torch.tensor([[math.log(0.6), math.log(0.25)]], requires_grad=True)
    old = torch.tensor([[math.log(0.1), math.log(0.5)]])
    x = PolicyLossInputs(logp, old, torch.tensor([[1.0, -2.0]]), torch.tensor([[True, True]]))
    out = get_policy_loss("cispo")(x, PolicyLossParams())
    assert out.per_token.tolist()[0] == pytest.approx([-5 * math.log(0.6), math.log(0.25)], abs=1e-5)
    assert out.per_token.tolist()[0] == pytest.approx([2.554128, -1.386294], abs=1e-5)
    out.per_token.sum().backward()
    assert logp.grad.tolist()[0] == pytest.approx([-5.0, 1.0], abs=1e-5)
    assert out.metrics.compute()["policy/clip_frac_high"] == 0.5


def test_correction_weights_and_kl_term_by_hand():
    # rho 1 everywhere, A (1, -1): policy term (-1, +1); weights (2, 0.5) -> (-2, 0.5)
    # KL (0.1, 0.2) x 0.5 -> + (0.05, 0.1): loss (-1.95, 0.6)
    x, _ = _inputs([[1.0, 1.0]], [[1.0, -1.0]], [[1, 1]], weights=torch.tensor([[2.0, 0.5]]),
                   kl=torch.tensor([[0.1, 0.2]]))
    out = get_policy_loss("clipped")(x, PolicyLossParams(kl_coef=0.5))
    assert out.per_token.tolist()[0] == pytest.approx([-1.95, 0.6], abs=1e-6)
    assert out.metrics.compute()["policy/kl"] == pytest.approx(0.15, abs=1e-6)


def test_padding_with_inf_logprobs_stays_finite():
    logp = torch.tensor([[-1.0, -float("inf")]], requires_grad=True)
    old = torch.tensor([[-1.2, -float("inf")]])
    for name in policy_loss_names():
        x = PolicyLossInputs(logp, old, torch.tensor([1.0]), torch.tensor([[True, False]]))
        out = policy_loss(name, x, aggregation="seq_mean_token_mean")
        out.loss_sum.backward()
        assert torch.isfinite(out.loss_sum) and torch.isfinite(logp.grad).all(), name
        logp.grad = None


def test_aggregations_by_hand():
    # row 0: per-token (-1.28, 0.8, 2.2) as above, sum 1.72 over 3 tokens
    # row 1: one token, rho 1, A 3 -> -3
    # row 2: no loss token
    x, _ = _inputs([[1.5, 0.7, 1.1, 1.0], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]],
                   [[1.0, -1.0, -2.0, 5.0], [3.0, 0, 0, 0], [7.0, 7, 7, 7]],
                   [[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    per_token = get_policy_loss("clipped")(x, DAPO).per_token
    # token_mean: (1.72 - 3) / 4 tokens = -0.32
    s, n = aggregate(per_token, x.mask, "token_mean")
    assert (s.item(), int(n)) == (pytest.approx(-1.28, abs=1e-5), 4)
    # seq_mean_token_mean: (1.72 / 3 + -3 / 1) over 2 responses with tokens
    s, n = aggregate(per_token, x.mask, "seq_mean_token_mean")
    assert (s.item(), int(n)) == (pytest.approx(1.72 / 3 - 3, abs=1e-5), 2)
    # seq_mean_token_sum_norm, L = 4: (1.72 - 3) / 4 = -0.32 over all 3 rows
    s, n = aggregate(per_token, x.mask, "seq_mean_token_sum_norm", max_response_length=4)
    assert (s.item(), int(n)) == (pytest.approx(-0.32, abs=1e-5), 3)
    for mode in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"):
        assert aggregation_count(x.mask, mode) == int(aggregate(per_token, x.mask, mode, 4)[1])
    with pytest.raises(ValueError, match="needs max_response_length"):
        aggregate(per_token, x.mask, "seq_mean_token_sum_norm")


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
@pytest.mark.parametrize("name", ["clipped", "gspo", "cispo"])
def test_micro_batches_give_the_whole_batch_loss_and_gradient(mode, name):
    g = torch.Generator().manual_seed(0)
    B, T = 6, 7
    lengths = torch.tensor([7, 3, 1, 0, 5, 2])
    mask = torch.arange(T)[None] < lengths[:, None]
    logp0 = -torch.rand(B, T, generator=g) * 3
    old = logp0 + torch.randn(B, T, generator=g) * 0.3
    adv = torch.randn(B, generator=g)
    kl = torch.rand(B, T, generator=g)
    params = PolicyLossParams(clip_low=0.2, clip_high=0.28, kl_coef=0.1)

    def run(rows_list):
        logp = logp0.clone().requires_grad_(True)
        sums, counts = [], []
        for rows in rows_list:
            x = PolicyLossInputs(logp[rows], old[rows], adv[rows], mask[rows], kl=kl[rows])
            out = policy_loss(name, x, params, mode, max_response_length=T)
            sums.append(out.loss_sum)
            counts.append(out.n_items)
        loss = torch.stack(sums).sum() / torch.stack([torch.as_tensor(c) for c in counts]).sum()
        loss.backward()
        return loss.item(), logp.grad

    whole, grad_whole = run([list(range(B))])
    split, grad_split = run([[0, 1], [2], [3, 4, 5]])
    assert split == pytest.approx(whole, abs=1e-6)
    assert torch.allclose(grad_split, grad_whole, atol=1e-7)


def test_shape_mismatch_is_an_error():
    x, _ = _inputs([[1.0, 1.0]], [[1.0, 1.0]], [[1, 1]])
    x.old_logprobs = x.old_logprobs[:, :1]
    with pytest.raises(ValueError, match="old_logprobs has shape"):
        get_policy_loss("clipped")(x, PolicyLossParams())
