"""`posttrain verify` through the real console script, in a subprocess."""
import json

from conftest import run_cli


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_round_trip_keeps_order_count_and_fields(tmp_path):
    rows = []
    for i in range(40):
        rows.append({"id": i, "response": f"so the answer is {i}.", "dataset": "gsm8k",
                     "ground_truth": f"#### {i if i % 4 else i + 1}"})
    rows.append({"id": 40, "response": "$\\boxed{\\frac{1}{2}}$", "dataset": "math", "ground_truth": "0.5",
                 "prompt": "What is 1/2?"})
    rows.append({"id": 41, "response": "x", "dataset": ["string_match", "f1"], "ground_truth": ["x", "x y"]})
    _write(tmp_path / "in.jsonl", rows)
    out_path = tmp_path / "out.jsonl"
    p = run_cli([str(tmp_path / "in.jsonl"), "-o", str(out_path), "--workers", "2", "--timeout", "20"])
    assert p.returncode == 0, p.stderr
    summary = p.stdout.strip().splitlines()
    assert len(summary) == 1 and "verified 42 rows" in summary[0] and "0 errors" in summary[0]
    out = [json.loads(line) for line in out_path.read_text().splitlines()]
    assert [r["id"] for r in out] == list(range(42))
    for src, dst in zip(rows, out):
        assert {k: dst[k] for k in src} == src
    assert [r["score"] for r in out[:40]] == [0.0 if i % 4 == 0 else 1.0 for i in range(40)]
    assert out[0]["reason"] and out[1]["reason"] is None
    assert out[40]["score"] == 1.0
    assert out[41]["score"] == (1.0 + 2 / 3) / 2


def _bad(tmp_path, args, expect):
    out = tmp_path / "out.jsonl"
    out.write_text("precious\n")
    p = run_cli([*args, "-o", str(out)])
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert expect in lines[0]
    assert out.read_text() == "precious\n"  # nothing already there is lost


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    _bad(tmp_path, [str(tmp_path / "missing.jsonl")], "missing.jsonl")
    f = tmp_path / "in.jsonl"
    f.write_text('{"response": "1", "dataset": "gsm8k", "ground_truth": "1"}\n{oops\n')
    _bad(tmp_path, [str(f)], "line 2")
    f.write_text('{"response": "1", "dataset": "gsm8k", "ground_truth": "1"}\n{"response": "1", "dataset": "gsm8k"}\n')
    _bad(tmp_path, [str(f)], "line 2: missing field 'ground_truth'")
    f.write_text('{"response": "1", "dataset": "nope_verifier", "ground_truth": "1"}\n')
    _bad(tmp_path, [str(f)], "unknown verifier 'nope_verifier'")


def test_empty_input(tmp_path):
    (tmp_path / "in.jsonl").write_text("")
    p = run_cli([str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl")])
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "out.jsonl").read_text() == ""


def test_reasoning_format_switch_and_sandbox_mode(tmp_path):
    rows = [
        {"response": "<think>Paris? No.</think>\n<answer>London</answer>", "dataset": "string_match",
         "ground_truth": "london"},
        {"response": "<think>still thinking", "dataset": "string_match", "ground_truth": "still thinking"},
        {"response": "<think>easy</think><answer>x = 1</answer>", "dataset": ["code", "answer_format"],
         "ground_truth": [["assert x == 1"], None]},
    ]
    _write(tmp_path / "in.jsonl", rows)

    def scores(*flags):
        out = tmp_path / "out.jsonl"
        p = run_cli([str(tmp_path / "in.jsonl"), "-o", str(out), "--workers", "1", *flags])
        assert p.returncode == 0, p.stderr
        return [(r["score"], r["reason"]) for r in map(json.loads, out.read_text().splitlines())]

    assert scores("--code-sandbox", "rlimits_only") == [(1.0, None), (0.0, "unfinished thinking"), (1.0, None)]
    raw = scores("--no-reasoning-format", "--code-sandbox", "rlimits_only")
    # As they are: the tags are text, the thinking is no longer unfinished, and the program
    # is the whole response (a syntax error); the format verifier still sees the format.
    assert [s for s, _ in raw] == [0.0, 0.0, 0.5]
    assert raw[1][1] == "no reference matches"
    p = run_cli([str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "x.jsonl"), "--code-sandbox", "docker"])
    assert p.returncode == 2 and "invalid choice: 'docker'" in p.stderr
