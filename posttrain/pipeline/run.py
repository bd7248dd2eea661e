"""``run_recipe``: check the inputs and plan (reuse / resume / run each stage, checked
against the recipe) before any model loads, write the resolved recipe, then run the
stages in order. A stage that trains the policy hands its ``model/`` to the next one; a
stage that writes data or a non-policy model leaves the policy as it was and gets no
policy eval."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from datetime import timedelta
from pathlib import Path

import yaml

from posttrain.jsonl import write_json_atomic, write_text_atomic
from posttrain.metrics import MetricsWriter
from posttrain.pipeline.record import (DONE, RECORD, StageStep, eval_identity, new_record, plan_run, same,
                                       stage_inputs)
from posttrain.pipeline.summary import print_summary, write_run_report
from posttrain.recipe.chain import resolve_data_sources
from posttrain.recipe.schema import Recipe
from posttrain.recipe.validate_inputs import check_inputs
from posttrain.stages.context import StageContext
from posttrain.stages.registry import get_stage

log = logging.getLogger("posttrain")


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
        if tmp.exists():
            shutil.rmtree(tmp)
        init_tiny_model(tmp, seed=m.init_seed)
        tmp.rename(base)
    return str(base), None


def resolved_recipe_yaml(recipe: Recipe) -> str:
    """The recipe with every field of every stage (defaults filled in, each stage's
    ``type`` and ``seed`` explicit): ``posttrain run`` on it reproduces the run."""
    header = ("# The resolved recipe of this run: every field, defaults filled in. To reproduce the run,\n"
              f"# from {os.getcwd()} (relative paths start there):\n"
              "#   posttrain run THIS_FILE --set output_dir=NEW_DIR\n")
    return header + yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def run_recipe(recipe: Recipe, force_stage: str | None = None) -> Path:
    """Run every stage not already finished with the same section and inputs; with
    ``force_stage``, delete that stage's folder and every later one's first, so they run
    again. Prints a per-stage summary and writes the run report at the end.

    First, before any model loads, the inputs are checked (the model folder, the output
    folder's room, every local data file row by row; ``check_inputs``), so a library
    caller stops on a bad row at once as ``posttrain run`` does, not stages later."""
    check_inputs(recipe)  # every process: each then stops alike, none waits at a barrier
    # Under `accelerate launch` every process runs this; only the main one writes shared
    # files, the others wait for it.
    import torch
    from accelerate import PartialState

    # The DPO reference pass and the post-stage eval are split between the processes, but
    # each node's main process alone tokenizes a mixture missing from the cache while the
    # others wait, and saves gather on it; NCCL's default 10-minute collective timeout would kill
    # such a wait on a large mixture or model.
    timeout = timedelta(seconds=float(os.environ.get("POSTTRAIN_COLLECTIVE_TIMEOUT_S", 4 * 3600)))
    state = PartialState(cpu=not torch.cuda.is_available(), timeout=timeout)  # see training.loop.get_accelerator
    run_dir = Path(recipe.output_dir)
    steps = plan_run(recipe, run_dir, force_stage)  # stops on a changed stage before anything is touched
    if state.is_main_process:
        for step in steps:
            if step.forced and step.stage_dir.exists():
                log.info("--force-stage %s: deleting %s to run it again", force_stage, step.stage_dir)
                shutil.rmtree(step.stage_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "recipe.yaml", resolved_recipe_yaml(recipe))
        prepare_base_model(recipe, run_dir)
    state.wait_for_everyone()
    base = prepare_base_model(recipe, run_dir)
    run_ids: dict[str, str | None] = {}
    outcomes: dict[str, str] = {}
    for step in steps:
        model, revision = (str(run_dir / step.input_stage / "model"), None) if step.input_stage else base
        if step.action == "reuse":
            log.info("stage %s already finished in %s with this recipe section; reusing it", step.name,
                     step.stage_dir)
            run_ids[step.name] = (step.record or {}).get("run_id", f"unrecorded-{step.name}")
            _evaluate_if_stale(recipe, step, model, revision, state)
            outcomes[step.name] = "reused"
        else:
            run_ids[step.name] = _run_stage(recipe, step, model, revision, run_dir, run_ids, state)
            outcomes[step.name] = "resumed" if step.action == "resume" else "ran"
    if state.is_main_process:
        print_summary(recipe, run_dir, steps, outcomes)
        report = write_run_report(run_dir)
        if report is not None:
            print(f"report: {report}")
    state.wait_for_everyone()
    return run_dir


def _context(recipe: Recipe, step: StageStep, model: str, revision: str | None, run_dir: Path,
             writer: MetricsWriter) -> StageContext:
    # from_stage data sources become the files their stages wrote, so data loading reads
    # them like any file; the recipe keeps them as written.
    def output_of(name: str) -> Path:
        return get_stage(recipe.stages[name].type or name).output(run_dir / name)

    config = resolve_data_sources(step.config, output_of)
    return StageContext(name=step.name, config=config, recipe=recipe, input_model=model, input_revision=revision,
                        stage_dir=step.stage_dir, metrics=writer, type=step.spec.name, run_dir=run_dir)


def _writer(recipe: Recipe, step: StageStep, state) -> MetricsWriter:
    m = recipe.metrics
    return MetricsWriter(step.stage_dir / "metrics.jsonl", tensorboard=m.tensorboard, wandb=m.wandb,
                         wandb_project=m.wandb_project, run_name=f"{Path(recipe.output_dir).name}-{step.name}",
                         config=step.config.model_dump(mode="json"), enabled=state.is_main_process)


def _run_stage(recipe: Recipe, step: StageStep, model: str, revision: str | None, run_dir: Path,
               run_ids: dict[str, str | None], state) -> str | None:
    """Run (or resume) one stage; returns its run_id (on the main process)."""
    step.stage_dir.mkdir(parents=True, exist_ok=True)
    record = None
    if state.is_main_process:
        log.info("stage %s (%s): from %s into %s", step.name, step.spec.name, model, step.stage_dir)
        if step.action == "resume" and step.record is not None:
            record = {**step.record, "resumed": [*step.record.get("resumed", []), time.strftime("%Y-%m-%dT%H:%M:%S")]}
        else:
            record = new_record(recipe, step, stage_inputs(recipe, step.name, step.input_stage, run_ids))
        write_json_atomic(step.stage_dir / RECORD, record)
    start = time.time()
    with _writer(recipe, step, state) as writer:
        ctx = _context(recipe, step, model, revision, run_dir, writer)
        step.spec.run(ctx)
        state.wait_for_everyone()
        output = step.spec.output(step.stage_dir)
        if not output.exists():
            raise RuntimeError(f"stage {step.name} ({step.spec.name}) finished without writing {output}")
        if step.spec.trains_policy and recipe.eval is not None:
            from posttrain.evaluation import evaluate_recipe_stage

            evaluate_recipe_stage(ctx)  # every process generates its share; the main one writes
            if state.is_main_process:
                record["eval"] = eval_identity(recipe)
    if state.is_main_process:
        seconds = round(time.time() - start, 1)
        record.update(finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), seconds=seconds)
        write_json_atomic(step.stage_dir / RECORD, record)
        write_text_atomic(step.stage_dir / DONE, json.dumps({"seconds": seconds, "run_id": record["run_id"]}) + "\n")
    state.wait_for_everyone()
    return record["run_id"] if record else None


def _evaluate_if_stale(recipe: Recipe, step: StageStep, model: str, revision: str | None, state) -> None:
    """A reused policy stage whose eval.json came from another eval section (or eval file)
    is evaluated again; its model is not retrained for that."""
    if not (step.spec.trains_policy and recipe.eval is not None and step.record is not None):
        return
    current = eval_identity(recipe)
    if (step.stage_dir / "eval.json").is_file() and same(step.record.get("eval"), current):
        return
    from posttrain.evaluation import evaluate_recipe_stage

    log.info("stage %s: the recipe's eval changed since it ran; evaluating its model again", step.name)
    with _writer(recipe, step, state) as writer:  # every process generates its share
        evaluate_recipe_stage(_context(recipe, step, model, revision, step.stage_dir.parent, writer))
    if state.is_main_process:
        step.record["eval"] = current
        write_json_atomic(step.stage_dir / RECORD, step.record)
    state.wait_for_everyone()
