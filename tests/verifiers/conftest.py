import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFORMANCE = REPO / ".." / "shared" / "conformance"


def posttrain_cmd() -> list[str]:
    """The real console script when installed, else the module (same code path)."""
    exe = Path(sys.executable).parent / "posttrain"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("posttrain")
    return [found] if found else [sys.executable, "-m", "posttrain.verifiers.cli"]


def run_cli(args, env=None, timeout=120):
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run(posttrain_cmd() + ["verify", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


@pytest.fixture
def conformance():
    if not CONFORMANCE.is_dir():
        pytest.skip(f"conformance data not found at {CONFORMANCE}")
    return CONFORMANCE
