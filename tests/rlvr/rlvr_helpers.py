"""Helpers of the RLVR tests: a verifier plugin, prompt files, recipes, and ``posttrain
run`` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

# Scores a response by its decoded length: random tiny models write responses of many
# lengths, so groups get mixed rewards (a real learning signal, hand-checkable).
VERIFIER = '''
def score(response, ground_truth, prompt=None):
    return float(len(response) % int(ground_truth) == 0)
'''


def write_verifier(folder: Path) -> Path:
    path = folder / "evenlen.py"
    path.write_text(VERIFIER)
    return path


def write_prompts(path: Path, n: int, start: int = 0, dataset: str = "evenlen:score") -> Path:
    rows = [{"messages": [{"role": "user", "content": f"What is {i} + {i + 3}?"}], "dataset": dataset,
             "ground_truth": 2} for i in range(start, start + n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def stage(workdir: Path, **overrides) -> dict:
    """A small GRPO stage section: 2 prompts x 4 samples x 6 tokens per step."""
    return {"type": "rlvr", "train_data": [{"path": str(workdir / "prompts.jsonl")}], "max_steps": 3,
            "prompts_per_step": 2, "samples_per_prompt": 4, "max_new_tokens": 6, "max_length": 64,
            "learning_rate": 1e-3, "beta": 0.01, "per_device_batch_size": 4, "verifier_workers": 1,
            **overrides}


def write_recipe(workdir: Path, model_dir: Path, stages: dict, name: str = "recipe.yaml", **top) -> Path:
    recipe = {"output_dir": str(workdir / "run"), "seed": 0, "model": {"name_or_path": str(model_dir)},
              "stages": stages, **top}
    path = workdir / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def posttrain_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "posttrain"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "posttrain.cli"]


def env(workdir: Path, **extra) -> dict:
    return dict(os.environ, PYTHONPATH=str(workdir), POSTTRAIN_CACHE=str(workdir / "cache"), OMP_NUM_THREADS="1",
                TOKENIZERS_PARALLELISM="false", **extra)


def run(recipe: Path, *args, workdir: Path, timeout: int = 600, **extra_env) -> subprocess.CompletedProcess:
    return subprocess.run(posttrain_cmd() + ["run", str(recipe), *args], capture_output=True, text=True,
                          env=env(workdir, **extra_env), cwd=workdir, timeout=timeout)


def metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def step_rows(path: Path) -> list[dict]:
    """The per-step training rows of a stage's metrics.jsonl."""
    return [r for r in metrics(path) if "policy/loss" in r]
