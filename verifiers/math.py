"""Competition-math answer equivalence with the ``math-verify`` library.

The response is parsed with math_verify's default extraction (the last ``\\boxed{}``,
LaTeX, plain expressions); the ground truth is wrapped in ``\\boxed{...}`` unless it
already carries ``$``/``\\boxed``. math_verify's timeouts use SIGALRM, which works only in
a process's main thread: the parallel scorer runs verifiers in worker processes' main
threads, where they work; when called from another thread the timeouts are switched off.
"""
from __future__ import annotations

import threading

from math_verify import parse, verify

from .registry import ground_truth_list

PARSE_TIMEOUT = 5
VERIFY_TIMEOUT = 5


def _timeouts() -> tuple[int | None, int | None]:
    if threading.current_thread() is threading.main_thread():
        return PARSE_TIMEOUT, VERIFY_TIMEOUT
    return None, None


def _parse_gold(answer: str, parse_timeout):
    s = answer.strip()
    if "\\boxed" in s or s.startswith("$") or s.startswith("\\("):
        return parse(s, parsing_timeout=parse_timeout)
    gold = parse("\\boxed{" + s + "}", parsing_timeout=parse_timeout)
    if not gold:
        gold = parse("$" + s + "$", parsing_timeout=parse_timeout)
    return gold


def _golds(ground_truth) -> list[str]:
    return [str(v) for v in ground_truth_list(ground_truth)]


def verify_math(response: str, ground_truth, prompt: str | None = None):
    """1.0 if the response's final answer equals the ground truth (or any in a list)."""
    pt, vt = _timeouts()
    pred = parse(response, parsing_timeout=pt)
    if not pred:
        return 0.0, "no answer found in response"
    for g in _golds(ground_truth):
        gold = _parse_gold(g, pt)
        if not gold:
            continue
        if verify(gold, pred, timeout_seconds=vt):
            return 1.0
    return 0.0, f"answer {str(pred[-1])[:60]!r} != {str(ground_truth)[:60]!r}"
