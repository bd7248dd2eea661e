"""Scorer throughput when 10% of the rows hit a faulty verifier, against the same rows with
no faults, in the same run: what a raising, leaking, worker-killing or hanging
third-party verifier costs the verifier pool.

The verifiers are registered here as a plugin would register them
(``posttrain.verifiers.registry.register_verifier``). Every call first does ``--cost-ms``
of pure-Python work (a stand-in for ``math_verify``'s parsing); a faulty call then
raises, keeps ``--leak-mb`` of memory for the rest of the worker's life, ends its worker
with ``os._exit`` (as a segfault or the OOM killer would), or sleeps past the scorer's
``--timeout``. Each such row must score 0 with its reason and be counted, and every other
row must score as without faults; the script checks both.

    .venv/bin/python benchmarks/bench_verifier_faults.py [--rows 1000] [--workers 2]

Prints one JSON line per fault kind: rows/s with the faults and without them (measured
beside each other, best of ``--repeats``), and their ratio (1.0 = faults cost nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import time

from posttrain.verifiers.registry import register_verifier
from posttrain.verifiers.scoring import Scorer

_LEAKED: list[bytes] = []
LEAK_MB = 5
COST_S = 0.002


def _work() -> None:
    end = time.perf_counter() + COST_S
    x = 0
    while time.perf_counter() < end:
        x += 1


@register_verifier("bench_ok")
def verify_ok(response: str, ground_truth, prompt=None) -> float:
    _work()
    return float(response.strip() == str(ground_truth))


@register_verifier("bench_faulty")
def verify_faulty(response: str, ground_truth, prompt=None) -> float:
    _work()
    kind = str(ground_truth)
    if kind == "raise":
        raise ValueError("the plugin's parser broke")
    if kind == "leak":
        _LEAKED.append(bytearray(LEAK_MB * 2**20))
        return 0.0
    if kind == "kill":
        os._exit(1)
    if kind == "hang":
        time.sleep(3600)
    return 0.0


def make_rows(n: int, fault: str | None, fraction: float) -> list[dict]:
    every = round(1 / fraction) if fault else 0
    rows = []
    for i in range(n):
        if every and i % every == every // 2:
            rows.append({"response": "1", "dataset": "bench_faulty", "ground_truth": fault})
        else:
            rows.append({"response": str(i % 7), "dataset": "bench_ok", "ground_truth": str(i % 5)})
    return rows


def measure(rows: list[dict], workers: int, timeout: float) -> tuple[float, object]:
    """Rows per second of one ``score`` call on a started pool (warmed up on a few rows)."""
    with Scorer(workers=workers, timeout=timeout) as scorer:
        scorer.start()
        scorer.score(rows[: 4 * workers])
        t = time.perf_counter()
        results = scorer.score(rows)
        return len(rows) / (time.perf_counter() - t), results


def main() -> None:
    global LEAK_MB, COST_S
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--fraction", type=float, default=0.1, help="share of rows whose verifier call is faulty")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cost-ms", type=float, default=2.0, help="work of every verifier call, in ms")
    ap.add_argument("--timeout", type=float, default=1.0, help="the scorer's per-call timeout, in s")
    ap.add_argument("--leak-mb", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kinds", default="raise,leak,kill,hang")
    args = ap.parse_args()
    LEAK_MB, COST_S = args.leak_mb, args.cost_ms / 1000

    clean_rows = make_rows(args.rows, None, args.fraction)
    for kind in args.kinds.split(","):
        rows = make_rows(args.rows, kind, args.fraction)
        # The fault-free peer is measured right beside each faulty run, best of the repeats.
        base = rate = 0.0
        for _ in range(1 if kind == "hang" else args.repeats):
            b, clean = measure(clean_rows, args.workers, args.timeout)
            r, res = measure(rows, args.workers, args.timeout)
            base, rate = max(base, b), max(rate, r)
        faulty = [i for i, r in enumerate(rows) if r["dataset"] == "bench_faulty"]
        # Each faulty row scores 0 with a reason; every other row scores as without faults.
        assert all(res[i].score == 0.0 for i in faulty), kind
        if kind != "leak":
            assert all(res[i].reason for i in faulty), kind
        others = [i for i in range(len(rows)) if rows[i]["dataset"] == "bench_ok"]
        assert all(res[i].score == clean[i].score for i in others), kind
        counted = {"raise": res.n_errors, "kill": res.n_crashes, "hang": res.n_timeouts, "leak": len(faulty)}[kind]
        assert counted == len(faulty), (kind, counted, len(faulty))
        print(json.dumps({"faults": kind, "rows": args.rows, "faulty_rows": len(faulty), "workers": args.workers,
                          "clean_rows_per_s": round(base, 1), "rows_per_s": round(rate, 1),
                          "ratio": round(rate / base, 3), "errors": res.n_errors, "crashes": res.n_crashes,
                          "timeouts": res.n_timeouts}), flush=True)

if __name__ == "__main__":
    main()
