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


# -- faults under load: hangs side by side, leaks recycled, crashes named exactly --------

@register_verifier("test_sleepy")
def sleepy(response, ground_truth, prompt=None):
    """``sleep:S`` sleeps S seconds then passes; anything else passes at once."""
    if response.startswith("sleep:"):
        time.sleep(float(response[6:]))
    return 1.0, str(os.getpid())


def test_hangs_run_side_by_side_so_a_batch_waits_about_one_timeout():
    # 6 hangs on 2 workers with a 3 s timeout: one worker per hang at a time would take
    # 6 / 2 x 3 s = 9 s; with the stuck workers set aside after 0.2 s and spares in their
    # place all six time out together, ~3.2 s after the start (generous bound: 7 s).
    rows = [_row("hang" if i % 4 == 1 else "ok") for i in range(24)]
    with Scorer(workers=2, timeout=3.0, spare_after=0.2).start() as s:
        t0 = time.monotonic()
        res = s.score(rows)
        elapsed = time.monotonic() - t0
        assert len(s._pool) == 2  # the pool keeps its size
    assert elapsed < 7.0, elapsed
    assert [r.score for r in res] == [0.0 if i % 4 == 1 else 1.0 for i in range(24)]
    assert res.n_timeouts == 6 and res.n_failed == 6
    assert all(res[i].reason.startswith("timeout") for i in range(1, 24, 4))


def test_without_spares_hangs_queue_behind_each_other():
    # The same kind of batch with max_spares=0: the two hangs on one worker's share wait
    # for each other (2 hangs per worker x 1 s each >= 2 s), which is what spares avoid.
    rows = [_row("hang"), _row("hang"), _row("hang"), _row("hang")]
    with Scorer(workers=2, timeout=1.0, spare_after=0.1, max_spares=0).start() as s:
        t0 = time.monotonic()
        res = s.score(rows)
        elapsed = time.monotonic() - t0
    assert elapsed >= 2.0 and res.n_timeouts == 4


def test_a_slow_call_that_finishes_keeps_its_score_and_its_worker_becomes_a_spare():
    rows = [_row("sleep:1.0", ds="test_sleepy")] + [_row(str(i), ds="test_sleepy") for i in range(7)]
    with Scorer(workers=1, timeout=10.0, spare_after=0.2).start() as s:
        first = s._pool[0].proc.pid
        s.score([_row("warm", ds="test_sleepy")])  # its first call of the verifier is done
        t0 = time.monotonic()
        res = s.score(rows)
        elapsed = time.monotonic() - t0
        # The slow call's worker was set aside and a spare scored the 7 rows behind it; the
        # slow call still counts (1.0) and its worker now waits as a spare.
        assert [r.score for r in res] == [1.0] * 8 and res.n_failed == 0
        assert res[0].reason == str(first)
        assert {r.reason for r in res[1:]} == {str(s._pool[0].proc.pid)} != {str(first)}
        assert [w.proc.pid for w in s._workers.reserve] == [first]
        # The next slow call reuses that spare instead of forking a new process.
        res = s.score([_row("sleep:0.6", ds="test_sleepy"), _row("x", ds="test_sleepy")])
        assert res[1].reason == str(first)
    assert elapsed < 5.0


def test_a_workers_first_call_of_a_verifier_is_never_set_aside():
    # A first call may be slow for good reasons (imports, loading data); a fresh spare would
    # only pay that again. So the slow first call keeps its worker, and the row behind it
    # waits for it on the same worker: one pid, no spare.
    with Scorer(workers=1, timeout=10.0, spare_after=0.1).start() as s:
        res = s.score([_row("sleep:0.6", ds="test_sleepy"), _row("x", ds="test_sleepy")])
        assert res[0].reason == res[1].reason == str(s._pool[0].proc.pid)
        assert s._workers.reserve == [] and s._workers.detached == []
        # Once warm, the same slow call is set aside and a spare scores the row behind it.
        res = s.score([_row("sleep:0.6", ds="test_sleepy"), _row("x", ds="test_sleepy")])
        assert res[0].reason != res[1].reason and len(s._workers.reserve) == 1


@register_verifier("test_leaky")
def leaky(response, ground_truth, prompt=None):
    """Keeps 20 MB (touched, so resident) for the rest of the worker's life."""
    _KEPT.append(b"x" * (20 << 20))
    return 1.0, str(os.getpid())


_KEPT: list = []


def test_a_worker_past_its_memory_cap_is_replaced_and_its_calls_still_score():
    rows = [_row(str(i), ds="test_leaky") for i in range(10)]
    # Cap 50 MB, 20 MB per call: a worker retires after its third call (60 MB > 50 MB), so
    # the 10 calls run in ceil(10 / 3) = 4 workers, every result kept.
    with Scorer(workers=1, timeout=30, worker_memory_mb=50).start() as s:
        res = s.score(rows)
    pids = [r.reason for r in res]
    assert [r.score for r in res] == [1.0] * 10 and res.n_failed == 0
    assert [pids.count(p) for p in dict.fromkeys(pids)] == [3, 3, 3, 1]
    # Without a cap one worker does them all.
    with Scorer(workers=1, timeout=30, worker_memory_mb=None).start() as s:
        assert len({r.reason for r in s.score(rows)}) == 1


def test_a_crash_is_pinned_on_its_own_call_with_one_worker():
    # One worker, one batch: the results before the crash may still be in the dead
    # worker's buffer; they are scored again, and only row 2 is the crash.
    rows = [_row("ok"), _row("no"), _row("exit"), _row("ok"), _row("raise"), _row("ok")]
    res = score_rows(rows, workers=1, timeout=5)
    assert [r.score for r in res] == [1.0, 0.0, 0.0, 1.0, 0.0, 1.0]
    assert res[2].reason.startswith("crash") and (res.n_crashes, res.n_errors) == (1, 1)
    assert res[1].reason is None and res[4].reason.startswith("error")


def test_scorer_rejects_bad_fault_settings():
    with pytest.raises(ValueError, match="spare_after"):
        Scorer(workers=1, spare_after=0)
    with pytest.raises(ValueError, match="max_spares"):
        Scorer(workers=1, max_spares=-1)
    with pytest.raises(ValueError, match="worker_memory_mb"):
        Scorer(workers=1, worker_memory_mb=0)
