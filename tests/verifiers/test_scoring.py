import os
import time

import pytest

from posttrain.verifiers import Scorer, UnknownVerifierError, register_verifier, score_rows


@register_verifier("test_hostile")
def hostile(response, ground_truth, prompt=None):
    if response == "raise":
        raise RuntimeError("verifier bug")
    if response == "hang":
        time.sleep(3600)
    if response == "exit":
        os._exit(7)
    if response == "segfault":
        import ctypes

        ctypes.string_at(0)
    if response == "bad":
        return "not a score"
    return float(response == ground_truth)


@register_verifier("test_echo_prompt")
def echo_prompt(response, ground_truth, prompt=None):
    return (1.0 if prompt == "P" else 0.0), f"prompt={prompt}"


def _row(resp, gt="ok", ds="test_hostile", **kw):
    return {"response": resp, "dataset": ds, "ground_truth": gt, **kw}


def test_failures_score_zero_and_the_run_goes_on():
    kinds = ["ok", "raise", "ok", "hang", "ok", "exit", "segfault", "bad", "ok", "nope"]
    t0 = time.monotonic()
    res = score_rows([_row(k) for k in kinds], workers=2, timeout=1.0)
    assert time.monotonic() - t0 < 15
    assert [r.score for r in res] == [1.0, 0, 1.0, 0, 1.0, 0, 0, 0, 1.0, 0]
    assert "RuntimeError: verifier bug" in res[1].reason
    assert res[3].reason.startswith("timeout")
    assert res[5].reason.startswith("crash") and "7" in res[5].reason
    assert res[6].reason.startswith("crash")
    assert res[7].reason.startswith("error")
    assert res[9].reason is None
    assert (res.n_errors, res.n_timeouts, res.n_crashes) == (2, 1, 2)


def test_order_preserved_with_many_rows():
    rows = [_row(str(i), gt=str(i if i % 3 else -1)) for i in range(500)]
    res = score_rows(rows, workers=2)
    assert [r.score for r in res] == [0.0 if i % 3 == 0 else 1.0 for i in range(500)]


def test_weights_multiplier_and_prompt():
    row = {"response": "The answer is 12.", "dataset": ["gsm8k", "string_match"],
           "ground_truth": ["#### 12", "12"]}
    # gsm8k 1, string_match 0: weighted mean (3*1 + 1*0) / 4 = 0.75, times 10
    res = score_rows([row], weights={"gsm8k": 3.0}, multiplier=10.0, workers=1)
    assert res[0].score == pytest.approx(7.5)
    assert "string_match" in res[0].reason
    res = score_rows([row, dict(row, ground_truth='["#### 12", "The answer is 12"]')], workers=1)
    assert [r.score for r in res] == [0.5, 1.0]
    res = score_rows([_row("x", ds="test_echo_prompt", prompt="P")], workers=1)
    assert res[0].score == 1.0 and res[0].reason == "prompt=P"


def test_bad_rows_and_unknown_names_fail_before_work():
    with pytest.raises(UnknownVerifierError):
        score_rows([_row("ok", ds="no_such_verifier")], workers=1)
    with pytest.raises(ValueError, match="row 1: missing field 'ground_truth'"):
        score_rows([_row("ok"), {"response": "x", "dataset": "gsm8k"}], workers=1)
    with pytest.raises(ValueError, match="2 names"):
        score_rows([{"response": "x", "dataset": ["gsm8k", "f1"], "ground_truth": "1"}], workers=1)


def test_scorer_reuses_workers_and_survives_crashes():
    with Scorer(workers=2, timeout=1.0) as s:
        first = s.score([_row("ok"), _row("exit"), _row("ok")])
        pids = {w.proc.pid for w in s._pool}
        second = s.score([_row("ok")] * 4)
        assert [r.score for r in first] == [1.0, 0.0, 1.0]
        assert [r.score for r in second] == [1.0] * 4
        assert {w.proc.pid for w in s._pool} == pids  # no restart without a failure


def test_inline_mode():
    res = score_rows([_row("ok"), _row("raise")], workers=0)
    assert [r.score for r in res] == [1.0, 0.0] and res.n_errors == 1
