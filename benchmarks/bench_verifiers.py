"""Rows per second for each verifier through the parallel scorer, next to the bare call.

    python benchmarks/bench_verifiers.py [--workers N] [--verifiers code,gsm8k,...]

A/B against an older checkout of this repository, in one run (e.g. the code before
issue 15: ``git archive c111d1e | tar -x -C /tmp/old``)::

    python benchmarks/bench_verifiers.py --against /tmp/old [--rounds 5]

runs each verifier's warm pool in fresh processes, alternating the old code and this
one, ``--rounds`` times each, and prints the median rows/s and the CPU time per row of
all the processes involved (the scoring process, its workers and their children, such as
the code sandbox servers, read from /proc), with new/old ratios. CPU per row barely
moves with the machine's load; rows/s does.

Data: ../shared/conformance (GSM8K reference solutions, MATH-500 solutions, IFEval GPT-4
responses) and generated programs with asserts for ``code``. "cold" is ``score_rows`` end
to end with the default worker count (process start and per-process warm-up included);
"warm" is a kept ``Scorer`` pool (as in the RLVR loop); "bare" is the library/verifier
function called in a loop in this one process (warm and bare: the best of the runs made
in about a second); ratio = warm / bare; the target applies to warm.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

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


CASES = [
    ("gsm8k", gsm8k_rows, bare_call("gsm8k"), "verify_gsm8k", 200),
    ("math", math_rows, bare_math, "math_verify parse+verify", 200),
    ("ifeval", ifeval_rows, bare_call("ifeval"), "verify_ifeval", 200),
    ("code", code_rows, bare_call("code"), "verify_code, one sandbox", 8),
]


def _rate(fn, rows, seconds: float = 1.0) -> float:
    """Rows/s of ``fn(rows)``: the best of the runs made in about ``seconds`` (at least
    one), so that one unlucky run on a busy machine does not decide the figure."""
    best, start = 0.0, time.perf_counter()
    while best == 0.0 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn(rows)
        best = max(best, len(rows) / (time.perf_counter() - t0))
    return best


def _tree_cpu(pids: list[int]) -> float:
    """CPU seconds used so far by ``pids`` and every live process below them (each one's
    user + system time, plus that of its children already reaped)."""
    total = 0.0
    for pid in pids:
        try:
            top = psutil.Process(pid)
            tree = [top, *top.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in tree:
            try:
                t = proc.cpu_times()
            except psutil.NoSuchProcess:  # ended since the walk: its time went to its parent
                continue
            total += t.user + t.system + t.children_user + t.children_system
    return total


def child_measure(name: str, workers: int, seconds: float) -> dict:
    """Warm-pool rows/s and CPU per row (this process + its workers' process trees) of one
    verifier: the rows scored again and again for about ``seconds``."""
    rows = {c[0]: c[1] for c in CASES}[name]()
    with Scorer(workers=workers) as scorer:
        scorer.score(rows)  # warm: pool forked, sandboxes started, modules imported
        pids = [w.proc.pid for w in scorer._pool]
        t_cpu0 = os.times()
        w_cpu0 = _tree_cpu(pids)
        t0 = time.perf_counter()
        n = 0
        while n == 0 or time.perf_counter() - t0 < seconds:
            res = scorer.score(rows)
            n += len(rows)
        wall = time.perf_counter() - t0
        w_cpu = _tree_cpu(pids) - w_cpu0
        t_cpu1 = os.times()
    own = (t_cpu1.user + t_cpu1.system) - (t_cpu0.user + t_cpu0.system)
    import posttrain.verifiers

    sandboxed = None
    if name == "code":  # bubblewrap or resource limits only: both sides must run the same way
        from posttrain.verifiers.code.sandbox import Sandbox

        sb = Sandbox()
        sb.run("x = 1", tests=["assert x == 1"])
        sandboxed = sb.sandboxed
        sb.close()
    return {"sandboxed": sandboxed, "code": str(Path(posttrain.verifiers.__file__).parent), "rows_per_s": n / wall, "cpu_us_per_row": (own + w_cpu) / n * 1e6, "failed": res.n_failed,
            "mean_score": sum(r.score for r in res) / len(res)}


def _old_tree(old: Path, into: Path) -> Path:
    """A folder to put on PYTHONPATH so that ``posttrain`` and ``posttrain.verifiers`` are the
    old checkout's (the installed package maps ``verifiers/`` to ``posttrain.verifiers``)."""
    pkg = into / "posttrain"
    pkg.mkdir()
    for entry in (old / "posttrain").iterdir():
        (pkg / entry.name).symlink_to(entry)
    # A copy, not a link: older sandboxes bind only the real folder of their server script
    # into bubblewrap, and must find it under the path they were imported from.
    shutil.copytree(old / "verifiers", pkg / "verifiers", ignore=shutil.ignore_patterns("__pycache__"))
    return into


def ab(args, wanted: list[str]) -> int:
    old = Path(args.against).resolve()
    if not (old / "verifiers" / "scoring.py").is_file():
        print(f"--against {old}: not a checkout of this repository (no verifiers/scoring.py)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="bench-verifiers-old-") as tmp:
        envs = {"old": dict(os.environ, PYTHONPATH=str(_old_tree(old, Path(tmp)))),
                "new": dict(os.environ, PYTHONPATH="")}
        workers = args.workers or len(os.sched_getaffinity(0))  # the same on both sides
        print(f"A/B: old = {old}, new = {ROOT}; workers={workers}, {args.rounds} rounds")
        for name in wanted:
            got: dict[str, list[dict]] = {"old": [], "new": []}
            for r in range(args.rounds):
                for side in (("old", "new") if r % 2 == 0 else ("new", "old")):
                    cmd = [sys.executable, __file__, "--child", name, "--seconds", str(args.seconds),
                           "--workers", str(workers)]
                    out = subprocess.run(cmd, env=envs[side], capture_output=True, text=True, check=True).stdout
                    got[side].append(json.loads(out.strip().splitlines()[-1]))
                    want = Path(tmp) / "posttrain" / "verifiers" if side == "old" else ROOT / "verifiers"
                    assert got[side][-1]["code"] == str(want), (side, got[side][-1]["code"])
            med = {side: {k: statistics.median(m[k] for m in got[side]) for k in ("rows_per_s", "cpu_us_per_row")}
                   for side in got}
            for side in ("old", "new"):
                assert got[side][0]["mean_score"] == got["old"][0]["mean_score"], (name, got)
                assert got[side][0]["sandboxed"] == got["new"][0]["sandboxed"], (name, got)
            print(json.dumps({
                "verifier": name, "old_rows_per_s": round(med["old"]["rows_per_s"], 1),
                "new_rows_per_s": round(med["new"]["rows_per_s"], 1),
                "rows_per_s_new_over_old": round(med["new"]["rows_per_s"] / med["old"]["rows_per_s"], 3),
                "old_cpu_us_per_row": round(med["old"]["cpu_us_per_row"], 1),
                "new_cpu_us_per_row": round(med["new"]["cpu_us_per_row"], 1),
                "cpu_new_over_old": round(med["new"]["cpu_us_per_row"] / med["old"]["cpu_us_per_row"], 3),
                "rounds": args.rounds, "mean_score": got["new"][0]["mean_score"],
                "sandboxed": got["new"][0]["sandboxed"]}), flush=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=None, help="default: CPU count")
    ap.add_argument("--verifiers", default="gsm8k,math,ifeval,code",
                    help="comma-separated subset to run (default: %(default)s)")
    ap.add_argument("--against", metavar="DIR", help="A/B against the checkout in DIR (see above)")
    ap.add_argument("--rounds", type=int, default=5, help="A/B: processes per side")
    ap.add_argument("--seconds", type=float, default=2.0, help="A/B: scoring time per process")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child_measure(args.child, args.workers or os.cpu_count(), args.seconds)))
        return 0
    if not CONFORMANCE.is_dir():
        print(f"conformance data not found at {CONFORMANCE}", file=sys.stderr)
        return 1
    if args.against:
        return ab(args, [c[0] for c in CASES if c[0] in args.verifiers.split(",")])
    wanted = set(args.verifiers.split(","))
    workers = args.workers or os.cpu_count()
    cases = CASES
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
            rate = _rate(scorer.score, rows)
        mean = sum(r.score for r in scored) / len(scored)
        bare_rate = _rate(bare, rows) if bare else float("nan")
        ratio = rate / bare_rate if bare else float("nan")
        ok = "ok" if rate >= target else "SLOW"
        print(f"{name:<8} {len(rows):>5} {cold:>12.1f} {rate:>12.1f} {bare_rate:>12.1f} {ratio:>6.2f} {target:>5}/s {ok}  "
              f"{bare_name} (mean score {mean:.3f}, failed {scored.n_failed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
