"""``posttrain eval --suite``: GSM8K, MATH-500 and IFEval with their prompts and metrics,
on the public data in ../shared/conformance (skipped only when that folder is absent)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from posttrain.cli import main
from posttrain.errors import DataError
from posttrain.eval_suites import get_suite, load_suite_rows, parse_data_args, parse_suites, score_suite
from posttrain.eval_suites.ifeval_metrics import Followed, accuracies, follow, loose_variants
from posttrain.eval_suites.suites import GSM8K_PROMPT, MATH_PROMPT


def _eval(*args, env=None):
    return subprocess.run([sys.executable, "-m", "posttrain.cli", "eval", *map(str, args)], capture_output=True,
                          text=True, env=env)


def _jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]


def test_loose_variants_by_hand():
    assert loose_variants("Sure, *here*:\nbody\nBye") == [
        "Sure, *here*:\nbody\nBye", "body\nBye", "Sure, *here*:\nbody", "body",
        "Sure, here:\nbody\nBye", "body\nBye", "Sure, here:\nbody", "body"]


def test_ifeval_accuracies_by_hand():
    end = {"end_phrase": "Bye."}
    a = follow("Sure, here it is\nno commas here\nBye.\n---",
               {"instruction_id_list": ["punctuation:no_comma", "startend:end_checker"], "kwargs": [{}, end]})
    # Strict: a comma in line 1, and the text ends in "---". Loose: dropping the first line
    # removes the comma, dropping the last makes it end in "Bye.".
    assert a == Followed(strict=[False, False], loose=[True, True])
    b = follow("<<Poem>>\nroses", {"instruction_id_list": ["detectable_format:title"], "kwargs": [{}]})
    assert b == Followed(strict=[True], loose=[True])
    c = follow("a dog, a bird", {"instruction_id_list": ["punctuation:no_comma", "keywords:existence"],
                                 "kwargs": [{}, {"keywords": ["cat"]}]})
    assert c == Followed(strict=[False, False], loose=[False, False])  # one line: no variant helps
    assert accuracies([a, b, c]) == {
        "n": 3, "n_instructions": 5,
        "prompt_level_strict": 0.333333,  # only b: 1/3
        "inst_level_strict": 0.2,  # 1 of 2 + 1 + 2 = 5 instructions
        "prompt_level_loose": 0.666667,  # a and b: 2/3
        "inst_level_loose": 0.6,  # 2 + 1 + 0 = 3 of 5
    }


def test_ifeval_reproduces_googles_reference_on_gpt4_responses(conformance_dir):
    """Google's reference checker on GPT-4's responses: 415/541 prompts (76.71%) and 696/834
    instructions (83.45%) strict. Two rows differ: `keywords:letter_frequency` with the
    "letter" `#` (key 1122) or `!` (key 1129), where the reference checks a random letter
    instead; GPT-4 follows both as written, so posttrain counts 2 more of each."""
    d = conformance_dir / "ifeval"
    suite = get_suite("ifeval")
    rows = load_suite_rows(suite, str(d / "input_data.jsonl"))
    responses = {r["prompt"]: r["response"] for r in _jsonl(d / "input_response_data_gpt4_20231107_145030.jsonl")}
    reference = {r["key"]: r for r in _jsonl(d / "reference_strict.jsonl")}
    summary, scored = score_suite(suite, rows, [responses[r["messages"][0]["content"]] for r in rows])

    differ = {s["key"]: (s["follow_instruction_list"], reference[s["key"]]["follow_instruction_list"])
              for s in scored if s["follow_instruction_list"] != reference[s["key"]]["follow_instruction_list"]}
    assert differ == {1122: ([True, True], [True, False]), 1129: ([True, True], [False, True])}
    letters = {s["key"]: s["ground_truth"]["kwargs"][s["ground_truth"]["instruction_id_list"].index(
        "keywords:letter_frequency")]["letter"] for s in scored if s["key"] in differ}
    assert letters == {1122: "#", 1129: "!"}

    assert summary["n"] == 541 and summary["n_instructions"] == 834
    assert summary["prompt_level_strict"] == round(417 / 541, 6) == summary["accuracy"]
    assert summary["inst_level_strict"] == round(698 / 834, 6)
    # Counting those two rows as the reference did gives its numbers exactly.
    assert f"{(417 - 2) / 541:.2%} / {(698 - 2) / 834:.2%}" == "76.71% / 83.45%"
    # Loose: 431/541 and 714/834 here; minus the same two rows, 79.30% / 85.37%, the loose
    # numbers the IFEval paper reports for these responses.
    assert (summary["prompt_level_loose"], summary["inst_level_loose"]) == (round(431 / 541, 6), round(714 / 834, 6))
    assert f"{(431 - 2) / 541:.2%} / {(714 - 2) / 834:.2%}" == "79.30% / 85.37%"


def test_suite_rows_have_the_prompt_format_and_ground_truth(conformance_dir):
    gsm = load_suite_rows(get_suite("gsm8k"), str(conformance_dir / "gsm8k" / "test.jsonl"), limit=2)
    first = _jsonl(conformance_dir / "gsm8k" / "test.jsonl")[0]
    assert gsm[0] == {"messages": [{"role": "user", "content": GSM8K_PROMPT.format(question=first["question"])}],
                      "dataset": "gsm8k", "ground_truth": "18"}  # "... #### 18"
    assert gsm[0]["messages"][0]["content"].endswith(
        'Finish your response with the line "The answer is N.", where N is the final number.')

    math = load_suite_rows(get_suite("math500"), str(conformance_dir / "math500" / "test.jsonl"), limit=1)[0]
    assert math["messages"][0]["content"].endswith("\n\nSolve this step by step, and put your final answer in \\boxed{}.")
    assert math["messages"][0]["content"].startswith("Convert the point $(0,3)$ in rectangular coordinates")
    assert math["ground_truth"] == "\\left( 3, \\frac{\\pi}{2} \\right)" and math["dataset"] == "math"
    assert MATH_PROMPT.format(problem="P") == "P\n\nSolve this step by step, and put your final answer in \\boxed{}."

    ife = load_suite_rows(get_suite("ifeval"), str(conformance_dir / "ifeval" / "input_data.jsonl"), limit=1)[0]
    assert ife["key"] == 1000 and ife["messages"][0]["content"].startswith("Write a 300+ word summary")
    assert ife["ground_truth"]["instruction_id_list"] == [
        "punctuation:no_comma", "detectable_format:number_highlighted_sections", "length_constraints:number_words"]


def test_reference_solutions_score_1_and_other_answers_0(conformance_dir):
    """The metric, fed the data sets' own worked solutions: all right; fed the next
    problem's solution: all wrong (50 rows of each suite)."""
    for name, path, solution in (("gsm8k", "gsm8k/test.jsonl", "answer"), ("math500", "math500/test.jsonl", "solution")):
        suite = get_suite(name)
        raw = _jsonl(conformance_dir / path)[:51]
        rows = load_suite_rows(suite, str(conformance_dir / path), limit=50)
        own, _ = score_suite(suite, rows, [r[solution] for r in raw[:50]], workers=1)
        assert own == {"n": 50, "accuracy": 1.0}, name
        _, scored = score_suite(suite, rows, [r[solution] for r in raw[1:51]], workers=1)
        right = [i for i, s in enumerate(scored) if s["score"]]
        if name == "math500":  # problem 22's answer is 5 and problem 23's "x=5": rightly equal
            assert right == [22] and (rows[22]["ground_truth"], raw[23]["answer"]) == ("5", "x=5")
        else:
            assert right == []


