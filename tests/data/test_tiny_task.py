"""The seeded tiny task: reproducible files, a clean held-out split (triples and
phrasings), negative results, correct working the verifier scores."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from posttrain.data import tiny_task
from posttrain.data.tiny_task import PHRASINGS, Problem, all_keys, solve, split_keys, wrong_answers
from posttrain.verifiers.gsm8k import verify_gsm8k

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "data" / "tiny"
FILES = ["sft_train", "sft_eval", "eval", "dpo_train", "dpo_eval", "rlvr_train"]


def score(response: str, truth) -> float:
    r = verify_gsm8k(response, truth)
    return r[0] if isinstance(r, tuple) else r


def _phrase_regexes():
    out = []
    for (op, kind), families in PHRASINGS.items():
        for ph in (ph for phrases in families.values() for ph in phrases):
            ph = ph[0].upper() + ph[1:]
            pat = re.escape(ph).replace(r"\{x\}", r"(?P<x>\d+)").replace(r"\{y\}", r"(?P<y>\d+)")
            out.append((op, kind, re.compile(f"^{pat}$")))
    return out


REGEXES = _phrase_regexes()


def parse(q: str) -> tuple[Problem, str]:
    """The question's problem and whether its phrasing is ``trained`` or ``held_out``."""
    for op, kind, rx in REGEXES:
        m = rx.match(q)
        if m:
            return Problem(int(m["x"]), int(m["y"]), op), kind
    raise AssertionError(f"unknown phrasing: {q!r}")


def read(name: str) -> list[dict]:
    return [json.loads(line) for line in (BUNDLED / f"{name}.jsonl").read_text().splitlines()]


