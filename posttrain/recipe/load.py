"""Read a recipe YAML, apply ``--set`` overrides, and validate it whole before any model
loads. Every problem becomes a ``RecipeError`` whose message names the field path."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from posttrain.errors import PosttrainError
from posttrain.recipe.chain import chain_problems
from posttrain.recipe.schema import Recipe
from posttrain.stages.registry import get_stage, stage_names

STAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\Z")
"""A stage's name is its folder in the run directory."""
RESERVED_NAMES = {"base": "the run directory's folder for the tiny starting model"}


class RecipeError(PosttrainError):
    """A recipe that cannot run; the message is one line naming the field and the problem."""


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe file")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except DuplicateKeyError as e:
        raise RecipeError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise RecipeError(f"{path}:{where} is not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of fields, got {type(raw).__name__}")
    for item in overrides or []:
        apply_override(raw, item)
    return validate_recipe(raw)


class DuplicateKeyError(ValueError):
    """A mapping in the recipe file names one key twice."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys without a word; in a recipe that silently
    drops a stage (``rlvr:`` written twice for two RL stages), so it is an error."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                hint = ""
                if isinstance(key, str) and key in stage_names():
                    hint = f" (to run {key} twice, give each stage its own name and type: {key})"
                raise DuplicateKeyError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}{hint}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


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
        where = f"stages.{name}"
        if not isinstance(name, str) or not STAGE_NAME.match(name):
            raise RecipeError(f"{where}: a stage name is its folder in the run directory: letters, digits, "
                              "'_' and '-', starting with a letter or digit")
        if name in RESERVED_NAMES:
            raise RecipeError(f"{where}: {name!r} is {RESERVED_NAMES[name]}; name the stage otherwise and give "
                              "its runner with type:")
        if section is None:
            section = {}
        if not isinstance(section, dict):
            raise RecipeError(f"{where}: expected a mapping of fields")
        kind = section.get("type") or name
        if kind not in stage_names():
            known = ", ".join(stage_names())
            if section.get("type"):
                raise RecipeError(f"{where}.type: unknown stage type {kind!r} (known: {known})")
            raise RecipeError(f"{where}: unknown stage type {name!r} (known: {known}); a stage named otherwise "
                              "says which it is with type:")
        section = {**section, "type": kind}
        section.setdefault("seed", raw.get("seed", 0))
        try:
            stages[name] = get_stage(kind).config_cls.model_validate(section)
        except ValidationError as e:
            raise RecipeError(_format(e, where)) from None
    try:
        recipe = Recipe.model_validate({**raw, "stages": stages})
    except ValidationError as e:
        raise RecipeError(_format(e)) from None
    problems = chain_problems(recipe)
    if problems:
        raise RecipeError(problems[0])
    return recipe