def test_eval_suites_end_to_end_on_the_tiny_model(tiny_model_dir, conformance_dir, tmp_path):
    out = tmp_path / "scored.jsonl"
    r = _eval(tiny_model_dir, "--suite", "gsm8k,math500,ifeval",
              "--data", f"gsm8k={conformance_dir / 'gsm8k' / 'test.jsonl'}",
              "--data", f"math500={conformance_dir / 'math500' / 'test.jsonl'}",
              "--data", f"ifeval={conformance_dir / 'ifeval' / 'input_data.jsonl'}",
              "--limit", 2, "--max-new-tokens", 8, "--workers", 1, "--json", "-o", out)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert list(summary["suites"]) == ["gsm8k", "math500", "ifeval"]
    ife = summary["suites"]["ifeval"]
    assert set(ife) == {"n", "accuracy", "n_instructions", "prompt_level_strict", "inst_level_strict",
                        "prompt_level_loose", "inst_level_loose"}
    assert ife["n"] == 2 and ife["n_instructions"] == 3 + 1  # keys 1000 and 1001
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("gsm8k: accuracy ") and lines[0].endswith(" on 2 rows")
    assert lines[2].startswith("ifeval: prompt-level strict ")

    # Each scored row: the suite's prompt, the tiny model's response, and a score the suite's
    # metric gives that response again.
    scored = _jsonl(out)
    assert [s["suite"] for s in scored] == ["gsm8k"] * 2 + ["math500"] * 2 + ["ifeval"] * 2
    for name in ("gsm8k", "math500", "ifeval"):
        suite = get_suite(name)
        mine = [s for s in scored if s["suite"] == name]
        rows = [{k: v for k, v in s.items() if k not in ("suite", "response", "score", "reason", "prompt",
                                                        "follow_instruction_list", "follow_instruction_list_loose")}
                for s in mine]
        again, _ = score_suite(suite, rows, [s["response"] for s in mine], workers=1)
        assert again == summary["suites"][name]
        assert all(s["response"] for s in mine)  # the model wrote something for each prompt
    assert scored[0]["messages"][0]["content"].startswith("Janet’s ducks lay 16 eggs per day.")


