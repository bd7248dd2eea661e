"""``posttrain.logprobs``: hand-computed log-probs and entropies, the head-at-positions
path against the full-logits path (values and gradients), chunking, both position
formats, and batched response log-probs against a naive per-example loop."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from posttrain.logprobs import decoder_and_head, logprobs_at, response_batch, response_logprobs
from posttrain.policy import Policy


class FixedLogits(torch.nn.Module):
    """A stand-in causal LM whose forward returns fixed logits (B, T, V)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.as_tensor(logits, dtype=torch.float32))

    def forward(self, input_ids, **_):
        return SimpleNamespace(logits=self.logits)


def test_hand_computed_logprobs_and_entropy():
    # One row, two positions. Position 0: logits (0, ln 2, ln 3) -> p = (1, 2, 3) / 6.
    # Position 1: logits (0, 0, 0) -> p = 1/3 each.
    model = FixedLogits([[[0.0, math.log(2), math.log(3)], [0.0, 0.0, 0.0]]])
    ids = torch.zeros(1, 2, dtype=torch.long)
    out = logprobs_at(model, ids, torch.tensor([0, 1]), torch.tensor([2, 0]), entropy=True)
    # log p(2 | pos 0) = ln(3/6) = -0.693147; log p(0 | pos 1) = ln(1/3) = -1.098612
    torch.testing.assert_close(out.logprobs, torch.tensor([math.log(0.5), math.log(1 / 3)]))
    # H(pos 0) = -(1/6 ln 1/6 + 2/6 ln 2/6 + 3/6 ln 3/6) = 0.298627 + 0.366204 + 0.346574 = 1.011404
    # H(pos 1) = ln 3 = 1.098612
    torch.testing.assert_close(out.entropy, torch.tensor([1.011404, 1.098612]), atol=1e-6, rtol=0)

    # Temperature 2 halves the logits: pos 0 -> (0, ln 2 / 2, ln 3 / 2), p = (1, 1.414214, 1.732051) / 4.146264
    # log p(2) = ln(1.732051 / 4.146264) = ln(0.417738) = -0.872910
    hot = logprobs_at(model, ids, torch.tensor([0]), torch.tensor([2]), temperature=2.0)
    torch.testing.assert_close(hot.logprobs, torch.tensor([-0.872902]), atol=1e-6, rtol=0)
    assert hot.entropy is None
    with pytest.raises(ValueError, match="temperature"):
        logprobs_at(model, ids, torch.tensor([0]), torch.tensor([2]), temperature=0.0)


def test_positions_as_flat_indices_or_rows_and_cols():
    logits = torch.randn(2, 3, 5)
    model = FixedLogits(logits)
    ids = torch.zeros(2, 3, dtype=torch.long)
    flat = logprobs_at(model, ids, torch.tensor([1, 3, 5, 1]), torch.tensor([4, 0, 2, 4])).logprobs
    pairs = logprobs_at(model, ids, (torch.tensor([0, 1, 1, 0]), torch.tensor([1, 0, 2, 1])),
                        torch.tensor([4, 0, 2, 4])).logprobs
    want = torch.log_softmax(logits, -1)[[0, 1, 1, 0], [1, 0, 2, 1], [4, 0, 2, 4]]
    torch.testing.assert_close(flat, want)
    torch.testing.assert_close(pairs, want)


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    return Policy.load(tiny_model_dir, device="cpu")


