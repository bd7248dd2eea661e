"""The policy wrapper: log-probs against a naive per-example loop with padding on either
side, generation, save/load round trip, LoRA on and off."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from posttrain.policy import LoraSettings, Policy, pad_sequences


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    return Policy.load(tiny_model_dir, device="cpu")


def _examples(policy):
    tok = policy.tokenizer
    convs = [
        ("What is 2 + 3?", "2 + 3 = 5. The answer is 5."),
        ("Compute 41 minus 7.", "34"),
        ("Hello there, how are you doing today?", "Fine, thanks. And you? I am doing well."),
    ]
    prompts = [policy.chat_ids([{"role": "user", "content": u}], add_generation_prompt=True) for u, _ in convs]
    responses = [tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for _, a in convs]
    return prompts, responses


def _naive(model, prompt, response):
    """One example, no padding: log p(response token | everything before it)."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].double(), -1)
    return torch.stack([logp[len(prompt) - 1 + j, t] for j, t in enumerate(response)]).float()


@pytest.mark.parametrize("side", ["right", "left"])
def test_batched_logprobs_match_naive_loop(policy, side):
    prompts, responses = _examples(policy)
    got = policy.response_logprobs(prompts, responses, batch_size=3, padding_side=side)
    for p, r, g in zip(prompts, responses, got):
        assert g.shape == (len(r),)
        torch.testing.assert_close(g, _naive(policy.model, p, r), atol=1e-5, rtol=1e-5)


def test_pad_sequences_sides():
    ids, mask = pad_sequences([[1, 2, 3], [4]], pad_id=0, side="left")
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad_sequences([[1, 2, 3], [4]], pad_id=0, side="right")
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_generate_is_greedy_and_batch_independent(policy):
    convs = [[{"role": "user", "content": "What is 2 + 3?"}], [{"role": "user", "content": "Hi, how long is a day?"}]]
    together = policy.generate(convs, max_new_tokens=8, batch_size=2)
    alone = [policy.generate([c], max_new_tokens=8)[0] for c in convs]
    assert together == alone
    assert all(isinstance(t, str) for t in together)


def test_save_load_round_trip(policy, tmp_path):
    prompts, responses = _examples(policy)
    before = policy.response_logprobs(prompts, responses)
    out = policy.save(tmp_path / "saved")
    plain = AutoModelForCausalLM.from_pretrained(out)
    for p, r, b in zip(prompts, responses, before):
        torch.testing.assert_close(_naive(plain, p, r), b, atol=1e-5, rtol=1e-5)
    again = Policy.load(out, device="cpu")
    assert again.tokenizer.chat_template == policy.tokenizer.chat_template


def test_lora_on_and_off(tiny_model_dir, tmp_path):
    base = Policy.load(tiny_model_dir, device="cpu")
    lora = Policy.load(tiny_model_dir, device="cpu", lora=LoraSettings(r=4, alpha=8))
    assert lora.is_lora and not base.is_lora
    trainable = [n for n, p in lora.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    prompts, responses = _examples(base)
    ref = base.response_logprobs(prompts, responses)
    # LoRA's B starts at zero: the adapter changes nothing until trained.
    for a, b in zip(lora.response_logprobs(prompts, responses), ref):
        torch.testing.assert_close(a, b)
    # One optimizer step moves the adapted model away from the base...
    opt = torch.optim.SGD([p for p in lora.model.parameters() if p.requires_grad], lr=0.5)
    ids, mask = pad_sequences([p + r for p, r in zip(prompts, responses)], base.tokenizer.pad_token_id)
    lora.model.train()
    loss = lora.model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
    loss.backward()
    opt.step()
    trained = lora.response_logprobs(prompts, responses)
    assert any(not torch.allclose(a, b, atol=1e-4) for a, b in zip(trained, ref))
    # ...with the adapter disabled it is the base model again (DPO's LoRA reference).
    with lora.disabled_adapter():
        for a, b in zip(lora.response_logprobs(prompts, responses), ref):
            torch.testing.assert_close(a, b)
    # Saved merged: plain transformers, no peft, gives the adapted numbers.
    out = lora.save(tmp_path / "merged")
    assert (out / "adapter" / "adapter_config.json").is_file()
    plain = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in n for n, _ in plain.named_parameters())
    for p, r, t in zip(prompts, responses, trained):
        torch.testing.assert_close(_naive(plain, p, r), t, atol=1e-5, rtol=1e-5)
