"""The seeded tiny task: reproducible files, a clean held-out split, correct working."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from posttrain.data import tiny_task
from posttrain.data.tiny_task import Problem, all_keys, solve, split_keys, wrong_answers
from posttrain.verifiers.gsm8k import verify_gsm8k

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "data" / "tiny"
FILES = ["sft_train", "sft_eval", "eval", "dpo_train", "dpo_eval", "rlvr_train"]


def score(response: str, truth) -> float:
    r = verify_gsm8k(response, truth)
    return r[0] if isinstance(r, tuple) else r


def _phrase_regexes():
    out = []
    for op, phrases in (("+", tiny_task.ADD_PHRASES), ("-", tiny_task.SUB_PHRASES)):
        for ph in phrases:
            pat = re.escape(ph).replace(r"\{x\}", r"(?P<x>\d+)").replace(r"\{y\}", r"(?P<y>\d+)")
            out.append((op, re.compile(f"^{pat}$")))
    return out


REGEXES = _phrase_regexes()


def key_of_question(q: str):
    for op, rx in REGEXES:
        m = rx.match(q)
        if m:
            return Problem(int(m["x"]), int(m["y"]), op).key
    raise AssertionError(f"unknown phrasing: {q!r}")


def read(name: str) -> list[dict]:
    return [json.loads(line) for line in (BUNDLED / f"{name}.jsonl").read_text().splitlines()]


def test_cli_regenerates_bundled_files_byte_identically(tmp_path):
    out = tmp_path / "tiny"
    subprocess.run([sys.executable, "-m", "posttrain.data.tiny_task", str(out), "--seed", "0"], check=True,
                   capture_output=True, cwd=ROOT)
    for name in FILES:
        assert (out / f"{name}.jsonl").read_bytes() == (BUNDLED / f"{name}.jsonl").read_bytes(), name


def test_other_seed_gives_other_data():
    small = {k: 20 for k in tiny_task.SIZES}
    assert tiny_task.generate(0, small) == tiny_task.generate(0, small)
    assert tiny_task.generate(0, small)["sft_train"] != tiny_task.generate(1, small)["sft_train"]


def test_split_partitions_every_triple():
    train, held = split_keys(0)
    assert not set(train) & set(held)
    assert sorted(train + held) == sorted(all_keys())
    assert 0.09 < len(held) / len(all_keys()) < 0.11


def test_held_out_questions_never_trained_on():
    train_keys, held_keys = map(set, split_keys(0))
    trained = set()
    for r in read("sft_train") + read("rlvr_train"):
        trained.add(key_of_question(r["messages"][0]["content"]))
    for r in read("dpo_train"):
        trained.add(key_of_question(r["chosen"][0]["content"]))
    assert trained <= train_keys
    for name in ("eval", "sft_eval", "dpo_eval"):
        rows = read(name)
        qs = [(r["chosen"] if "chosen" in r else r["messages"])[0]["content"] for r in rows]
        assert {key_of_question(q) for q in qs} <= held_keys, name
    # accuracy prompts and eval-loss rows use disjoint held-out triples
    acc = {key_of_question(r["prompt"]) for r in read("eval")}
    loss = {key_of_question(r["messages"][0]["content"]) for r in read("sft_eval")}
    assert not acc & loss


def test_file_formats():
    for r in read("sft_train")[:50] + read("sft_eval")[:50]:
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
    for r in read("eval")[:50]:
        assert r["dataset"] == "gsm8k" and r["messages"] == [{"role": "user", "content": r["prompt"]}]
        k = key_of_question(r["prompt"])
        assert r["ground_truth"] == str(k[0] + k[1] if k[2] == "+" else k[0] - k[1])
    for r in read("rlvr_train")[:50]:
        assert r["dataset"] == "gsm8k" and len(r["messages"]) == 1 and r["ground_truth"].isdigit()
    for r in read("dpo_train")[:200]:
        assert r["chosen"][0] == r["rejected"][0] and r["chosen"][1]["role"] == r["rejected"][1]["role"] == "assistant"
        truth = str(Problem(*_xy(r["chosen"][0]["content"])).answer)
        assert score(r["chosen"][1]["content"], truth) == 1.0
        assert score(r["rejected"][1]["content"], truth) == 0.0
    sizes = {name: len(read(name)) for name in FILES}
    assert sizes == tiny_task.SIZES
    assert all((BUNDLED / f"{n}.jsonl").stat().st_size < 3_000_000 for n in FILES)


def _xy(q: str):
    for op, rx in REGEXES:
        m = rx.match(q)
        if m:
            return int(m["x"]), int(m["y"]), op
    raise AssertionError(q)


def test_worked_answers_are_right_and_verifier_scores_them():
    for a, b, op in all_keys():
        for p in {Problem(a, b, op), Problem(b, a, op) if op == "+" else Problem(a, b, op)}:
            text = solve(p)
            assert score(text, str(p.answer)) == 1.0, text
            assert text.rstrip().endswith(f"#### {p.answer}")
            wrong = wrong_answers(p)
            assert wrong, p
            for kind, bad in wrong:
                assert score(bad, str(p.answer)) == 0.0, (kind, bad)


@pytest.mark.parametrize("p, kind, text", [
    (Problem(7, 35, "+"), None, "7 + 35: ones 7 + 5 = 12, write 2 carry 1. tens 0 + 3 + 1 = 4. So 7 + 35 = 42.\n#### 42"),
    (Problem(7, 35, "+"), "dropped_carry", "7 + 35: ones 7 + 5 = 12, write 2. tens 0 + 3 = 3. So 7 + 35 = 32.\n#### 32"),
    (Problem(35, 7, "-"), None, "35 - 7: ones 5 - 7, borrow 1, 15 - 7 = 8. tens 3 - 0 - 1 = 2. So 35 - 7 = 28.\n#### 28"),
    (Problem(35, 7, "-"), "dropped_borrow", "35 - 7: ones 5 - 7, borrow 1, 15 - 7 = 8. tens 3 - 0 = 3. So 35 - 7 = 38.\n#### 38"),
    (Problem(35, 7, "-"), "other_op", "35 + 7: ones 5 + 7 = 12, write 2 carry 1. tens 3 + 0 + 1 = 4. So 35 + 7 = 42.\n#### 42"),
])
def test_worked_format(p, kind, text):
    if kind is None:
        assert solve(p) == text
    else:
        assert dict(wrong_answers(p))[kind] == text
