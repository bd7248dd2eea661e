"""The shipped pretrained tiny base: loads as a plain fp32 OLMo-2, is small, shares the
tiny tokenizer, and has learned the task's plain text (held-out triples included)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from posttrain.data import tiny_task

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "posttrain" / "models" / "tiny_base"


@pytest.fixture(scope="module")
def base():
    from posttrain.policy import Policy

    return Policy.load(BASE, dtype="auto", device="cpu")


def test_folder_is_small_and_documented():
    files = {p.name: p.stat().st_size for p in BASE.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "posttrain_base.json"} <= set(files)
    assert sum(files.values()) < 8_000_000
    assert json.loads((BASE / "config.json").read_text())["model_type"] == "olmo2"
    meta = json.loads((BASE / "posttrain_base.json").read_text())
    assert meta["steps_done"] == meta["steps"] and "training triples only" in meta["note"]


def test_loads_in_fp32_with_the_tiny_tokenizer(base, tiny_tokenizer):
    assert next(base.model.parameters()).dtype == torch.float32
    assert base.tokenizer.get_vocab() == tiny_tokenizer.get_vocab()
    assert base.tokenizer.chat_template == tiny_tokenizer.chat_template


def test_held_out_plain_text_loss_is_low(base, tiny_model_dir):
    """Next-token loss on worked answers of held-out triples: far below a random init's."""
    from posttrain.policy import Policy

    _train, held = tiny_task.split_keys(0)
    rng = random.Random(0)
    docs = []
    for key in held[:32]:
        p = tiny_task.problem_from_key(key, rng)
        docs.append(f"{tiny_task.ask(p, rng)}\n{tiny_task.solve(p)}")

    def loss(policy):
        ids = policy.tokenizer(docs, padding=True, return_tensors="pt")
        labels = ids["input_ids"].masked_fill(ids["attention_mask"] == 0, -100)
        with torch.no_grad():
            return policy.model(**ids, labels=labels).loss.item()

    random_init = Policy.load(tiny_model_dir, dtype="float32", device="cpu")
    trained, untrained = loss(base), loss(random_init)
    assert untrained > 4.0 and trained < 1.0, (trained, untrained)
