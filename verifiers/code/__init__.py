"""``code`` verifier: run the response's Python against tests in a sandbox.

The program is the response's last fenced Python block (```python ... ``` or a bare
``` ... ```), else the whole response. The ground truth is either

* a list of test statements (usually ``assert``s), or a JSON string of one: the program's
  top level (its definitions) runs, then the tests run in order in the program's
  namespace, each within its own time limit; score = fraction of tests that pass. A test
  that hangs, crashes its process or exhausts the memory limit fails alone (the tests
  after it run on a fresh run of the definitions: ``_server.py``);
* a string test program (stdin/stdout style checks, or asserts in one script): appended
  to the program and run as one script within one time limit; 1.0 if it exits with
  status 0, else 0;
* a dict ``{"tests": [...]}`` or ``{"program": "..."}``, optionally with ``timeout``
  (seconds per test, or for the whole test program; default 5), ``total_timeout``
  (seconds for the program and all its tests together; default 8) and ``memory_mb``
  (default 1024).

The process-wide defaults of the two limits come from ``POSTTRAIN_CODE_TEST_TIMEOUT``
and ``POSTTRAIN_CODE_TOTAL_TIMEOUT`` (:func:`set_code_limits` sets them; like the
sandbox mode they reach the scoring workers through the environment). The default total
stays under the RLVR stage's default verifier timeout (10 s), so a row that reaches it
still scores the tests that passed.

The sandbox, its modes (``POSTTRAIN_CODE_SANDBOX``: ``auto``, ``bwrap``,
``rlimits_only``) and what it does and does not protect against are described in
:mod:`posttrain.verifiers.code.sandbox`.
"""
from __future__ import annotations

import json
import os
import re

from posttrain.errors import PosttrainError

from .sandbox import MODE_ENV, MODES, Sandbox, SandboxError, check_sandbox, get_sandbox, sandbox_mode, set_sandbox_mode

DEFAULT_TIMEOUT = 5.0
DEFAULT_TOTAL_TIMEOUT = 8.0
DEFAULT_MEMORY_MB = 1024
TEST_TIMEOUT_ENV = "POSTTRAIN_CODE_TEST_TIMEOUT"
TOTAL_TIMEOUT_ENV = "POSTTRAIN_CODE_TOTAL_TIMEOUT"

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_PY_LANGS = {"", "python", "py", "python3", "py3"}

__all__ = [
    "MODES", "MODE_ENV", "CodeSandboxUnavailable", "Sandbox", "SandboxError", "check_code_sandbox",
    "extract_code", "sandbox_mode", "set_code_limits", "set_sandbox_mode", "verify_code",
]


class CodeSandboxUnavailable(PosttrainError):
    """Model-written code cannot run in the requested sandbox mode (one-line reason)."""


def check_code_sandbox(mode: str | None = None) -> str:
    """Set the sandbox mode (when given) for this process and the workers it starts, then
    check that programs run that way. Returns ``"bwrap"`` or ``"rlimits_only"``; raises
    :class:`CodeSandboxUnavailable` with a one-line reason otherwise (e.g. mode ``bwrap``
    without bubblewrap installed). Training stages call this before loading a model."""
    try:
        if mode is not None:
            set_sandbox_mode(mode)
        return check_sandbox()
    except (SandboxError, ValueError) as e:
        raise CodeSandboxUnavailable(f"code sandbox: {e}") from None


