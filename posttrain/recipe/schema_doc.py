"""``posttrain schema``: the recipe reference, printed from the field docstrings."""

from __future__ import annotations

from pydantic import BaseModel

from posttrain.recipe.schema import Recipe
from posttrain.stages.registry import get_stage, stage_names


def _walk(model: type[BaseModel], prefix: str, out: list[str]) -> None:
    for name, field in model.model_fields.items():
        ann = field.annotation
        default = "required" if field.is_required() else f"default {field.get_default(call_default_factory=True)!r}"
        out.append(f"{prefix}{name}  ({default})\n    {(field.description or '').strip()}")
        inner = getattr(ann, "__args__", (ann,))
        for t in inner:
            if isinstance(t, type) and issubclass(t, BaseModel) and name != "stages":
                _walk(t, f"{prefix}{name}.", out)


def print_schema(stage: str | None = None) -> None:
    out: list[str] = []
    if stage is None:
        _walk(Recipe, "", out)
        names = stage_names()
    else:
        names = [stage]
    for n in names:
        _walk(get_stage(n).config_cls, f"stages.{n}.", out)
    print("\n".join(out))
