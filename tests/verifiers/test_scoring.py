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


# -- the non-blocking form, the eager pool and its size ---------------------------------

@register_verifier("test_wait_for_file")
def wait_for_file(response, ground_truth, prompt=None):
    """Scores 1 once the file named by the ground truth exists (gives up after 20 s)."""
    deadline = time.monotonic() + 20
    while not os.path.exists(ground_truth):
        if time.monotonic() > deadline:
            return 0.0, "file never appeared"
        time.sleep(0.01)
    return 1.0


def test_submit_returns_at_once_and_scores_while_the_caller_works(tmp_path):
    gate = tmp_path / "gate"
    rows = [_row("a", gt=str(gate), ds="test_wait_for_file"), _row("ok"), _row("ok"), _row("no")]
    with Scorer(workers=2, timeout=30).start() as s:
        future = s.submit(rows)
        # The first row cannot finish before the caller does its next piece of work (here:
        # creating the file it waits for), so a blocking submit would never get here.
        assert not future.done()
        gate.write_text("")
        deadline = time.monotonic() + 20
        while not future.done() and time.monotonic() < deadline:  # the caller's own work
            sum(i * i for i in range(10_000))
        assert future.done()  # finished without anyone waiting on result()
        res = future.result()
    assert [r.score for r in res] == [1.0, 1.0, 1.0, 0.0]


def test_a_hanging_verifier_in_a_submitted_batch_costs_only_its_row():
    batch = [_row("ok"), _row("hang"), _row("ok"), _row("no"), _row("ok")]
    with Scorer(workers=2, timeout=1.0).start() as s:
        t0 = time.monotonic()
        first = s.submit(batch)
        second = s.submit([_row("ok"), _row("no")])  # queued behind the first, kept in order
        res, res2 = first.result(), second.result()
        elapsed = time.monotonic() - t0
    # The hanging call (it sleeps an hour) is abandoned after its 1 s timeout; the rows
    # after it on the same worker are scored elsewhere.
    assert elapsed < 15
    assert [r.score for r in res] == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert res[1].reason.startswith("timeout") and res.n_timeouts == 1 and res.n_failed == 1
    assert [r.reason for i, r in enumerate(res) if i != 1] == [None] * 4
    assert [r.score for r in res2] == [1.0, 0.0] and res2.n_failed == 0


def test_submit_checks_rows_before_any_work():
    with Scorer(workers=1) as s:
        with pytest.raises(UnknownVerifierError):
            s.submit([_row("ok", ds="no_such_verifier")])
        with pytest.raises(ValueError, match="row 0: missing field 'response'"):
            s.submit([{"dataset": "gsm8k", "ground_truth": "1"}])
        assert s._pool == []  # nothing was started for them


def test_start_forks_the_whole_pool_before_any_batch():
    with Scorer(workers=3, timeout=5) as s:
        assert s._pool == []
        s.start()
        pids = [w.proc.pid for w in s._pool]
        assert len(pids) == 3 and all(w.proc.is_alive() for w in s._pool)
        assert [r.score for r in s.score([_row("ok")] * 7)] == [1.0] * 7
        assert [w.proc.pid for w in s._pool] == pids  # the batch used the forked pool


def test_default_worker_count_is_per_machine(monkeypatch):
    from posttrain.verifiers.scoring import default_workers

    assert default_workers(cpus=16, local_world_size=1) == 16
    assert default_workers(cpus=16, local_world_size=8) == 2   # 8 ranks x 2 = the 16 cores
    assert default_workers(cpus=16, local_world_size=3) == 5   # 16 // 3
    assert default_workers(cpus=2, local_world_size=8) == 1    # never 0
    cpus = len(os.sched_getaffinity(0))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cpus))
    assert Scorer().workers == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert Scorer().workers == cpus
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert Scorer().workers == cpus


@register_verifier("test_exact")
def exact(response, ground_truth, prompt=None):
    return float(response == ground_truth)


def test_reasoning_format_reaches_the_verifier_call():
    rows = [_row("<think>2 + 2 is 4</think>4", gt="4", ds="test_exact"),
            _row("<think>still thinking", gt="4", ds="test_exact")]
    # Default: the verifier judges the final answer after </think>; unfinished thinking is 0.
    with Scorer(workers=1).start() as s:
        res = s.submit(rows).result()
    assert [r.score for r in res] == [1.0, 0.0] and "unfinished" in res[1].reason
    # Without it the verifier sees the raw text, which is not "4".
    res = score_rows(rows, workers=1, reasoning_format=False)
    assert [r.score for r in res] == [0.0, 0.0] and res[1].reason is None
    res = score_rows(rows, workers=0, reasoning_format=False)  # the in-process path too
    assert [r.score for r in res] == [0.0, 0.0]
