"""``code`` verifier: run the response's Python against tests in a sandbox.

The program is the response's last fenced Python block (```python ... ``` or a bare
``` ... ```), else the whole response. The ground truth is either

* a list of test statements (usually ``assert``s), or a JSON string of one: each runs
  after the program, in the same namespace; score = fraction that pass;
* a string test program: appended to the program and run as one script; 1.0 if it exits
  with status 0, else 0;
* a dict ``{"tests": [...]}`` or ``{"program": "..."}``, optionally with ``timeout``
  (seconds, default 5) and ``memory_mb`` (default 1024).

The sandbox and what it does and does not protect against are described in
:mod:`posttrain.verifiers.code.sandbox`.
"""
from __future__ import annotations

import json
import re

from .sandbox import Sandbox, SandboxError, get_sandbox

DEFAULT_TIMEOUT = 5.0
DEFAULT_MEMORY_MB = 1024

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_PY_LANGS = {"", "python", "py", "python3", "py3"}

__all__ = ["Sandbox", "SandboxError", "extract_code", "verify_code"]


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


def _describe(res: dict) -> str:
    status, code = res["status"], res.get("exit_code")
    if status == "signal":
        names = {-24: "CPU time limit exceeded", -25: "file size limit exceeded", -9: "killed", -11: "segfault"}
        return names.get(code, f"killed by signal {-code}")
    if status == "exit":
        return f"exit status {code}"
    return f"{status}: {res.get('detail', '')}".rstrip(": ")


def verify_code(response: str, ground_truth, prompt: str | None = None):
    spec = _spec(ground_truth)
    code = extract_code(response)
    timeout = float(spec.get("timeout", DEFAULT_TIMEOUT))
    memory_mb = int(spec.get("memory_mb", DEFAULT_MEMORY_MB))
    sb = get_sandbox()
    if "tests" in spec:
        tests = [str(t) for t in spec["tests"]]
        if not tests:
            raise ValueError("code ground truth has no tests")
        res = sb.run(code, tests=tests, timeout=timeout, memory_mb=memory_mb)
        passed = res.get("results", "")[: len(tests)].count("1")
        score = passed / len(tests)
        why = f"{passed}/{len(tests)} tests passed"
        if res["status"] == "timeout":
            why += f"; timed out after {timeout:g}s"
        elif res["status"] == "exit" and res["exit_code"] == 3:
            why += "; the program raised before the tests"
        elif res["status"] != "exit" or res["exit_code"] != 0:
            why += "; " + _describe(res)
        return score, (None if score == 1.0 else why)
    res = sb.run(code, program=str(spec["program"]), timeout=timeout, memory_mb=memory_mb)
    if res["status"] == "exit" and res["exit_code"] == 0:
        return 1.0
    if res["status"] == "timeout":
        return 0.0, f"timed out after {timeout:g}s"
    return 0.0, _describe(res)