def _batch(policy):
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(2, 500, (n,), generator=g).tolist() for n in (5, 9, 2)]
    responses = [torch.randint(2, 500, (n,), generator=g).tolist() for n in (4, 1, 7)]
    return prompts, responses


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_head_at_positions_equals_full_logits_with_grads(policy, temperature):
    model = policy.model
    assert decoder_and_head(model) is not None
    prompts, responses = _batch(policy)
    b = response_batch(prompts, responses, policy.tokenizer.pad_token_id)
    results = {}
    for generic in (False, True):
        model.zero_grad()
        out = logprobs_at(model, b["input_ids"], b["positions"], b["targets"], attention_mask=b["attention_mask"],
                          position_ids=b["position_ids"], temperature=temperature, entropy=True, generic=generic)
        (out.logprobs.sum() + out.entropy.sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results[generic] = (out.logprobs.detach(), out.entropy.detach(), grads)
    fast, full = results[False], results[True]
    torch.testing.assert_close(fast[0], full[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast[1], full[1], atol=1e-5, rtol=1e-5)
    for name in full[2]:
        torch.testing.assert_close(fast[2][name], full[2][name], atol=1e-5, rtol=1e-5, msg=name)
    model.zero_grad()


def test_chunked_head_equals_one_pass_with_grads(policy):
    model = policy.model
    prompts, responses = _batch(policy)
    b = response_batch(prompts, responses, policy.tokenizer.pad_token_id)
    results = []
    for chunk in (None, 3):
        model.zero_grad()
        out = logprobs_at(model, b["input_ids"], b["positions"], b["targets"], attention_mask=b["attention_mask"],
                          position_ids=b["position_ids"], entropy=True, chunk_size=chunk)
        (out.logprobs.sum() - out.entropy.sum()).backward()
        results.append((out.logprobs.detach(), out.entropy.detach(),
                        {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[1][0], results[0][0])
    torch.testing.assert_close(results[1][1], results[0][1])
    for name in results[0][2]:
        torch.testing.assert_close(results[1][2][name], results[0][2][name], atol=1e-5, rtol=1e-5, msg=name)
    model.zero_grad()


@pytest.mark.parametrize("side", ["right", "left"])
def test_response_logprobs_match_each_example_alone(policy, side):
    prompts, responses = _batch(policy)
    got = response_logprobs(policy.model, prompts, responses, policy.tokenizer.pad_token_id, batch_size=2,
                            padding_side=side, temperature=0.8)
    for p, r, g in zip(prompts, responses, got):
        with torch.no_grad():
            logits = policy.model(torch.tensor([p + r])).logits[0].double() / 0.8
        want = torch.stack([torch.log_softmax(logits[len(p) - 1 + j], -1)[t] for j, t in enumerate(r)]).float()
        assert g.shape == (len(r),)
        torch.testing.assert_close(g, want, atol=1e-5, rtol=1e-5)


def _head_rows(model, fn) -> list[int]:
    """Rows of every input the model's LM head receives while ``fn`` runs."""
    seen: list[int] = []
    hook = model.get_output_embeddings().register_forward_hook(
        lambda _m, args, _out: seen.append(args[0].reshape(-1, args[0].shape[-1]).shape[0]))
    try:
        fn()
    finally:
        hook.remove()
    return seen


def test_the_lm_head_sees_only_the_requested_positions(policy):
    """SFT's loss, DPO's pair scoring (and reference pass) and RL's log-probs all go
    through ``logprobs_at``: the head gets one row per target, never ``B x T`` rows, so
    no full-vocabulary logits tensor exists for the batch. ``generic`` (the path other
    architectures take) is the counter-check: there the head gets every position."""
    from posttrain.data.preference import PreferencePair, collate_pairs
    from posttrain.data.reference_cache import pair_logps
    from posttrain.stages.sft import sft_loss_fn

    model = policy.model
    prompts, responses = _batch(policy)
    b = response_batch(prompts, responses, policy.tokenizer.pad_token_id)
    n_targets, n_positions = b["targets"].numel(), b["input_ids"].numel()
    # responses of 4 + 1 + 7 = 12 tokens; rows 5+4, 9+1, 2+7 padded to width 10: 3 x 10 = 30 positions
    assert (n_targets, n_positions) == (12, 30)
    args = (model, b["input_ids"], b["positions"], b["targets"])
    kw = dict(attention_mask=b["attention_mask"], position_ids=b["position_ids"])
    assert _head_rows(model, lambda: logprobs_at(*args, **kw)) == [12]
    assert _head_rows(model, lambda: logprobs_at(*args, **kw, chunk_size=5)) == [5, 5, 2]
    assert _head_rows(model, lambda: logprobs_at(*args, **kw, generic=True)) == [30]

    # DPO: pair 0 scores 3 chosen + 2 rejected tokens, pair 1 2 + 2: 9 targets, in rows of
    # width 6 (pair 0: prompt and shared token 3, chosen rest 4 5, rejected rest 6): 12 positions.
    pairs = [PreferencePair([1, 2], [3, 4, 5], [3, 6]), PreferencePair([7, 8], [9, 10], [11, 12])]
    batch = collate_pairs(pairs, policy.tokenizer.pad_token_id)
    assert _head_rows(model, lambda: pair_logps(model, batch)) == [batch["score_target"].numel()] == [9]
    assert batch["input_ids"].numel() == 12

    # SFT: the label positions only.
    sft_batch = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"],
                 "position_ids": b["position_ids"], "loss_positions": b["positions"], "loss_targets": b["targets"]}
    assert _head_rows(model, lambda: sft_loss_fn(model, sft_batch)) == [12]
