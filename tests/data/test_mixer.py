"""The open-instruct style mixer: amounts, formats, seeding, errors."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from posttrain.data.mixer import load_rows, mix, sample_indices
from posttrain.errors import DataError
from posttrain.recipe.schema import DataSource


def chat(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}


def write_jsonl(path, n: int, start: int = 0):
    path.write_text("".join(json.dumps(chat(start + i)) + "\n" for i in range(n)))
    return str(path)


def ids_of(ds) -> list[int]:
    return [int(m[0]["content"][1:]) for m in ds["messages"]]


@pytest.mark.parametrize("amount, n", [(1.0, 10), (0.5, 5), (0.25, 2), (2.5, 25), (3, 3), (10, 10), (23, 23), (1, 1)])
def test_amounts_give_exact_counts(tmp_path, amount, n):
    ds = mix([DataSource(path=write_jsonl(tmp_path / "a.jsonl", 10), amount=amount)], seed=0)
    assert len(ds) == n


def test_upsampling_is_whole_copies_plus_distinct_remainder():
    idx = sample_indices(10, 2.5, seed=3)
    counts = Counter(idx)
    assert len(idx) == 25 and set(counts) == set(range(10))
    assert sorted(counts.values()) == [2] * 5 + [3] * 5  # the remainder draws 5 distinct rows
    assert Counter(sample_indices(10, 23, seed=3)) == Counter(list(range(10)) * 2 + sample_indices(10, 3, seed=3))


def test_fraction_and_count_are_distinct_without_replacement():
    for amount in (0.7, 7):
        idx = sample_indices(10, amount, seed=1)
        assert len(idx) == 7 == len(set(idx))


def test_mixture_is_seeded_and_shuffled(tmp_path):
    srcs = [DataSource(path=write_jsonl(tmp_path / "a.jsonl", 20), amount=0.5),
            DataSource(path=write_jsonl(tmp_path / "b.jsonl", 20, start=100), amount=1.5)]
    a, b, c = ids_of(mix(srcs, seed=0)), ids_of(mix(srcs, seed=0)), ids_of(mix(srcs, seed=1))
    assert a == b and a != c and sorted(a) != a
    assert len(a) == 10 + 30
    assert sum(i < 100 for i in a) == 10 and sum(i >= 100 for i in a) == 30


def test_local_formats(tmp_path):
    import datasets

    rows = [chat(i) for i in range(4)]
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.to_json(str(tmp_path / "d.json"), lines=False)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name in ("d.parquet", "d.json", "d.jsonl"):
        assert ids_of(load_rows(DataSource(path=str(tmp_path / name)))) == [0, 1, 2, 3], name
    arrow = tmp_path / "saved"
    ds.save_to_disk(str(arrow))
    arrow_file = next(arrow.glob("*.arrow"))
    assert ids_of(load_rows(DataSource(path=str(arrow_file)))) == [0, 1, 2, 3]
    (tmp_path / "d.csv").write_text("prompt,ground_truth\nWhat is 1+1?,2\n")
    assert load_rows(DataSource(path=str(tmp_path / "d.csv")), required=["prompt"])["ground_truth"] == [2]


def test_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [}\n')
    src = DataSource(path=str(bad))
    with pytest.raises(DataError, match=r"bad\.jsonl: cannot read as json"):
        load_rows(src)
    bad.unlink()
    with pytest.raises(DataError, match=r"bad\.jsonl: no such data file"):
        load_rows(src)
    other = tmp_path / "other.jsonl"
    other.write_text('{"text": "hello"}\n')
    with pytest.raises(DataError, match=r"other\.jsonl: no 'messages' column \(columns: text\)"):
        load_rows(DataSource(path=str(other)))
