"""Assistant-only labels on the tiny and the real OLMo 2 tokenizer."""

from __future__ import annotations

import pytest

from posttrain.data.chat import IGNORE_INDEX, prompt_ids, tokenize_chat
from posttrain.errors import DataError

MULTI = [
    {"role": "system", "content": "You are a careful calculator."},
    {"role": "user", "content": "What is 7 + 35?"},
    {"role": "assistant", "content": "7 + 35: ones 7 + 5 = 12, write 2 carry 1. tens 0 + 3 + 1 = 4. So 7 + 35 = 42.\n#### 42"},
    {"role": "user", "content": "And 35 minus 7?"},
    {"role": "assistant", "content": "35 - 7 = 28.\n#### 28"},
]


def label_spans(labels: list[int]) -> list[list[int]]:
    """Maximal runs of labelled tokens."""
    spans, cur = [], []
    for x in labels:
        if x == IGNORE_INDEX:
            if cur:
                spans.append(cur)
            cur = []
        else:
            cur.append(x)
    return spans + ([cur] if cur else [])


@pytest.mark.parametrize("messages", [MULTI, MULTI[1:3], MULTI[1:]], ids=["system+multi", "single", "multi"])
def test_label_spans_are_each_assistant_turn_plus_eos(any_tokenizer, messages):
    tok = any_tokenizer
    ex = tokenize_chat(tok, messages, max_length=4096)
    assert len(ex["input_ids"]) == len(ex["labels"])
    # labels equal input_ids wherever they are not masked
    assert all(lab in (IGNORE_INDEX, i) for i, lab in zip(ex["input_ids"], ex["labels"]))
    want = [m["content"] + tok.eos_token for m in messages if m["role"] == "assistant"]
    got = [tok.decode(span) for span in label_spans(ex["labels"])]
    assert got == want
    # the whole sequence is the rendered template: prompt, headers and all
    assert tok.decode(ex["input_ids"]) == tok.apply_chat_template(messages, tokenize=False)


def test_role_header_and_prompt_are_masked(any_tokenizer):
    tok = any_tokenizer
    ex = tokenize_chat(tok, MULTI[1:3], max_length=4096)
    prompt = prompt_ids(tok, MULTI[1:2])  # ends in "<|assistant|>\n"
    assert ex["input_ids"][: len(prompt)] == prompt
    assert all(x == IGNORE_INDEX for x in ex["labels"][: len(prompt)])
    assert ex["labels"][len(prompt)] != IGNORE_INDEX


def test_template_without_generation_markers_gives_same_labels(any_tokenizer):
    tok = any_tokenizer
    marked = tokenize_chat(tok, MULTI, max_length=4096)
    original = tok.chat_template
    try:
        tok.chat_template = original.replace("{% generation %}", "").replace("{% endgeneration %}", "")
        assert tokenize_chat(tok, MULTI, max_length=4096) == marked
    finally:
        tok.chat_template = original


def test_overlong_truncate_and_drop(tiny_tokenizer):
    full = tokenize_chat(tiny_tokenizer, MULTI, max_length=4096)
    n = len(full["input_ids"])
    assert tokenize_chat(tiny_tokenizer, MULTI, max_length=n, overlong="drop") == full
    assert tokenize_chat(tiny_tokenizer, MULTI, max_length=n - 5, overlong="drop") is None
    cut = tokenize_chat(tiny_tokenizer, MULTI, max_length=n - 5, overlong="truncate")
    assert cut == {"input_ids": full["input_ids"][: n - 5], "labels": full["labels"][: n - 5]}
    # cut before the first assistant token: nothing to train on, so dropped
    assert tokenize_chat(tiny_tokenizer, MULTI, max_length=5, overlong="truncate") is None


@pytest.mark.parametrize("messages, match", [
    ([{"role": "user", "content": "hi"}], "no assistant turn"),
    ([{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}], "role 'bot'"),
    ([{"role": "user", "content": " "}, {"role": "assistant", "content": "yo"}], "empty content"),
    ([{"role": "user"}, {"role": "assistant", "content": "yo"}], "'role' and 'content'"),
    ("hello", "non-empty list"),
])
def test_invalid_conversations_name_the_row(tiny_tokenizer, messages, match):
    with pytest.raises(DataError, match=rf"^row 7: .*{match}"):
        tokenize_chat(tiny_tokenizer, messages, max_length=64, row=7)
