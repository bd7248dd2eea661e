"""Run a recipe: its stages in order in one run directory, each stage that trains the
policy starting from the previous one's model. A finished stage is reused when its recipe
section and inputs are unchanged (``record``), an unfinished one resumes, and the run ends
with a per-stage summary (``summary``) and the HTML report."""

from posttrain.pipeline.record import DONE, RECORD, StaleStageError, plan_run
from posttrain.pipeline.run import prepare_base_model, run_recipe

__all__ = ["DONE", "RECORD", "StaleStageError", "plan_run", "prepare_base_model", "run_recipe"]