def _positive_env(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{name}={raw!r}: expected a positive number of seconds")
    return value


def set_code_limits(test_timeout: float | None = None, total_timeout: float | None = None) -> None:
    """Set the default per-test limit and total cap (seconds) for this process and the
    processes it starts; rows can still set their own in the ground truth."""
    for name, value in ((TEST_TIMEOUT_ENV, test_timeout), (TOTAL_TIMEOUT_ENV, total_timeout)):
        if value is not None:
            if not float(value) > 0:
                raise ValueError(f"{name}: expected a positive number of seconds, got {value!r}")
            os.environ[name] = repr(float(value))


def extract_code(response: str) -> str:
    """The last fenced Python (or untagged) block of ``response``, else the whole text."""
    blocks = [body for lang, body in _FENCE.findall(response) if lang.lower() in _PY_LANGS]
    return blocks[-1] if blocks else response


def _spec(ground_truth) -> dict:
    gt = ground_truth
    if isinstance(gt, str):
        t = gt.strip()
        if (t.startswith("[") and t.endswith("]")) or (t.startswith("{") and t.endswith("}")):
            try:
                parsed = json.loads(t)
            except ValueError:
                parsed = None
            if isinstance(parsed, (list, dict)):
                gt = parsed
    if isinstance(gt, dict):
        spec = dict(gt)
    elif isinstance(gt, (list, tuple)):
        spec = {"tests": list(gt)}
    elif isinstance(gt, str):
        spec = {"program": gt}
    else:
        raise ValueError(f"code ground truth must be tests or a test program, got {type(gt).__name__}")
    if ("tests" in spec) == ("program" in spec):
        raise ValueError("code ground truth needs exactly one of 'tests' and 'program'")
    return spec


def _seconds(spec: dict, key: str, default: float) -> float:
    value = spec.get(key, default)
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = -1.0
    if not value > 0:
        raise ValueError(f"code ground truth: {key!r} must be a positive number of seconds")
    return value


def _describe(res: dict) -> str:
    status, code = res["status"], res.get("exit_code")
    if status == "signal":
        names = {-24: "CPU time limit exceeded", -25: "file size limit exceeded", -9: "killed", -11: "segfault"}
        return names.get(code, f"killed by signal {-code}")
    if status == "exit":
        return f"exit status {code}"
    return f"{status}: {res.get('detail', '')}".rstrip(": ")


def _tests(numbers: list[str]) -> str:
    return ("test " if len(numbers) == 1 else "tests ") + ", ".join(numbers)


def tests_reason(res: dict, n_tests: int, timeout: float, total: float) -> str | None:
    """Why a tests run did not pass them all (None when it did), from the server's answer."""
    results = res.get("results", "")[:n_tests]
    passed = results.count("1")
    if passed == n_tests:
        return None
    why = [f"{passed}/{n_tests} tests passed"]
    if not res.get("defined", True):
        if res["status"] == "timeout":
            why.append(f"the program's top level timed out after {timeout:g}s")
        elif res["status"] == "exit" and res["exit_code"] == 3:
            why.append("the program raised before the tests")
        else:
            why.append(_describe(res))
        return "; ".join(why)
    hung = [str(i + 1) for i, r in enumerate(results) if r == "T"]
    crashed = [str(i + 1) for i, r in enumerate(results) if r == "X"]
    if hung:
        why.append(f"{_tests(hung)} timed out after {timeout:g}s")
    if crashed:
        why.append(f"{_tests(crashed)} crashed")
    if len(results) < n_tests:
        if res["status"] == "timeout":
            why.append(f"stopped at the total limit of {total:g}s after {len(results)} tests")
        else:
            why.append(_describe(res))
    return "; ".join(why)


def verify_code(response: str, ground_truth, prompt: str | None = None):
    spec = _spec(ground_truth)
    code = extract_code(response)
    timeout = _seconds(spec, "timeout", _positive_env(TEST_TIMEOUT_ENV, DEFAULT_TIMEOUT))
    memory_mb = int(spec.get("memory_mb", DEFAULT_MEMORY_MB))
    sb = get_sandbox()
    if "tests" in spec:
        tests = [str(t) for t in spec["tests"]]
        if not tests:
            raise ValueError("code ground truth has no tests")
        total = _seconds(spec, "total_timeout", _positive_env(TOTAL_TIMEOUT_ENV, DEFAULT_TOTAL_TIMEOUT))
        res = sb.run(code, tests=tests, timeout=timeout, total_timeout=total, memory_mb=memory_mb)
        score = res.get("results", "")[: len(tests)].count("1") / len(tests)
        return score, tests_reason(res, len(tests), timeout, total)
    res = sb.run(code, program=str(spec["program"]), timeout=timeout, memory_mb=memory_mb)
    if res["status"] == "exit" and res["exit_code"] == 0:
        return 1.0
    if res["status"] == "timeout":
        return 0.0, f"timed out after {timeout:g}s"
    return 0.0, _describe(res)


def _truth_problem(ground_truth) -> str | None:
    try:
        _spec(ground_truth)
    except ValueError as e:
        return str(e)
    return None


# Checked before a run trains (posttrain.verifiers.registry.check_ground_truth).
verify_code.check_ground_truth = _truth_problem
