"""Hostile code under the ``code`` verifier stays contained inside a real RLVR stage run,
as it does under ``posttrain verify`` (tests/verifiers/test_code_sandbox.py).

A tiny model writes no hostile code, but the verifier runs the response together with the
row's tests (its ground truth), so hostile tests in the prompt rows take the same path
from inside ``posttrain run``: rollouts, the Scorer's worker processes, the sandbox. Each
row's tests are a harmless ``assert True``, one attack (an infinite loop, a fork bomb that
also starts a detached sleeper, a memory bomb, writes to host folders, a connection to a
port on the host), and a test that waits a second and fails (``SETTLE``). The tiny base
answers ``What is 3 + 4?`` with a digit first, so a one-token response is a valid Python
program and the tests run after it: a sample scores 1/3 exactly when the harmless test
passed and the attack failed. Every sample at 1/3 (reward 10/3 with the multiplier 10,
std 0) says every attack ran and was stopped; one that got through would score 2/3, a
program that never ran 0.

``SETTLE`` gives the sandbox time to reap what a fork bomb left before the next sample
runs: under load, the killed bomb's processes can still hold the process limit when the
next program starts, and that program's tests then fail to fork ("crashed", score 0), an
innocent sample's reward lost (a scoring fault, not an escape; see the verifier tests)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from processes import processes_with

ROOT = Path(__file__).resolve().parents[2]
TINY_BASE = ROOT / "posttrain" / "models" / "tiny_base"


SETTLE = "import time\ntime.sleep(1)\nassert False"


def _attacks(marker: str, host_files: list[Path], port: int) -> dict[str, str]:
    sleeper = (f"import subprocess\nsubprocess.Popen(['/bin/sh', '-c', 'sleep 300 # {marker}'], "
               "start_new_session=True)\n")
    return {
        "loop": "while True:\n    pass",
        "fork bomb": sleeper + "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
        "memory bomb": "x = bytearray(8 << 30)",
        "write outside": ("written = 0\n"
                          f"for p in {[str(p) for p in host_files]!r}:\n"
                          "    try:\n"
                          "        open(p, 'w').write('x')\n"
                          "        written += 1\n"
                          "    except OSError:\n"
                          "        pass\n"
                          "assert written"),
        "network": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'x')",
    }


@pytest.fixture
def open_folder():
    """A folder in the host's /tmp that anyone may write in (the sandbox's program user
    too, when the sandbox runs as root), removed after."""
    folder = Path(tempfile.mkdtemp(prefix="posttrain-escape-", dir="/tmp"))
    folder.chmod(0o777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_hostile_tests_in_rlvr_rows_are_contained(tmp_path, open_folder):
    marker = f"rlvr-hostile-{uuid.uuid4().hex}"
    host_files = [open_folder / "escape.txt", tmp_path / "run" / "escape.txt", ROOT / f"escape-{marker}.txt"]
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    accepted: list = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                accepted.append(server.accept())
            except OSError:
                pass

    seen: list[int] = []  # the detached sleeper, while the run lasts: the bomb did run

    def watch() -> None:
        while not done.is_set():
            seen.extend(processes_with(marker))
            time.sleep(0.02)

    attacks = _attacks(marker, host_files, server.getsockname()[1])
    rows = [{"messages": [{"role": "user", "content": "What is 3 + 4?"}], "dataset": "code",
             "ground_truth": {"tests": ["assert True", attack, SETTLE], "timeout": 2, "total_timeout": 6}}
            for attack in attacks.values()]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rlvr = {"type": "rlvr", "train_data": [{"path": "prompts.jsonl"}], "max_steps": 1,
            "prompts_per_step": len(rows), "samples_per_prompt": 2, "max_new_tokens": 1, "max_length": 64,
            "learning_rate": 1e-5, "per_device_batch_size": 10, "verifier_workers": 1, "verifier_timeout": 20}
    recipe = {"output_dir": "run", "seed": 0, "model": {"name_or_path": str(TINY_BASE)}, "stages": {"rlvr": rlvr}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    env = {**os.environ, "POSTTRAIN_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}

    threads = [threading.Thread(target=accept), threading.Thread(target=watch)]
    for t in threads:
        t.start()
    try:
        r = subprocess.run([sys.executable, "-m", "posttrain.cli", "run", "recipe.yaml"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
    finally:
        done.set()
        for t in threads:
            t.join()
        server.close()
    assert r.returncode == 0, r.stderr[-3000:]

    stage = tmp_path / "run" / "rlvr"
    # the default sandbox mode, which the stage checks before any model loads: bubblewrap
    assert yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())["stages"]["rlvr"]["code_sandbox"] == "bwrap"
    step = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()][-1]
    assert step["step"] == 1 and step["length/max"] == 1, step
    # 10 samples, each 1 of its 3 tests passed (x 10): every attack ran and failed
    assert abs(step["reward/mean"] - 10 / 3) < 1e-5 and step["reward/std"] < 1e-5, step
    # ... scored by the verifier inside the sandbox: no verifier call raised, hung or died
    assert step["verifier/errors"] == step["verifier/timeouts"] == step["verifier/crashes"] == 0, step
    assert (stage / "model" / "model.safetensors").is_file()
    assert not any(p.exists() for p in host_files)
    assert not accepted, "a program reached a port on the host"
    assert seen, "the fork bomb's detached sleeper never started"
    deadline = time.monotonic() + 5
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not processes_with(marker), "the detached sleeper outlived the run"
