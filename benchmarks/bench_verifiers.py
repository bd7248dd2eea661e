"""Rows per second for each verifier through the parallel scorer, next to the bare call.

    python benchmarks/bench_verifiers.py [--workers N] [--verifiers code,gsm8k,...]

Data: ../shared/conformance (GSM8K reference solutions, MATH-500 solutions, IFEval GPT-4
responses) and generated programs with asserts for ``code``. "cold" is ``score_rows`` end
to end with the default worker count (process start and per-process warm-up included);
"warm" is a kept ``Scorer`` pool (as in the RLVR loop); "bare" is the library/verifier
function called in a loop in this one process; ratio = warm / bare; the target applies
to warm.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from posttrain.verifiers import Scorer, UnknownVerifierError, get_verifier, score_rows

ROOT = Path(__file__).resolve().parents[1]
CONFORMANCE = ROOT / ".." / "shared" / "conformance"


def _jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def gsm8k_rows() -> list[dict]:
    return [{"response": d["answer"], "dataset": "gsm8k", "ground_truth": d["answer"]}
            for d in _jsonl(CONFORMANCE / "gsm8k" / "test.jsonl")]


def math_rows() -> list[dict]:
    return [{"response": d["solution"], "dataset": "math", "ground_truth": d["answer"]}
            for d in _jsonl(CONFORMANCE / "math500" / "test.jsonl")]


def ifeval_rows() -> list[dict]:
    inputs = {d["prompt"]: d for d in _jsonl(CONFORMANCE / "ifeval" / "input_data.jsonl")}
    rows = []
    for r in _jsonl(CONFORMANCE / "ifeval" / "input_response_data_gpt4_20231107_145030.jsonl"):
        d = inputs.get(r["prompt"])
        if d is None:
            continue
        gt = {"instruction_id_list": d["instruction_id_list"], "kwargs": d["kwargs"]}
        rows.append({"response": r["response"], "dataset": "ifeval", "ground_truth": gt, "prompt": r["prompt"]})
    return rows


def code_rows(n: int = 200) -> list[dict]:
    rows = []
    for i in range(n):
        prog = f"```python\ndef f(x):\n    return x * {i} + {i % 7}\n```"
        tests = [f"assert f({k}) == {k * i + i % 7}" for k in range(3)]
        if i % 10 == 0:
            tests[0] = "assert f(0) == -1"  # some failures
        rows.append({"response": prog, "dataset": "code", "ground_truth": tests})
    return rows


def bare_math(rows):
    from math_verify import parse, verify

    for r in rows:
        verify(parse("\\boxed{" + r["ground_truth"] + "}"), parse(r["response"]))


def bare_call(name):
    def run(rows):
        fn = get_verifier(name)
        for r in rows:
            fn(r["response"], r["ground_truth"], prompt=r.get("prompt"))
    return run


def _rate(fn, rows, repeat=1) -> float:
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn(rows)
    return len(rows) * repeat / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=None, help="default: CPU count")
    ap.add_argument("--verifiers", default="gsm8k,math,ifeval,code",
                    help="comma-separated subset to run (default: %(default)s)")
    args = ap.parse_args(argv)
    wanted = set(args.verifiers.split(","))
    workers = args.workers or os.cpu_count()
    if not CONFORMANCE.is_dir():
        print(f"conformance data not found at {CONFORMANCE}", file=sys.stderr)
        return 1
    cases = [
        ("gsm8k", gsm8k_rows, bare_call("gsm8k"), "verify_gsm8k", 200),
        ("math", math_rows, bare_math, "math_verify parse+verify", 200),
        ("ifeval", ifeval_rows, bare_call("ifeval"), "verify_ifeval", 200),
        ("code", code_rows, bare_call("code"), "verify_code, one sandbox", 8),
    ]
    print(f"workers={workers} cpus={os.cpu_count()}")
    print(f"{'verifier':<8} {'rows':>5} {'cold rows/s':>12} {'warm rows/s':>12} {'bare rows/s':>12} {'ratio':>6} {'target':>7}")
    for name, make_rows, bare, bare_name, target in cases:
        if name not in wanted:
            continue
        try:
            get_verifier(name)
        except UnknownVerifierError as e:
            print(f"{name:<8} skipped: {e}")
            continue
        rows = make_rows()
        t0 = time.perf_counter()
        scored = score_rows(rows, workers=workers)
        cold = len(rows) / (time.perf_counter() - t0)
        with Scorer(workers=workers) as scorer:  # a kept pool, as the RLVR loop uses it
            scorer.score(rows[: workers * 4])
            t0 = time.perf_counter()
            scored = scorer.score(rows)
            rate = len(rows) / (time.perf_counter() - t0)
        mean = sum(r.score for r in scored) / len(scored)
        bare_rate = _rate(bare, rows) if bare else float("nan")
        ratio = rate / bare_rate if bare else float("nan")
        ok = "ok" if rate >= target else "SLOW"
        print(f"{name:<8} {len(rows):>5} {cold:>12.1f} {rate:>12.1f} {bare_rate:>12.1f} {ratio:>6.2f} {target:>5}/s {ok}  "
              f"{bare_name} (mean score {mean:.3f}, failed {scored.n_failed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
