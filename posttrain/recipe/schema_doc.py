"""``posttrain schema``: the recipe reference, printed from the field docstrings."""

from __future__ import annotations

from pydantic import BaseModel

from posttrain.errors import PosttrainError
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
    """Print the recipe's fields, then each stage type's; with ``stage``, that type's only.
    A stage's section is ``stages.<name>``, where the name is the type unless the section
    sets ``type:``."""
    out: list[str] = []
    if stage is None:
        _walk(Recipe, "", out)
        names = stage_names()
    elif stage in stage_names():
        names = [stage]
    else:
        raise PosttrainError(f"unknown stage type {stage!r} (known: {', '.join(stage_names())})")
    for n in names:
        spec = get_stage(n)
        if stage is None:
            out.append(f"\n# type {n}: {_first_line(spec.config_cls.__doc__)} Produces: {spec.produces}.")
        _walk(spec.config_cls, f"stages.{n}.", out)
    print("\n".join(out))


def _first_line(doc: str | None) -> str:
    return " ".join((doc or "").strip().split("\n\n")[0].split())
