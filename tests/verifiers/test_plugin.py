"""Third-party verifiers: an installed entry-point plugin, and a module:object path."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_cli

EXAMPLE = REPO / "examples" / "posttrain-verifier-example"
DIST = "posttrain-verifier-example"


def _pip(*args):
    return subprocess.run([sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "-q"],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def installed_example(tmp_path):
    # Build from a copy so that the build does not leave files in the repository.
    src = tmp_path / "src"
    shutil.copytree(EXAMPLE, src)
    p = _pip("install", "--no-deps", "--no-build-isolation", str(src))
    assert p.returncode == 0, p.stderr
    try:
        yield
    finally:
        _pip("uninstall", "-y", DIST)


def test_entry_point_plugin(installed_example, tmp_path):
    rows = [
        {"response": "one two three", "dataset": "word_count", "ground_truth": 3},
        {"response": "one", "dataset": "word_count", "ground_truth": "2"},
        {"response": "The answer is 4", "dataset": ["gsm8k", "word_count"], "ground_truth": ["4", 4]},
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = run_cli([str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"), "--workers", "2"])
    assert p.returncode == 0, p.stderr
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["score"] for r in out] == [1.0, 0.5, 1.0]
    listed = subprocess.run([sys.executable, "-c",
                             "from posttrain.verifiers import available_verifiers; print(available_verifiers())"],
                            capture_output=True, text=True, timeout=60)
    assert "word_count" in listed.stdout


def test_module_object_path_through_the_cli(tmp_path):
    (tmp_path / "shout_mod.py").write_text(
        "def is_shouting(response, ground_truth, prompt=None):\n"
        "    return (1.0, None) if response.isupper() else (0.0, 'not upper case')\n"
    )
    rows = [{"response": r, "dataset": "shout_mod:is_shouting", "ground_truth": None} for r in ("HI", "hi")]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = run_cli([str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl")],
                env={"PYTHONPATH": str(tmp_path)})
    assert p.returncode == 0, p.stderr
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(r["score"], r["reason"]) for r in out] == [(1.0, None), (0.0, "not upper case")]
