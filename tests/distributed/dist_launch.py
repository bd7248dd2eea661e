"""Launching posttrain on several CPU processes for the distributed tests: ``accelerate
launch`` with one of the shipped configs (``recipes/accelerate/``), on a port the system
picks, with a private cache folder, one thread per process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]


def env(cache: Path, **extra: str) -> dict:
    # A private tokenization / reference cache: no sharing with other runs on the machine.
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "POSTTRAIN_CACHE": str(cache), **extra}


def launch(config: str | None, nproc: int, args: list, cache: Path, *, timeout: int = 900,
           module: bool = True) -> subprocess.CompletedProcess:
    """``accelerate launch --config_file recipes/accelerate/<config> --num_processes N``
    (``config`` None: one plain process) of ``-m posttrain.cli ARGS`` (``module``) or of a
    script. Fails the test with the output's tail on a non-zero exit."""
    target = ["-m", "posttrain.cli", *map(str, args)] if module else list(map(str, args))
    if config is None:
        cmd = [sys.executable, *target]
    else:
        # --main_process_port 0: the launcher's store binds a port the system picks and the
        # workers learn it from there, so tests side by side never fight over a fixed port.
        cmd = [*ACCELERATE, "--config_file", str(ROOT / "recipes/accelerate" / config), "--num_processes",
               str(nproc), "--main_process_port", "0", *target]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env(cache), cwd=ROOT, timeout=timeout)
    assert r.returncode == 0, (r.stdout[-2000:] + r.stderr[-4000:])
    return r
