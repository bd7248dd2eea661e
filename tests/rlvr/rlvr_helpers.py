"""Helpers of the RLVR tests: a verifier plugin, prompt files, recipes, and ``posttrain
run`` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
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


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def same_optimizer(a: dict, b: dict) -> bool:
    """Two optimizer ``state_dict``s hold bitwise the same state."""
    return a["state"].keys() == b["state"].keys() and all(
        torch.equal(s[n], b["state"][k][n]) for k, s in a["state"].items() for n in s)


def kill_and_resume(workdir: Path, make_recipe, steps: int, kill_after: int = 2) -> tuple[Path, Path, int]:
    """Run ``make_recipe(name)``'s recipe twice side by side, as ``straight`` and
    ``killed``; SIGKILL ``killed`` once checkpoint ``step<kill_after>`` is finished (renamed
    from ``.tmp``), check it had not finished, run it again to resume, and wait for both.
    Returns both runs' stage folders and the last checkpoint step the killed run had
    written before it was killed."""
    import signal
    import time

    from posttrain.training.checkpoint import list_checkpoints

    def start(recipe, log):
        return subprocess.Popen(posttrain_cmd() + ["run", str(recipe)], stdout=log, stderr=subprocess.STDOUT,
                                env=env(workdir), cwd=workdir)

    straight, killed = make_recipe("straight"), make_recipe("killed")
    ckpts = workdir / "killed" / "rlvr" / "checkpoints"
    logs = {name: workdir / f"{name}.log" for name in ("straight", "killed", "resumed")}
    with open(logs["straight"], "w") as a, open(logs["killed"], "w") as b:
        proc_straight = start(straight, a)
        proc = start(killed, b)
        deadline = time.time() + 600
        while not any(p.name.startswith(f"step{kill_after}-") for p in list_checkpoints(ckpts)):
            assert proc.poll() is None, logs["killed"].read_text()[-3000:]
            assert time.time() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    done = max(int(p.name.split("-")[0][4:]) for p in list_checkpoints(ckpts))
    assert done < steps, "the run finished before it was killed"
    with open(logs["resumed"], "w") as c:
        resumed = start(killed, c)
        assert resumed.wait(timeout=600) == 0, logs["resumed"].read_text()[-3000:]
    assert proc_straight.wait(timeout=600) == 0, logs["straight"].read_text()[-3000:]
    assert "resuming at step" in logs["resumed"].read_text()
    return workdir / "straight" / "rlvr", workdir / "killed" / "rlvr", done
