"""Full disk and unwritable output: checked before anything runs (one line, exit 2), and at
write time, where a checkpoint that cannot be written leaves the previous one intact and
the same command resumes once there is space again, ending with the weights of an
uninterrupted run. The disks are real tmpfs mounts (the test needs root; it skips
without)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
TINY_BASE = ROOT / "posttrain" / "models" / "tiny_base"

RECIPE = """
output_dir: run
model: {name_or_path: {model}}
stages:
  sft:
    train_data: [{path: {data}}]
    learning_rate: 1.0e-3
    max_steps: 12
    save_steps: 1
    keep_last: 1
    per_device_batch_size: 4
"""


@pytest.fixture
def tmpfs(tmp_path):
    """``mount(size, ro=False) -> folder``: a fresh tmpfs of ``size``, unmounted after."""
    mounted = []

    def mount(size: str, ro: bool = False) -> Path:
        d = tmp_path / f"disk{len(mounted)}"
        d.mkdir()
        opts = f"size={size}" + (",ro" if ro else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(d)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); needs root")
        mounted.append(d)
        return d

    yield mount
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.fixture
def workdir(sft_workdir) -> Path:
    return sft_workdir(RECIPE)


def command(workdir: Path, output_dir: Path) -> list[str]:
    return [sys.executable, "-m", "posttrain.cli", "run", str(workdir / "recipe.yaml"), "--set",
            f"output_dir={output_dir}"]


def run(workdir: Path, output_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "POSTTRAIN_CACHE": str(workdir / "cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command(workdir, output_dir), cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=600)


def test_unwritable_output_dir_stops_before_anything_runs(workdir, tmpfs):
    disk = tmpfs("1m", ro=True)
    r = run(workdir, disk / "run")
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.splitlines() == [f"posttrain run: error: output_dir: {disk / 'run'}: cannot write in {disk} "
                                     "(Read-only file system)"]


def test_too_little_space_for_the_checkpoints_stops_before_anything_runs(workdir, tmpfs):
    from posttrain.recipe import load_recipe
    from posttrain.recipe.validate_inputs import SPACE_MARGIN, space_needed

    disk = tmpfs("64m")
    recipe = load_recipe(workdir / "recipe.yaml", [f"output_dir={disk / 'run'}"])
    need = space_needed(recipe, disk / "run")
    weights = (TINY_BASE / "model.safetensors").stat().st_size
    assert need == (1 + 1) * 3 * weights + weights  # keep_last + 1 checkpoints of 3x the weights, the model
    r = run(workdir, disk / "run")
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith(f"posttrain run: error: output_dir: {disk / 'run'}: 64.0 MiB free on its disk, but "
                               f"the unfinished stages write about {need / 2**20:.1f} MiB"), r.stderr
    assert need + SPACE_MARGIN > 64 * 2**20
    assert not (disk / "run").exists()


def test_disk_full_during_a_checkpoint_keeps_the_previous_one_and_resumes(workdir, tmpfs):
    reference = workdir / "uninterrupted"
    assert run(workdir, reference).returncode == 0

    # 600 MiB, 200 of them taken by a ballast file while the run trains (so that filling
    # the rest is quick), freed before the resume, whose start-of-run space check wants
    # about 350 MiB.
    disk = tmpfs("600m")
    ballast = disk / "ballast"
    ballast.write_bytes(b"\0" * (200 * 2**20))
    out = disk / "run"
    env = {**os.environ, "POSTTRAIN_CACHE": str(workdir / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command(workdir, out), cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    checkpoints = out / "sft" / "checkpoints"
    deadline = time.time() + 300
    while not list(checkpoints.glob("step2-*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    # Another program fills the disk while the run is writing checkpoints.
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            f.write(b"\0" * shutil.disk_usage(disk).free)
        except OSError:
            pass  # full
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr
    last = stderr.splitlines()[-1]
    assert last.startswith(f"posttrain run: error: the disk of {out} is full ("), last
    assert last.endswith("free some space and rerun the same command to resume"), last

    from posttrain.training.checkpoint import list_checkpoints

    complete = list_checkpoints(checkpoints)
    assert complete, "the previous checkpoint is gone"
    weights = load_file(str(complete[-1] / "model.safetensors"))
    assert all(bool(torch.isfinite(t).all()) for t in weights.values())
    step = json.loads((complete[-1] / "trainer_state" / "state.json").read_text())["step"]
    assert 2 <= step < 12 and not (out / "sft" / "model").exists()

    filler.unlink()
    ballast.unlink()
    r = run(workdir, out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming at step {step}" in r.stderr
    final, expected = (load_file(str(d / "sft" / "model" / "model.safetensors")) for d in (out, reference))
    assert final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in final)
