"""Reference log-probs: cached and live give the same losses, the LoRA reference (adapter
disabled) is the base model, the on-disk cache is keyed by weights, data and length."""

import pytest
import torch

from posttrain.data.preference import tokenize_pairs
from posttrain.data.reference_cache import (
    cached_reference_logps, pair_logps, reference_cache_key, score_pairs, weights_fingerprint,
)
from posttrain.policy import LoraSettings, Policy
from posttrain.stages.dpo import DPOConfig, collate, live_reference, make_loss_fn


def _rows():
    from posttrain.data import tiny_task

    return tiny_task.generate(0, {"dpo_train": 12})["dpo_train"]


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    return Policy.load(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def pairs(policy):
    pairs, _ = tokenize_pairs(policy.tokenizer, _rows(), 256)
    return pairs


def _cfg(**kw):
    return DPOConfig(train_data=[], **kw)


@pytest.mark.parametrize("loss", ["dpo", "dpo_norm", "ipo"])
def test_cached_and_live_reference_give_the_same_loss(tiny_model_dir, pairs, loss):
    cfg = _cfg(loss=loss, beta=0.5)
    policy = Policy.load(tiny_model_dir, device="cpu")
    pad = policy.tokenizer.pad_token_id
    # A reference that differs from the policy: the policy's weights move first.
    ref = Policy.load(tiny_model_dir, device="cpu").model.eval()
    chosen, rejected = score_pairs(ref, pairs, pad, "cpu", progress=False)
    policy.model.train()
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    cached_fn, live_fn = make_loss_fn(cfg), make_loss_fn(cfg, live_reference(policy, ref))
    for start in range(0, len(pairs), 5):
        idx = range(start, min(start + 5, len(pairs)))
        with_ref = collate([{"pair": pairs[i], "ref": (chosen[i].item(), rejected[i].item())} for i in idx], pad)
        without = collate([{"pair": pairs[i], "ref": None} for i in idx], pad)
        a, b = cached_fn(policy.model, with_ref), live_fn(policy.model, without)
        torch.testing.assert_close(a.loss_sum, b.loss_sum, atol=1e-5, rtol=1e-5)
        for k in a.metrics:
            torch.testing.assert_close(a.metrics[k], b.metrics[k], atol=1e-4, rtol=1e-5)
        assert a.n_items == len(idx)


def test_lora_reference_is_the_base_model(tiny_model_dir, policy, pairs):
    torch.manual_seed(0)
    lora = Policy.load(tiny_model_dir, device="cpu", lora=LoraSettings(r=4, alpha=8))
    with torch.no_grad():  # LoRA starts as a no-op; make the adapter matter
        for name, p in lora.model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    batch = collate([{"pair": p, "ref": None} for p in pairs[:6]], policy.tokenizer.pad_token_id)
    with torch.no_grad():
        base = pair_logps(policy.model, batch)
        adapted = pair_logps(lora.model, batch)
        disabled = live_reference(lora)(batch)
    torch.testing.assert_close(disabled, base, atol=1e-5, rtol=1e-5)
    assert (adapted - base).abs().max() > 1e-3


def test_reference_cache_hits_and_keys(tiny_model_dir, policy, pairs, tmp_path):
    w = weights_fingerprint(tiny_model_dir)
    key = reference_cache_key(w, pairs, policy.tokenizer, 256)
    assert key != reference_cache_key(w, pairs, policy.tokenizer, 512)
    assert key != reference_cache_key(w, pairs[:-1], policy.tokenizer, 256)
    assert key != reference_cache_key(weights_fingerprint(policy.model.name_or_path) + "x", pairs, policy.tokenizer, 256)
    pad = policy.tokenizer.pad_token_id
    c1, r1, hit1 = cached_reference_logps(policy.model, pairs, pad, "cpu", key, tmp_path, progress=False)
    c2, r2, hit2 = cached_reference_logps(policy.model, pairs, pad, "cpu", key, tmp_path, progress=False)
    assert not hit1 and hit2
    assert torch.equal(c1, c2) and torch.equal(r1, r2)
    (tmp_path / f"{key}.pt").write_bytes(b"torn")
    *_, hit3 = cached_reference_logps(policy.model, pairs, pad, "cpu", key, tmp_path, progress=False)
    assert not hit3


def test_weights_fingerprint_changes_with_weights(tiny_model_dir, tmp_path):
    from posttrain.models import init_tiny_model

    other = init_tiny_model(tmp_path / "other", seed=1)
    assert weights_fingerprint(tiny_model_dir) != weights_fingerprint(other)
    assert weights_fingerprint(tiny_model_dir) == weights_fingerprint(tiny_model_dir)
