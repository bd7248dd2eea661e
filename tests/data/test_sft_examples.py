"""build_sft_examples: stats, and the on-disk tokenization cache."""

from __future__ import annotations

import json

import pytest

from posttrain.data.sft import build_sft_examples
from posttrain.errors import DataError
from posttrain.recipe.schema import DataSource


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def rows(n, long_every=0):
    out = []
    for i in range(n):
        answer = f"The answer is {i}." + (" again" * 40 if long_every and i % long_every == 0 else "")
        out.append({"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": answer}]})
    return out


def test_stats_count_rows_kept_truncated_dropped(tmp_path, tiny_tokenizer):
    src = [DataSource(path=write(tmp_path / "d.jsonl", rows(12, long_every=4)))]
    ex, st = build_sft_examples(src, tiny_tokenizer, max_length=48, overlong="drop", cache_dir=tmp_path / "c")
    assert (st["rows"], st["kept"], st["dropped"], st["truncated"]) == (12, 9, 3, 0)
    assert st["tokens"] == sum(len(e["input_ids"]) for e in ex)
    assert st["loss_tokens"] == sum(x != -100 for e in ex for x in e["labels"])
    ex, st = build_sft_examples(src, tiny_tokenizer, max_length=48, overlong="truncate", cache_dir=tmp_path / "c")
    assert (st["kept"], st["dropped"], st["truncated"]) == (12, 0, 3)
    assert max(len(e["input_ids"]) for e in ex) == 48
    assert set(ex[0]) == {"input_ids", "labels"}


def test_second_run_reads_the_cache(tmp_path, tiny_tokenizer, monkeypatch):
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "env_cache"))
    src = [DataSource(path=write(tmp_path / "d.jsonl", rows(6)), amount=2.0)]
    first, s1 = build_sft_examples(src, tiny_tokenizer, max_length=64)
    second, s2 = build_sft_examples(src, tiny_tokenizer, max_length=64)
    assert (s1["cache_hit"], s2["cache_hit"]) == (False, True)
    assert first == second and len(first) == 12
    entries = list((tmp_path / "env_cache").iterdir())
    assert len(entries) == 1 and entries[0].suffix == ".npz"  # no temporary file left behind


def test_cache_key_sees_every_input(tmp_path, tiny_tokenizer):
    cache = tmp_path / "c"
    path = tmp_path / "d.jsonl"
    write(path, rows(6))

    def hit(**kw):
        args = {"sources": [DataSource(path=str(path))], "tokenizer": tiny_tokenizer, "max_length": 64,
                "overlong": "drop", "seed": 0, "cache_dir": cache, **kw}
        return build_sft_examples(**args)[1]["cache_hit"]

    assert hit() is False and hit() is True
    assert hit(seed=1) is False
    assert hit(max_length=65) is False
    assert hit(overlong="truncate") is False
    assert hit(sources=[DataSource(path=str(path), amount=0.5)]) is False
    assert hit(sources=[DataSource(path=str(path), amount=6)]) is False  # 6 rows is not 6.0x
    write(path, rows(7))
    assert hit() is False
    original = tiny_tokenizer.chat_template
    try:
        tiny_tokenizer.chat_template = original.replace("<|user|>", "<|user|> ")
        assert hit() is False
    finally:
        tiny_tokenizer.chat_template = original
    assert hit() is True


def test_olmo2_tokenizer_has_its_own_entry(tmp_path, tiny_tokenizer, olmo2_tokenizer):
    src = [DataSource(path=write(tmp_path / "d.jsonl", rows(3)))]
    a, sa = build_sft_examples(src, tiny_tokenizer, max_length=64, cache_dir=tmp_path / "c")
    b, sb = build_sft_examples(src, olmo2_tokenizer, max_length=64, cache_dir=tmp_path / "c")
    assert not sa["cache_hit"] and not sb["cache_hit"] and a != b


def test_bad_row_is_named(tmp_path, tiny_tokenizer):
    data = rows(3) + [{"messages": [{"role": "user", "content": "no reply"}]}]
    src = [DataSource(path=write(tmp_path / "d.jsonl", data))]
    with pytest.raises(DataError, match="no assistant turn"):
        build_sft_examples(src, tiny_tokenizer, max_length=64, cache_dir=tmp_path / "c")
