"""The tiny OLMo-2 and its tokenizer: plain transformers loads them, the architecture is
OLMo 2's, the chat template renders OLMo 2 Instruct's format, init is deterministic."""

import hashlib
import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Olmo2ForCausalLM

from posttrain.models import init_tiny_model


def test_loads_with_plain_transformers(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert isinstance(model, Olmo2ForCausalLM)
    cfg = model.config
    assert cfg.rope_parameters["rope_theta"] == 500_000
    assert not cfg.attention_bias and not cfg.tie_word_embeddings
    # OLMo 2: QK-norm and norms after attention / MLP (no pre-norms).
    layer = model.model.layers[0]
    assert hasattr(layer.self_attn, "q_norm") and hasattr(layer.self_attn, "k_norm")
    assert hasattr(layer, "post_attention_layernorm") and hasattr(layer, "post_feedforward_layernorm")
    assert not any("bias" in n for n, _ in model.named_parameters())
    assert 2e6 < sum(p.numel() for p in model.parameters()) < 6e6
    assert tok.bos_token == tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"
    assert tok.pad_token_id != tok.eos_token_id


def test_digits_are_split_one_per_token(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    pieces = [tok.decode([i]) for i in tok("Add 1234 and 56.")["input_ids"]]
    for d in "123456":
        assert d in pieces
    assert not any(len(p) > 1 and p.isdigit() for p in pieces)


def test_chat_template_is_olmo2_instruct(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4"},
    ]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert text == (
        "<|endoftext|><|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello!<|endoftext|>\n"
        "<|user|>\nWhat is 2 + 2?\n<|assistant|>\n4<|endoftext|>"
    )
    gen = tok.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True)
    assert gen == "<|endoftext|><|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n"


def test_init_is_deterministic_and_seeded(tmp_path):
    def digest(d):
        return hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()

    a = init_tiny_model(tmp_path / "a", seed=3)
    torch.manual_seed(12345)  # the caller's RNG must not leak into the weights
    b = init_tiny_model(tmp_path / "b", seed=3)
    c = init_tiny_model(tmp_path / "c", seed=4)
    assert digest(a) == digest(b) != digest(c)
    assert (a / "tokenizer.json").read_bytes() == (c / "tokenizer.json").read_bytes()


def test_init_model_cli(tmp_path):
    out = tmp_path / "m"
    r = subprocess.run([sys.executable, "-m", "posttrain.cli", "init-model", str(out), "--seed", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    AutoModelForCausalLM.from_pretrained(out)
