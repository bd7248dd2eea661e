"""``posttrain eval``: generation + verifier scoring through the real command."""

import json
import subprocess
import sys

from posttrain.policy import Policy


def _run(*args):
    return subprocess.run([sys.executable, "-m", "posttrain.cli", "eval", *map(str, args)],
                          capture_output=True, text=True)


def test_eval_reports_accuracy_per_verifier(tiny_model_dir, tmp_path):
    questions = ["What is 2 + 3?", "Compute 41 minus 7.", "Hi there"]
    # The untrained model's own greedy answers are the ground truth of the first two rows
    # (so they must score 1); the third asks gsm8k for a number it did not write.
    own = Policy.load(tiny_model_dir, device="cpu").generate(
        [[{"role": "user", "content": q}] for q in questions[:2]], max_new_tokens=6)
    rows = [
        {"prompt": questions[0], "dataset": "string_match", "ground_truth": own[0]},
        {"messages": [{"role": "user", "content": questions[1]}], "dataset": "string_match", "ground_truth": own[1]},
        {"prompt": questions[2], "dataset": "gsm8k", "ground_truth": "123456789"},
    ]
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    r = _run(tiny_model_dir, "--data", data, "-o", out, "--json", "--max-new-tokens", 6, "--workers", 1)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["n"] == 3
    assert abs(summary["accuracy"] - 2 / 3) < 1e-6
    assert summary["per_verifier"] == {"gsm8k": {"n": 1, "accuracy": 0.0}, "string_match": {"n": 2, "accuracy": 1.0}}
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [s["score"] for s in scored] == [1.0, 1.0, 0.0]
    assert [s["response"] for s in scored[:2]] == own


def test_eval_bad_input_is_one_line(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "dataset": "gsm8k", "ground_truth": "1"}\nnot json\n')
    r = _run(tiny_model_dir, "--data", bad)
    assert r.returncode == 2 and r.stderr.strip() == f"posttrain eval: error: {bad}: line 2: bad JSON (Expecting value)"
    bad.write_text('{"prompt": "x", "dataset": "no_such_verifier", "ground_truth": "1"}\n')
    r = _run(tiny_model_dir, "--data", bad)
    assert r.returncode == 2 and "no_such_verifier" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    bad.write_text('{"prompt": "x", "ground_truth": "1"}\n')
    r = _run(tiny_model_dir, "--data", bad)
    assert r.returncode == 2 and r.stderr.strip().endswith("row 0: missing `dataset`")
    bad.write_text('{"prompt": "x", "dataset": "gsm8k", "ground_truth": "1"}\n')
    r = _run(tmp_path / "nomodel", "--data", bad)
    assert r.returncode == 2 and "not a model folder" in r.stderr
