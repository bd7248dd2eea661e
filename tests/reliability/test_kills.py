"""SIGKILL at chosen and at random moments, then the same command again: the run finishes
with the weights of an uninterrupted run, bit for bit (CPU, fp32, deterministic).

- SFT killed while a checkpoint is being written (a real kill that leaves the half-written
  ``*.tmp`` folder behind, not a simulated one): the folder is never loaded.
- SFT killed three times at seeded random moments.
- DPO killed during its reference pass (before the reference cache is written), then at a
  random moment of training.

(tests/test_sft_resume.py kills SFT once a checkpoint exists, with dropout on;
tests/training/test_online.py and tests/rlvr/test_resume.py, test_ppo_resume.py do it for
the online driver, GRPO and PPO.)"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml
from safetensors.torch import load_file

from posttrain.training.checkpoint import list_checkpoints

ROOT = Path(__file__).resolve().parents[2]
TINY_BASE = ROOT / "posttrain" / "models" / "tiny_base"
DATA = ROOT / "data" / "tiny"

SFT = {"train_data": [{"path": str(DATA / "sft_train.jsonl"), "amount": 256}], "learning_rate": 1e-3,
       "max_length": 128, "per_device_batch_size": 8, "max_steps": 24, "save_steps": 2, "keep_last": 2,
       "lr_scheduler": "cosine", "warmup_ratio": 0.1, "logging_steps": 4}
DPO = {"train_data": [{"path": str(DATA / "dpo_train.jsonl"), "amount": 600}], "learning_rate": 1e-4,
       "max_length": 128, "per_device_batch_size": 8, "max_steps": 10, "save_steps": 2, "keep_last": 2,
       "reference_batch_tokens": 256, "logging_steps": 2}


def _recipe(tmp: Path, name: str, stage: str, section: dict) -> Path:
    recipe = {"output_dir": str(tmp / name), "seed": 5, "model": {"name_or_path": str(TINY_BASE)},
              "stages": {stage: section}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _env(cache: Path) -> dict:
    return {**os.environ, "POSTTRAIN_CACHE": str(cache), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _cmd(recipe: Path) -> list[str]:
    return [sys.executable, "-m", "posttrain.cli", "run", str(recipe)]


def run_to_end(recipe: Path, cache: Path) -> subprocess.CompletedProcess:
    r = subprocess.run(_cmd(recipe), env=_env(cache), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def kill_when(recipe: Path, cache: Path, log: Path, moment: Callable[[], bool], timeout: float = 300) -> bool:
    """Start the run, SIGKILL it as soon as ``moment()`` holds (polled every millisecond);
    False when the run ended first."""
    with open(log, "w") as err:
        proc = subprocess.Popen(_cmd(recipe), env=_env(cache), stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.time() + timeout
        while proc.poll() is None and not moment():
            assert time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.001)
        alive = proc.poll() is None
        if alive:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
    return alive


def _weights(run: Path, stage: str) -> dict[str, torch.Tensor]:
    return load_file(str(run / stage / "model" / "model.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def sft_straight(tmp_path_factory) -> tuple[dict, float]:
    """The uninterrupted SFT run's weights and wall time."""
    tmp = tmp_path_factory.mktemp("straight")
    start = time.time()
    run_to_end(_recipe(tmp, "run", "sft", SFT), tmp / "cache")
    return _weights(tmp / "run", "sft"), time.time() - start


@pytest.mark.timeout(900)
def test_sft_killed_while_writing_a_checkpoint_resumes_bitwise(tmp_path, sft_straight):
    recipe = _recipe(tmp_path, "run", "sft", SFT)
    ckpts = tmp_path / "run" / "sft" / "checkpoints"
    # Kill the moment a checkpoint folder is being written (after a first one is complete);
    # a write can finish before the kill lands, so try again (each try resumes) until one
    # is caught half-written.
    caught = False
    for attempt in range(8):
        alive = kill_when(recipe, tmp_path / "cache", tmp_path / f"kill{attempt}.log",
                          lambda: any(p.name.endswith(".tmp") for p in ckpts.glob("step*"))
                          and bool(list_checkpoints(ckpts)))
        assert alive, "the run finished before a checkpoint write could be killed"
        half = [p for p in ckpts.iterdir() if p.name.endswith(".tmp")]
        if half:
            caught = True
            # The complete checkpoints are still there; the half-written one is not one of them.
            assert list_checkpoints(ckpts)
            assert all(not p.name.endswith(".tmp") for p in list_checkpoints(ckpts))
            break
    assert caught, "no kill landed inside a checkpoint write in 8 tries"
    r = run_to_end(recipe, tmp_path / "cache")
    assert "resuming at step" in r.stderr
    assert not list(ckpts.glob("*.tmp"))
    assert_same_weights(_weights(tmp_path / "run", "sft"), sft_straight[0])


@pytest.mark.timeout(900)
def test_sft_killed_three_times_at_random_moments_resumes_bitwise(tmp_path, sft_straight):
    recipe = _recipe(tmp_path, "run", "sft", SFT)
    rng = random.Random(14)
    seconds = sft_straight[1]
    killed = []
    for i in range(3):
        at = time.time() + rng.uniform(0.3, 1.0) * seconds
        killed.append(kill_when(recipe, tmp_path / "cache", tmp_path / f"kill{i}.log", lambda: time.time() >= at))
    assert killed[0], "the first run ended before its kill"  # later ones may, having less left to do
    run_to_end(recipe, tmp_path / "cache")
    assert_same_weights(_weights(tmp_path / "run", "sft"), sft_straight[0])


@pytest.mark.timeout(900)
def test_dpo_killed_in_the_reference_pass_and_in_training_resumes_bitwise(tmp_path):
    run_to_end(_recipe(tmp_path, "straight", "dpo", DPO), tmp_path / "cache-straight")
    recipe = _recipe(tmp_path, "run", "dpo", DPO)
    cache = tmp_path / "cache"
    log = tmp_path / "kill0.log"
    alive = kill_when(recipe, cache, log, lambda: "reference log-probs" in log.read_text())
    assert alive
    # Killed inside the reference pass: no reference cache entry, no checkpoint yet.
    assert not list((cache / "dpo_reference").glob("*.pt"))
    assert not list_checkpoints(tmp_path / "run" / "dpo" / "checkpoints")
    log = tmp_path / "kill1.log"
    ckpts = tmp_path / "run" / "dpo" / "checkpoints"
    at = random.Random(14).randint(2, 4) * 2  # a random checkpoint; killed right after it is complete
    alive = kill_when(recipe, cache, log, lambda: any(p.name.startswith(f"step{at}-") for p in list_checkpoints(ckpts)))
    assert alive, "the run finished before the kill"
    r = run_to_end(recipe, cache)
    assert "resuming at step" in r.stderr
    assert_same_weights(_weights(tmp_path / "run", "dpo"), _weights(tmp_path / "straight", "dpo"))
