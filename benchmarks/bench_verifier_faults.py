"""What 10% faulty verifier calls cost: an RLVR-like loop's step rate, and the scorer's
own throughput, each against the same rows with no faults, in the same run.

The verifiers are registered here as a plugin would register them
(``posttrain.verifiers.registry.register_verifier``). Every call first does ``--cost-ms``
of pure-Python work (a stand-in for ``math_verify``'s parsing); a faulty call then
raises, keeps ``--leak-mb`` of memory for the rest of the worker's life, ends its worker
with ``os._exit`` (as a segfault or the OOM killer would), or sleeps past the scorer's
``--timeout``. Each such row must score 0 with its reason and be counted, and every other
row must score as without faults; the script checks both.

Step rate (``--mode steps``, what the issue asks): the loop the RLVR stage runs
(``posttrain/stages/rlvr/source.py``): generate a batch (``--generate-s``, a sleep: the
GPU works, this process waits), submit its ``--rows-per-step`` rows to the scorer, compute
the reference log-probs meanwhile (``--overlap-s``, a sleep), wait for the scores, update
the policy (``--update-s``, a sleep). Throughput (``--mode throughput``): one ``score``
call on ``--rows`` rows, the scorer alone.

    .venv/bin/python benchmarks/bench_verifier_faults.py [--mode steps|throughput|both]

Prints one JSON line per fault kind and mode: the rate with the faults and without them
(measured beside each other; best of ``--repeats`` for throughput) and their ratio (1.0 =
the faults cost nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import time

from posttrain.verifiers.registry import register_verifier
from posttrain.verifiers.scoring import Scorer, ScoreResults

_LEAKED: list[bytes] = []
LEAK_MB = 5
COST_S = 0.002


def _work() -> None:
    end = time.perf_counter() + COST_S
    x = 0
    while time.perf_counter() < end:
        x += 1


@register_verifier("bench")
def verify_bench(response: str, ground_truth, prompt=None) -> float:
    """Exact match; a ground truth ``fault:KIND`` makes the call misbehave instead (one
    verifier for healthy and faulty rows, as a real verifier hangs on some inputs)."""
    _work()
    gt = str(ground_truth)
    kind = gt[6:] if gt.startswith("fault:") else None
    if kind == "raise":
        raise ValueError("the plugin's parser broke")
    if kind == "leak":
        _LEAKED.append(bytearray(LEAK_MB * 2**20))
        return 0.0
    if kind == "kill":
        os._exit(1)
    if kind == "hang":
        time.sleep(3600)
    return float(response.strip() == gt)


def make_rows(n: int, fault: str | None, fraction: float) -> list[dict]:
    every = round(1 / fraction) if fault else 0
    rows = []
    for i in range(n):
        if every and i % every == every // 2:
            rows.append({"response": "1", "dataset": "bench", "ground_truth": f"fault:{fault}"})
        else:
            rows.append({"response": str(i % 7), "dataset": "bench", "ground_truth": str(i % 5)})
    return rows


def _faulty(row: dict) -> bool:
    return row["ground_truth"].startswith("fault:")


def measure(rows: list[dict], args) -> tuple[float, object]:
    """Rows per second of one ``score`` call on a started pool (warmed up on a few rows)."""
    with Scorer(workers=args.workers, timeout=args.timeout, spare_after=args.spare_after).start() as scorer:
        scorer.score(rows[: 4 * args.workers])
        t = time.perf_counter()
        results = scorer.score(rows)
        return len(rows) / (time.perf_counter() - t), results


def measure_steps(rows: list[dict], args) -> tuple[float, object]:
    """Steps per second of the RLVR-like loop over ``rows`` (``--rows-per-step`` a step),
    and the results of all its steps (one ScoreResults, in row order)."""
    n = args.rows_per_step
    steps = [rows[i:i + n] for i in range(0, len(rows), n)]
    results = ScoreResults()
    with Scorer(workers=args.workers, timeout=args.timeout, spare_after=args.spare_after).start() as scorer:
        scorer.score(rows[: 4 * args.workers])
        t = time.perf_counter()
        for batch in steps:
            time.sleep(args.generate_s)       # the engine generates the batch
            future = scorer.submit(batch)     # scoring starts ...
            time.sleep(args.overlap_s)        # ... while the reference log-probs are computed
            res = future.result()
            time.sleep(args.update_s)         # the policy update
            results.extend(res)
            results.n_errors += res.n_errors
            results.n_timeouts += res.n_timeouts
            results.n_crashes += res.n_crashes
        return len(steps) / (time.perf_counter() - t), results


def check(kind: str, rows: list[dict], res, clean) -> None:
    """Each faulty row scores 0 with a reason and is counted; every other row as without faults."""
    faulty = [i for i, r in enumerate(rows) if _faulty(r)]
    assert all(res[i].score == 0.0 for i in faulty), kind
    if kind != "leak":
        assert all(res[i].reason for i in faulty), kind
    others = [i for i in range(len(rows)) if not _faulty(rows[i])]
    assert all(res[i].score == clean[i].score for i in others), kind
    counted = {"raise": res.n_errors, "kill": res.n_crashes, "hang": res.n_timeouts, "leak": len(faulty)}[kind]
    assert counted == len(faulty), (kind, counted, len(faulty))


def main() -> None:
    global LEAK_MB, COST_S
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("steps", "throughput", "both"), default="both")
    ap.add_argument("--rows", type=int, default=1000, help="rows of the throughput run")
    ap.add_argument("--steps", type=int, default=10, help="steps of the RLVR-like loop")
    ap.add_argument("--rows-per-step", type=int, default=64)
    ap.add_argument("--generate-s", type=float, default=2.0, help="generation time per step (a sleep)")
    ap.add_argument("--overlap-s", type=float, default=0.3,
                    help="work done while the batch is scored (reference log-probs; a sleep)")
    ap.add_argument("--update-s", type=float, default=0.5, help="policy update time per step (a sleep)")
    ap.add_argument("--fraction", type=float, default=0.1, help="share of rows whose verifier call is faulty")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cost-ms", type=float, default=2.0, help="work of every verifier call, in ms")
    ap.add_argument("--timeout", type=float, default=1.0, help="the scorer's per-call timeout, in s")
    ap.add_argument("--spare-after", type=float, default=None,
                    help="seconds after which a running call's worker is set aside for a spare "
                         "(default: the scorer's, min(1 s, timeout / 10))")
    ap.add_argument("--leak-mb", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3, help="throughput runs per kind (best of)")
    ap.add_argument("--kinds", default="raise,leak,kill,hang")
    args = ap.parse_args()
    LEAK_MB, COST_S = args.leak_mb, args.cost_ms / 1000

    modes = ("steps", "throughput") if args.mode == "both" else (args.mode,)
    for mode in modes:
        n = args.steps * args.rows_per_step if mode == "steps" else args.rows
        clean_rows = make_rows(n, None, args.fraction)
        for kind in args.kinds.split(","):
            rows = make_rows(n, kind, args.fraction)
            # The fault-free peer is measured right beside each faulty run.
            base = rate = 0.0
            for _ in range(1 if mode == "steps" else args.repeats):
                run = measure_steps if mode == "steps" else measure
                b, clean = run(clean_rows, args)
                r, res = run(rows, args)
                base, rate = max(base, b), max(rate, r)
            check(kind, rows, res, clean)
            unit = "steps_per_s" if mode == "steps" else "rows_per_s"
            print(json.dumps({"mode": mode, "faults": kind, "rows": n, "faulty_rows": res.n_failed or
                              sum(map(_faulty, rows)), "workers": args.workers,
                              "timeout": args.timeout, f"clean_{unit}": round(base, 3), unit: round(rate, 3),
                              "ratio": round(rate / base, 3), "errors": res.n_errors, "crashes": res.n_crashes,
                              "timeouts": res.n_timeouts}), flush=True)


if __name__ == "__main__":
    main()
