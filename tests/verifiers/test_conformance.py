"""Verifiers against public benchmark data nobody on this project wrote (../shared/conformance)."""
import json
import re

from posttrain.verifiers import score_rows


def _jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _gsm8k_answer(solution: str) -> str:
    return solution.rsplit("####", 1)[1].strip().replace(",", "")


def test_gsm8k_reference_solutions(conformance):
    data = _jsonl(conformance / "gsm8k" / "test.jsonl")
    assert len(data) == 1319
    rows = [{"response": d["answer"], "dataset": "gsm8k", "ground_truth": d["answer"]} for d in data]
    # against another problem's answer, where that answer is a different number
    wrong = []
    for i, d in enumerate(data):
        for k in range(1, len(data)):
            other = data[(i + k) % len(data)]
            if float(_gsm8k_answer(other["answer"])) != float(_gsm8k_answer(d["answer"])):
                wrong.append({"response": d["answer"], "dataset": "gsm8k",
                              "ground_truth": _gsm8k_answer(other["answer"])})
                break
    res = score_rows(rows + wrong)
    own, other = res[: len(rows)], res[len(rows):]
    assert [i for i, r in enumerate(own) if r.score != 1.0] == []
    assert [i for i, r in enumerate(other) if r.score != 0.0] == []
    assert res.n_failed == 0


def _norm(ans: str) -> str:
    """Equal answers written differently ("x=5" and "5", "\\frac12" and "\\dfrac12") compare equal."""
    ans = re.sub(r"^\s*[a-zA-Z]\s*=", "", ans)
    return re.sub(r"\s+|\\[,!;: ]|\\left|\\right|\\dfrac|\\tfrac|\\frac", "", ans)


def test_math500_reference_solutions(conformance):
    data = _jsonl(conformance / "math500" / "test.jsonl")
    assert len(data) == 500
    own = [{"response": d["solution"], "dataset": "math", "ground_truth": d["answer"]} for d in data]
    # shifted pairing: solution i against the answer of problem i+1, skipping equal answers
    shifted = []
    for i, d in enumerate(data):
        other = data[(i + 1) % len(data)]["answer"]
        if _norm(other) != _norm(d["answer"]):
            shifted.append({"response": d["solution"], "dataset": "math", "ground_truth": other})
    assert len(shifted) >= 490
    res = score_rows(own + shifted)
    bad_own = [data[i]["unique_id"] for i, r in enumerate(res[:500]) if r.score != 1.0]
    bad_other = [(shifted[i]["ground_truth"], r.reason) for i, r in enumerate(res[500:]) if r.score != 0.0]
    assert bad_own == []
    assert bad_other == []
    assert res.n_failed == 0
