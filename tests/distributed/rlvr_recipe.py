"""The RLVR run the multi-process tests start: the shipped tiny base on the tiny task's first
12 prompts, 4 prompts x 4 samples per step, up to 48 new tokens, an unfinished answer
scored -1 (so a group holds right, wrong and unfinished answers: advantages not all zero).
Each test adds what it is about (engine, steps, learning rate, optimizer passes)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from dist_launch import ROOT

TINY_BASE = ROOT / "posttrain/models/tiny_base"


def write_prompts(folder: Path) -> Path:
    """``folder/prompts.jsonl``: the first 12 rows of ``data/tiny/rlvr_train.jsonl``."""
    rows = (ROOT / "data/tiny/rlvr_train.jsonl").read_text().splitlines()[:12]
    path = folder / "prompts.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


def write_recipe(folder: Path, **stage) -> Path:
    """``folder/rlvr.yaml``: one ``rlvr`` stage of the tiny base on ``write_prompts(folder)``,
    run into ``folder/run``; ``stage`` adds or overrides the stage's settings."""
    section = {"train_data": [{"path": str(write_prompts(folder))}], "prompts_per_step": 4,
               "samples_per_prompt": 4, "max_new_tokens": 48, "max_length": 64, "non_stop_penalty": -1.0,
               "per_device_batch_size": 4, "verifier_workers": 1, "logging_steps": 1, **stage}
    recipe = {"output_dir": str(folder / "run"), "seed": 0, "model": {"name_or_path": str(TINY_BASE)},
              "stages": {"rlvr": section}}
    path = folder / "rlvr.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def step_rows(run_dir: Path) -> list[dict]:
    """The per-step training rows of ``run_dir/rlvr/metrics.jsonl``."""
    rows = [json.loads(x) for x in (run_dir / "rlvr/metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "policy/loss" in r]
