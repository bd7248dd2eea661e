"""Read a recipe YAML, apply ``--set`` overrides, and validate it whole before any model
loads. Every problem becomes a ``RecipeError`` whose message names the field path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from posttrain.errors import PosttrainError
from posttrain.recipe.schema import Recipe
from posttrain.stages.registry import get_stage, stage_names


class RecipeError(PosttrainError):
    """A recipe that cannot run; the message is one line naming the field and the problem."""


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise RecipeError(f"{path}:{where} is not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of fields, got {type(raw).__name__}")
    for item in overrides or []:
        apply_override(raw, item)
    return validate_recipe(raw)


def apply_override(raw: dict, item: str) -> None:
    """Apply one ``dotted.path=value`` override in place; the value is parsed as YAML."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise RecipeError(f"--set {item!r}: expected dotted.path=value")
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part) if isinstance(node, dict) else None
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise RecipeError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(value)


def _format(err: ValidationError, prefix: str = "") -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    loc = ".".join(x for x in (prefix, loc) if x)
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown field"
    elif first["type"] == "missing":
        msg = "required field is missing"
    return f"{loc}: {msg}" if loc else msg


def validate_recipe(raw: dict[str, Any]) -> Recipe:
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, dict) or not stages_raw:
        raise RecipeError("stages: a recipe needs at least one stage, e.g. stages: {sft: {...}}")
    stages = {}
    for name, section in stages_raw.items():
        if name not in stage_names():
            raise RecipeError(f"stages.{name}: unknown stage (known: {', '.join(stage_names())})")
        if not isinstance(section, dict):
            raise RecipeError(f"stages.{name}: expected a mapping of fields")
        section = {**section}
        section.setdefault("seed", raw.get("seed", 0))
        try:
            stages[name] = get_stage(name).config_cls.model_validate(section)
        except ValidationError as e:
            raise RecipeError(_format(e, f"stages.{name}")) from None
    try:
        return Recipe.model_validate({**raw, "stages": stages})
    except ValidationError as e:
        raise RecipeError(_format(e)) from None
