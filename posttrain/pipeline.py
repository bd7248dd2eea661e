"""Run a recipe: stages in order, each from the previous one's output, in one run
directory. A stage whose folder holds a ``DONE`` marker is not run again."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import yaml

from posttrain.metrics import MetricsWriter
from posttrain.recipe.schema import Recipe
from posttrain.stages.context import StageContext
from posttrain.stages.registry import get_stage

log = logging.getLogger("posttrain")

DONE = "DONE"


def prepare_base_model(recipe: Recipe, run_dir: Path) -> tuple[str, str | None]:
    """The first stage's input: the tiny model created in ``run_dir/base`` on first use, or
    the recipe's hub id / folder."""
    m = recipe.model
    if m.name_or_path != "tiny":
        return m.name_or_path, m.revision
    base = run_dir / "base"
    if not (base / "config.json").exists():
        from posttrain.models import init_tiny_model

        log.info("creating the tiny OLMo-2 (seed %d) in %s", m.init_seed, base)
        tmp = run_dir / "base.tmp"
        init_tiny_model(tmp, seed=m.init_seed)
        tmp.rename(base)
    return str(base), None


def run_recipe(recipe: Recipe, only: list[str] | None = None) -> Path:
    # Under `accelerate launch` every process runs this; only the main one writes shared
    # files, the others wait for it.
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # see training.loop.get_accelerator
    run_dir = Path(recipe.output_dir)
    if state.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
        prepare_base_model(recipe, run_dir)
    state.wait_for_everyone()
    model, revision = prepare_base_model(recipe, run_dir)
    for name, config in recipe.stages.items():
        stage_dir = run_dir / name
        if (stage_dir / DONE).exists():
            log.info("stage %s already finished in %s; not re-running it", name, stage_dir)
        elif only is None or name in only:
            _run_stage(recipe, name, config, model, revision, stage_dir, state)
        else:
            raise RuntimeError(f"stage {name} has not finished and was not asked for (--only)")
        model, revision = str(stage_dir / "model"), None
    return run_dir


def _run_stage(recipe, name, config, model, revision, stage_dir: Path, state) -> None:
    stage_dir.mkdir(parents=True, exist_ok=True)
    if state.is_main_process:
        log.info("stage %s: from %s into %s", name, model, stage_dir)
    m = recipe.metrics
    writer = MetricsWriter(stage_dir / "metrics.jsonl", tensorboard=m.tensorboard, wandb=m.wandb,
                           wandb_project=m.wandb_project, run_name=f"{Path(recipe.output_dir).name}-{name}",
                           config=config.model_dump(mode="json"), enabled=state.is_main_process)
    start = time.time()
    with writer:
        ctx = StageContext(name=name, config=config, recipe=recipe, input_model=model,
                           input_revision=revision, stage_dir=stage_dir, metrics=writer)
        get_stage(name).run(ctx)
        state.wait_for_everyone()
        if recipe.eval is not None and state.is_main_process:
            from posttrain.evaluation import evaluate_recipe_stage

            evaluate_recipe_stage(ctx)
    if state.is_main_process:
        (stage_dir / DONE).write_text(json.dumps({"seconds": round(time.time() - start, 1)}) + "\n")
    state.wait_for_everyone()
