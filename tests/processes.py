"""Process lookups the sandbox and reliability tests share (``tests/`` is on ``sys.path``
through its conftest)."""

from __future__ import annotations

import psutil


def processes_with(marker: str) -> list[int]:
    """Pids of the live processes whose command line contains ``marker``."""
    return [p.pid for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or ())]
