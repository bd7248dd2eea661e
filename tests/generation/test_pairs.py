"""On-policy preference pairs from scored samples: the pure builder on hand-made rows, and
the ``posttrain pairs`` command, whose output the DPO stage's own loader must keep whole."""

import json
import subprocess
import sys

import pytest

from posttrain.data.onpolicy_pairs import build_pairs
from posttrain.errors import DataError

Q = "What is 1+1?"
USER = {"role": "user", "content": Q}


def _rows():
    return [
        {"messages": [USER], "response": "2", "score": 1.0, "sample_index": 0},
        {"messages": [USER], "response": "3", "score": 0.0, "sample_index": 1},
        {"prompt": "Q2", "response": "x", "score": 1.0},
        {"prompt": Q, "response": "   ", "score": 0.0},  # same prompt as row 0, blank: left out
        {"prompt": "Q2", "response": "y", "score": 1.0},
        {"prompt": "Q3", "response": "z", "score": 0.0},
        {"messages": [USER, {"role": "assistant", "content": "old"}], "response": "4", "score": 0.5,
         "sample_index": 3},  # the trailing assistant turn is not part of the prompt
    ]


def test_one_pair_per_mixed_prompt_the_rest_counted():
    pairs, rep = build_pairs(_rows(), seed=0)
    # Q: passing {"2"}, failing {"3", "4"} (0.5 < 1); Q2 all pass; Q3 all fail.
    assert (rep.samples, rep.prompts, rep.pairs, rep.prompts_with_pairs) == (7, 3, 1, 1)
    assert (rep.all_pass, rep.all_fail, rep.blank_responses) == (1, 1, 1)
    (p,) = pairs
    assert p["chosen"] == [USER, {"role": "assistant", "content": "2"}]
    assert p["rejected"][0] == USER and p["rejected"][1]["content"] in ("3", "4")
    assert p["chosen_score"] == 1.0 and p["rejected_score"] == {"3": 0.0, "4": 0.5}[p["rejected"][1]["content"]]
    assert p["chosen_sample_index"] == 0 and "prompt" not in p
    assert rep.summary().startswith("1 pairs from 1 of 3 prompts (7 samples)")


def test_threshold_decides_passing():
    pairs, rep = build_pairs(_rows(), threshold=0.5, seed=0)
    (p,) = pairs  # now "2" and "4" pass and only "3" fails
    assert p["rejected"][1]["content"] == "3" and p["chosen"][1]["content"] in ("2", "4")
    pairs, rep = build_pairs(_rows(), threshold=0.0)  # everything passes
    assert pairs == [] and (rep.all_pass, rep.all_fail) == (3, 0)


def test_choice_is_seeded_and_covers_the_samples():
    rejected = [build_pairs(_rows(), seed=s)[0][0]["rejected"][1]["content"] for s in range(20)]
    assert set(rejected) == {"3", "4"}  # a random pick, not always the first failing sample
    assert rejected == [build_pairs(_rows(), seed=s)[0][0]["rejected"][1]["content"] for s in range(20)]


def test_several_pairs_per_prompt_are_distinct_and_capped():
    pairs, rep = build_pairs(_rows(), pairs_per_prompt=5)
    # Q has 1 passing x 2 failing = 2 combinations: both, once each
    assert rep.pairs == 2 and sorted(p["rejected"][1]["content"] for p in pairs) == ["3", "4"]


@pytest.mark.parametrize("bad, message", [
    ({"prompt": "q", "response": "a"}, "row 1: needs a numeric `score`"),
    ({"prompt": "q", "response": "a", "score": "1"}, "row 1: needs a numeric `score`"),
    ({"prompt": "q", "score": 1.0}, "row 1: needs a string `response`"),
    ({"response": "a", "score": 1.0}, "row 1: needs `messages` (prompt turns) or `prompt`"),
    ({"messages": [{"role": "robot", "content": "hi"}], "response": "a", "score": 1.0}, "row 1: message 0 has role"),
])
def test_bad_rows_name_the_row(bad, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_pairs([_rows()[0], bad], source="s.jsonl")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "posttrain.cli", "pairs", *map(str, args)],
                          capture_output=True, text=True)


def test_pairs_command_output_is_read_whole_by_the_dpo_loader(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    from posttrain.data.preference import tokenize_source
    from posttrain.recipe.schema import DataSource

    scored = tmp_path / "scored.jsonl"
    rows = _rows() + [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "7+8?"}],
                       "response": f"It is {v}.", "score": float(v == 15)} for v in (14, 15, 16)]
    scored.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "pairs.jsonl"
    r = _cli(scored, "-o", out, "--seed", 3, "--pairs-per-prompt", 2, "--json")
    assert r.returncode == 0, r.stderr
    counts = json.loads(r.stdout.strip().splitlines()[-1])
    assert counts["pairs"] == 4 and counts["prompts"] == 4 and counts["all_fail"] == 1
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert written == build_pairs(rows, seed=3, pairs_per_prompt=2)[0]
    pairs, report = tokenize_source(DataSource(path=str(out)), AutoTokenizer.from_pretrained(tiny_model_dir), 256,
                                    "prompt_left")
    assert report.kept == 4 and report.dropped == {} and len(pairs) == 4


def test_pairs_command_bad_input_is_one_line(tmp_path, capsys):
    from posttrain.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "response": "a", "score": 1}\n{"prompt": "q", "response": "b"}\n')
    out = tmp_path / "out.jsonl"
    r = _cli(bad, "-o", out)  # the real command in its own process
    assert r.returncode == 2
    assert r.stderr == f"posttrain pairs: error: {bad}: row 1: needs a numeric `score` " \
                       "(score the samples first: generate --score, or verify)\n"
    for args, message in [((tmp_path / "missing.jsonl", "-o", out), "cannot read"),
                          ((bad, "-o", tmp_path / "no" / "out.jsonl"), "does not exist"),
                          ((bad, "-o", out, "--pairs-per-prompt", 0), "pairs per prompt must be at least 1")]:
        assert main(["pairs", *map(str, args)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("posttrain pairs: error: ") and message in lines[0], lines
    assert not out.exists()
