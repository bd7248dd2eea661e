"""The shipped pretrained tiny base: loads as a plain fp32 OLMo-2, is small, shares the
tiny tokenizer, and has learned the task's plain text (held-out triples included, negative
results too)."""

from __future__ import annotations

import json
import random
import re
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


def held_out_problems(n: int, seed: int = 0) -> list[tiny_task.Problem]:
    _train, held = tiny_task.split_keys(0)
    rng = random.Random(seed)
    return [tiny_task.problem_from_key(k, rng) for k in rng.sample(held, n)]


def test_folder_is_small_and_documented():
    files = {p.name: p.stat().st_size for p in BASE.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "posttrain_base.json"} <= set(files)
    assert sum(files.values()) < 16_000_000  # fp32 weights (~13.7 MB) and the tokenizer
    assert json.loads((BASE / "config.json").read_text())["model_type"] == "olmo2"
    # Stored in fp32, as trained: a bf16 copy would round away the last steps' updates.
    from safetensors import safe_open

    with safe_open(BASE / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}
    meta = json.loads((BASE / "posttrain_base.json").read_text())
    assert meta["steps_done"] == meta["steps"]
    assert "training triples" in meta["note"] and "trained phrasings" in meta["note"]


def test_loads_in_fp32_with_the_tiny_tokenizer(base, tiny_tokenizer):
    assert next(base.model.parameters()).dtype == torch.float32
    assert base.tokenizer.get_vocab() == tiny_tokenizer.get_vocab()
    assert base.tokenizer.chat_template == tiny_tokenizer.chat_template


def test_held_out_plain_text_loss_is_low(base, tiny_model_dir):
    """Next-token loss on worked answers of held-out triples, each document starting as in
    pretraining (BOS, ``{question}\\n``): far below a random init's. Only the answer's
    tokens count: the question's wording is drawn from hundreds of templates, so its tokens
    stay unpredictable however well the task is learned (the shipped base: 0.003)."""
    from posttrain.policy import Policy

    rng = random.Random(0)
    docs = [(f"{tiny_task.ask(p, rng)}\n", tiny_task.solve(p)) for p in held_out_problems(32)]

    def loss(policy):
        tok, losses = policy.tokenizer, []
        for question, answer in docs:
            prompt = [tok.eos_token_id] + tok(question, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt + tok(answer, add_special_tokens=False)["input_ids"]])
            labels = ids.clone()
            labels[:, : len(prompt)] = -100
            with torch.no_grad():
                losses.append(policy.model(input_ids=ids, labels=labels).loss.item())
        return sum(losses) / len(losses)

    random_init = Policy.load(tiny_model_dir, dtype="float32", device="cpu")
    trained, untrained = loss(base), loss(random_init)
    assert untrained > 4.0 and trained < 0.1, (trained, untrained)


def test_answers_held_out_questions_in_plain_text(base):
    """Prompted in plain text as in pretraining (BOS, ``{question}\\n``, greedy), the base
    continues a held-out question with the task's working (the question restated as
    ``x op y:`` with the right operation, column steps, ``#### N`` to end) and gets most of
    them right, negative results included: it has learned the arithmetic on the training
    triples and carries it to triples it never saw (the shipped base: 47 of these 48, 16
    of their 17 negative ones). SFT then teaches the chat format."""
    from posttrain.policy import pad_sequences

    problems = held_out_problems(48, seed=1)
    rng = random.Random(1)
    tok = base.tokenizer
    prompts = [[tok.eos_token_id] + tok(tiny_task.ask(p, rng) + "\n", add_special_tokens=False)["input_ids"]
               for p in problems]
    ids, mask = pad_sequences(prompts, tok.pad_token_id, "left")
    with torch.no_grad():
        out = base.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=80, do_sample=False,
                                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    texts = [tok.decode(row[ids.shape[1]:], skip_special_tokens=True) for row in out]
    assert sum(p.op == "-" and p.answer < 0 for p in problems) >= 8
    working = re.compile(r"\d+ [+-] \d+: (\d+ < \d+, so [^.]*\. )?ones .*\n#### -?\d+", flags=re.S)
    worked = sum(bool(working.fullmatch(t)) for t in texts)
    same_op = sum(t.split(":")[0].count(p.op) == 1 for p, t in zip(problems, texts))
    assert worked >= 44 and same_op >= 40, (worked, same_op, texts)
    right = [t.rstrip().endswith(f"#### {p.answer}") for p, t in zip(problems, texts)]
    negative_right = sum(r for r, p in zip(right, problems) if p.answer < 0)
    # Floors below the measured 47 and 16: greedy decoding may flip a near-tie on another CPU.
    assert sum(right) >= 40 and negative_right >= 12, (sum(right), negative_right, texts)
