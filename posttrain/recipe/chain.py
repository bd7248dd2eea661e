"""Stage chaining: what a stage reads from earlier stages of the same recipe.

A stage names another stage's output with ``from_stage``: in a data mixture
(``{from_stage: pairs, amount: 1.0}``, the rows that stage wrote) or in a model field
(``value_model: {from_stage: rm}``, the model folder it wrote). The loader checks that each
named stage exists, runs earlier, and writes the kind of output asked for; the pipeline
turns data sources into file paths just before the stage runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel

from posttrain.recipe.schema import DataSource, ModelFromStage, Recipe
from posttrain.stages.registry import get_stage, stage_names


@dataclass(frozen=True)
class StageRef:
    field: str
    """Dotted path of the ``from_stage`` field inside the stage's section."""
    stage: str
    """The stage it names."""
    wants: Literal["data", "model"]


def stage_refs(config: BaseModel) -> list[StageRef]:
    """Every ``from_stage`` in a stage section, wherever it is nested."""
    out: list[StageRef] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, DataSource):
            if value.from_stage is not None:
                out.append(StageRef(_join(path, "from_stage"), value.from_stage, "data"))
        elif isinstance(value, ModelFromStage):
            out.append(StageRef(_join(path, "from_stage"), value.from_stage, "model"))
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name), _join(path, name))
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, _join(path, str(i)))
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, _join(path, str(key)))

    walk(config, "")
    return out


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def stage_type(recipe: Recipe, name: str) -> str:
    return recipe.stages[name].type or name


def chain_problems(recipe: Recipe) -> list[str]:
    """One line per ``from_stage`` that cannot work: an unknown stage, the stage itself or a
    later one, or a stage that does not write that kind of output."""
    order = list(recipe.stages)
    problems = []
    for i, (name, config) in enumerate(recipe.stages.items()):
        for ref in stage_refs(config):
            where = f"stages.{name}.{ref.field}"
            if ref.stage not in recipe.stages:
                problems.append(f"{where}: no stage {ref.stage!r} in this recipe (stages: {', '.join(order)})")
                continue
            j = order.index(ref.stage)
            if j == i:
                problems.append(f"{where}: a stage cannot read its own output")
                continue
            if j > i:
                problems.append(f"{where}: stage {ref.stage!r} runs after {name!r}; a stage reads only what an "
                                f"earlier stage wrote, so put {ref.stage!r} before {name!r}")
                continue
            kind = stage_type(recipe, ref.stage)
            produces = get_stage(kind).produces
            if ref.wants == "data" and produces != "data":
                writers = [t for t in stage_names() if get_stage(t).produces == "data"]
                problems.append(f"{where}: stage {ref.stage!r} ({kind}) writes a model, not data; a data source "
                                f"can name a stage of type {', '.join(writers) or '(none registered)'}")
            elif ref.wants == "model" and produces == "data":
                problems.append(f"{where}: stage {ref.stage!r} ({kind}) writes data, not a model")
    return problems


def resolve_data_sources(config: BaseModel, output_of: Callable[[str], Path]):
    """A copy of ``config`` in which every ``{from_stage: NAME}`` data source also has
    ``path`` set to ``output_of(NAME)``, so data loading reads it like any file. The
    original (as written in the recipe) is unchanged."""

    def resolve(value: Any) -> Any:
        if isinstance(value, DataSource):
            if value.from_stage is None:
                return value
            return value.model_copy(update={"path": str(output_of(value.from_stage))})
        if isinstance(value, BaseModel):
            updates = {}
            for name in type(value).model_fields:
                old = getattr(value, name)
                new = resolve(old)
                if new is not old:
                    updates[name] = new
            # model_copy does not validate: the resolved source keeps path and from_stage.
            return value.model_copy(update=updates) if updates else value
        if isinstance(value, (list, tuple)):
            items = [resolve(v) for v in value]
            return type(value)(items) if any(a is not b for a, b in zip(items, value)) else value
        if isinstance(value, dict):
            items = {k: resolve(v) for k, v in value.items()}
            return items if any(items[k] is not value[k] for k in value) else value
        return value

    return resolve(config)