def test_suite_without_data_loads_the_hub_and_says_how_to_avoid_it(tiny_model_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    r = _eval(tiny_model_dir, "--suite", "gsm8k", "--limit", 2, env=env)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("posttrain eval: error: gsm8k: cannot load openai/gsm8k (test split, config main) "
                               "from the hub: ")
    assert r.stderr.strip().endswith("(a local copy: --data gsm8k=FILE)")


def test_bad_suite_input_is_one_line_before_any_model_loads(tmp_path, conformance_dir, capsys):
    no_model = tmp_path / "no_model"  # never reached: the data is checked first
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"q": "1+1?", "answer": "#### 2"}\n')
    ife = tmp_path / "ife.jsonl"
    ife.write_text(json.dumps({"key": 1, "prompt": "Hi", "instruction_id_list": ["no:such"], "kwargs": [{}]}) + "\n")
    gsm = conformance_dir / "gsm8k" / "test.jsonl"
    cases = [
        (["--suite", "gsm9k"], "unknown eval suite 'gsm9k'; known: gsm8k, math500, ifeval"),
        (["--suite", "gsm8k", "--data", bad], f"gsm8k: {bad}: row 0: missing `question` (gsm8k rows need question, answer)"),
        (["--suite", "gsm8k,ifeval", "--data", gsm], f"--data {gsm}: with several suites, name the suite: --data SUITE=FILE"),
        (["--suite", "gsm8k", "--data", tmp_path / "none.jsonl"], f"gsm8k: {tmp_path / 'none.jsonl'}: no such data file"),
        ([], "give one --data FILE (rows with dataset and ground_truth), or --suite NAMES"),
    ]
    r = _eval(no_model, *cases[1][0])  # one through a real process: exit status 2, one line on stderr
    assert r.returncode == 2 and r.stderr == f"posttrain eval: error: {cases[1][1]}\n"
    for args, message in cases:  # the rest through the same entry point, in this process
        assert main(["eval", str(no_model), *map(str, args)]) == 2
        assert capsys.readouterr().err == f"posttrain eval: error: {message}\n"
    assert main(["eval", str(no_model), "--suite", "ifeval", "--data", f"ifeval={ife}"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"posttrain eval: error: ifeval: {ife}: row 0: ")
    assert "no:such" in err


def test_data_arguments():
    suites = parse_suites("gsm8k, IFEval,gsm8k")
    assert [s.name for s in suites] == ["gsm8k", "ifeval"]
    assert parse_data_args(suites, ["ifeval=x.jsonl"]) == {"gsm8k": None, "ifeval": "x.jsonl"}
    assert parse_data_args(suites[:1], ["a/b=c.jsonl"]) == {"gsm8k": "a/b=c.jsonl"}  # a path with "=" in it
    with pytest.raises(DataError, match="'math500' is not one of the suites run"):
        parse_data_args(suites, ["math500=m.jsonl"])