def training_questions() -> list[str]:
    """Every question a training file or the base's pretraining text asks."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from pretrain_tiny_base import corpus

    qs = [r["messages"][0]["content"] for r in read("sft_train") + read("rlvr_train")]
    qs += [r["chosen"][0]["content"] for r in read("dpo_train")]
    return qs + [doc.split("\n", 1)[0] for doc in corpus(0, 20000)]


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


def test_split_partitions_every_triple_and_both_orders_share_a_key():
    train, held = split_keys(0)
    assert not set(train) & set(held)
    assert sorted(train + held) == sorted(all_keys())
    # 0..99 x 0..99 unordered pairs, per operation: 5050 + 5050
    assert len(all_keys()) == 10100
    assert 0.09 < len(held) / len(all_keys()) < 0.11
    assert Problem(7, 35, "-").key == Problem(35, 7, "-").key == (7, 35, "-")
    assert Problem(7, 35, "+").key != Problem(7, 35, "-").key


def test_held_out_triples_and_phrasings_never_trained_on():
    train_keys, held_keys = map(set, split_keys(0))
    trained = [parse(q) for q in training_questions()]
    assert {p.key for p, _ in trained} <= train_keys
    assert {kind for _, kind in trained} == {"trained"}
    # every trained phrasing of both operations is used
    templates = Counter()
    for (op, kind), families in PHRASINGS.items():
        templates[kind] += sum(map(len, families.values()))
    assert templates["trained"] == 322 and templates["held_out"] == 56
    for name in ("eval", "sft_eval", "dpo_eval"):
        rows = read(name)
        qs = [(r["chosen"] if "chosen" in r else r["messages"])[0]["content"] for r in rows]
        assert {parse(q)[0].key for q in qs} <= held_keys, name
    # accuracy prompts and eval-loss rows use disjoint held-out triples
    acc = {parse(r["prompt"])[0].key for r in read("eval")}
    loss = {parse(r["messages"][0]["content"])[0].key for r in read("sft_eval")}
    assert not acc & loss


def test_eval_marks_its_held_out_phrasings():
    rows = read("eval")
    assert len(rows) >= 500
    kinds = [r["phrasing"] for r in rows]
    assert kinds == [parse(r["prompt"])[1] for r in rows]
    # every third row, so any prefix has the same share
    assert kinds[:6] == ["trained", "trained", "held_out"] * 2
    assert Counter(kinds) == {"trained": 400, "held_out": 200}


def test_held_out_phrasings_use_only_trained_operation_words():
    """A held-out phrasing is new wording around words training taught: the operation
    (and ``from`` reversing the order) is always named in a way some trained phrasing of the
    same operation names it."""
    cues = {"+": ["+", "plus", "sum", "add", "total", "increased"],
            "-": ["-", "minus", "take away", "subtract", " from ", " less ", "decreased"]}
    for op in "+-":
        trained = " ".join(ph for phs in PHRASINGS[(op, "trained")].values() for ph in phs).lower()
        for ph in (ph for phs in PHRASINGS[(op, "held_out")].values() for ph in phs):
            found = [c for c in cues["+"] + cues["-"] if c in ph.lower()]
            assert any(c in cues[op] for c in found), ph
            assert all(c in trained for c in found), (ph, found)


def test_both_orders_and_negative_results_are_asked():
    problems = [parse(r["messages"][0]["content"])[0] for r in read("sft_train")]
    kinds = Counter("add" if p.op == "+" else "sub_neg" if p.answer < 0 else "sub_pos" for p in problems)
    n = len(problems)
    # half the questions subtract, and half of those have x < y (x == y gives 0)
    assert 0.45 < kinds["add"] / n < 0.55 and 0.22 < kinds["sub_neg"] / n < 0.28, kinds
    assert any(p.x < 10 <= p.y for p in problems if p.op == "+") and any(p.y < 10 <= p.x for p in problems if p.op == "+")
    # a family is picked before a template, so the few sentences, most of which name the
    # numbers in the other order ("Subtract 7 from 35"), are a third of the questions
    subs = [r["messages"][0]["content"] for r in read("sft_train")]
    subs = [q for q, p in zip(subs, problems) if p.op == "-"]
    reversed_share = sum(" from " in q for q in subs) / len(subs)
    assert 0.22 < reversed_share < 0.32, reversed_share
    evals = read("eval")
    assert sum(int(r["ground_truth"]) < 0 for r in evals) > 100
    assert min(int(r["ground_truth"]) for r in read("rlvr_train")) < -80


def test_file_formats():
    for r in read("sft_train")[:50] + read("sft_eval")[:50]:
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
        p, _ = parse(r["messages"][0]["content"])
        assert r["messages"][1]["content"] == solve(p)
    for r in read("eval"):
        assert r["dataset"] == "gsm8k" and r["messages"] == [{"role": "user", "content": r["prompt"]}]
        assert r["ground_truth"] == str(parse(r["prompt"])[0].answer)
    for r in read("rlvr_train")[:200]:
        assert set(r) == {"messages", "ground_truth", "dataset"} and r["dataset"] == "gsm8k"
        assert len(r["messages"]) == 1 and r["ground_truth"] == str(parse(r["messages"][0]["content"])[0].answer)
    for r in read("dpo_train")[:300]:
        assert r["chosen"][0] == r["rejected"][0] and r["chosen"][1]["role"] == r["rejected"][1]["role"] == "assistant"
        truth = str(parse(r["chosen"][0]["content"])[0].answer)
        assert score(r["chosen"][1]["content"], truth) == 1.0
        assert score(r["rejected"][1]["content"], truth) == 0.0
    sizes = {name: len(read(name)) for name in FILES}
    assert sizes == tiny_task.SIZES
    assert all((BUNDLED / f"{n}.jsonl").stat().st_size < 3_000_000 for n in FILES)


def test_worked_answers_are_right_and_verifier_scores_them():
    for a, b, op in all_keys():
        for p in {Problem(a, b, op), Problem(b, a, op)}:
            text = solve(p)
            assert score(text, str(p.answer)) == 1.0, text
            assert text.endswith(f"\n#### {p.answer}")
            wrong = wrong_answers(p)
            assert wrong, p
            for kind, bad in wrong:
                assert score(bad, str(p.answer)) == 0.0, (kind, bad)


def test_the_gsm8k_verifier_reads_negative_answers():
    # 3 - 15 = -12: the last number after "####" keeps its sign
    text = solve(Problem(3, 15, "-"))
    assert score(text, "-12") == 1.0 and score(text, "12") == 0.0
    assert score(text.replace("#### -12", "#### 12"), "-12") == 0.0


@pytest.mark.parametrize("p, kind, text", [
    (Problem(7, 35, "+"), None, "7 + 35: ones 7 + 5 = 12, carry 1. tens 0 + 3 + 1 = 4.\n#### 42"),
    (Problem(3, 4, "+"), None, "3 + 4: ones 3 + 4 = 7. tens 0 + 0 = 0.\n#### 7"),
    (Problem(99, 99, "+"), None, "99 + 99: ones 9 + 9 = 18, carry 1. tens 9 + 9 + 1 = 19.\n#### 198"),
    (Problem(7, 35, "+"), "dropped_carry", "7 + 35: ones 7 + 5 = 12. tens 0 + 3 = 3.\n#### 32"),
    (Problem(35, 7, "-"), None, "35 - 7: ones 5 - 7, borrow 1, 15 - 7 = 8. tens 3 - 0 - 1 = 2.\n#### 28"),
    (Problem(35, 7, "-"), "dropped_borrow", "35 - 7: ones 5 - 7, borrow 1, 15 - 7 = 8. tens 3 - 0 = 3.\n#### 38"),
    (Problem(35, 7, "-"), "other_op", "35 + 7: ones 5 + 7 = 12, carry 1. tens 3 + 0 + 1 = 4.\n#### 42"),
    # 7 - 35 = -(35 - 7) = -28
    (Problem(7, 35, "-"), None,
     "7 - 35: 7 < 35, so 7 - 35 = -(35 - 7). ones 5 - 7, borrow 1, 15 - 7 = 8. tens 3 - 0 - 1 = 2.\n#### -28"),
    (Problem(7, 35, "-"), "dropped_sign",
     "7 - 35: 7 < 35, so 7 - 35 = -(35 - 7). ones 5 - 7, borrow 1, 15 - 7 = 8. tens 3 - 0 - 1 = 2.\n#### 28"),
    (Problem(7, 35, "-"), "swapped_operands",
     "35 - 7: ones 5 - 7, borrow 1, 15 - 7 = 8. tens 3 - 0 - 1 = 2.\n#### 28"),
    # 3 - 15 = -(15 - 3) = -12; 0 - 42 = -(42 - 0) = -42; 13 - 15 = -(15 - 13) = -2
    (Problem(3, 15, "-"), None, "3 - 15: 3 < 15, so 3 - 15 = -(15 - 3). ones 5 - 3 = 2. tens 1 - 0 = 1.\n#### -12"),
    (Problem(0, 42, "-"), None, "0 - 42: 0 < 42, so 0 - 42 = -(42 - 0). ones 2 - 0 = 2. tens 4 - 0 = 4.\n#### -42"),
    (Problem(13, 15, "-"), None, "13 - 15: 13 < 15, so 13 - 15 = -(15 - 13). ones 5 - 3 = 2. tens 1 - 1 = 0.\n#### -2"),
    (Problem(35, 35, "-"), None, "35 - 35: ones 5 - 5 = 0. tens 3 - 3 = 0.\n#### 0"),
])
def test_worked_format(p, kind, text):
    if kind is None:
        assert solve(p) == text
    else:
        assert dict(wrong_answers(p))[kind] == text


def test_questions_read_as_written():
    rng = random.Random(0)
    asked = {tiny_task.ask(Problem(7, 35, "-"), rng) for _ in range(400)}
    assert "Subtract 35 from 7." in asked and "What is 7 - 35?" in asked and "The sum of 7 and 35" not in asked
    assert all(q[0].isupper() or q[0].isdigit() for q in asked)
    held = {tiny_task.ask(Problem(7, 35, "-"), rng, "held_out") for _ in range(400)}
    assert "7 - 35" in held and "If you subtract 35 from 7, what do you get?" in held and not held & asked
