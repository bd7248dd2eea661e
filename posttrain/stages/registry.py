"""Stage name -> (config class, runner). Stage modules register themselves with
``@register_stage``; the recipe loader validates each ``stages.<name>`` section against
the class registered under that name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from posttrain.recipe.schema import TrainStageConfig
    from posttrain.stages.context import StageContext


@dataclass(frozen=True)
class StageSpec:
    name: str
    config_cls: type["TrainStageConfig"]
    run: Callable[["StageContext"], None]


_STAGES: dict[str, StageSpec] = {}


def register_stage(name: str, config_cls: type["TrainStageConfig"]):
    """Decorator for a stage runner ``run(ctx: StageContext) -> None``."""

    def wrap(run):
        _STAGES[name] = StageSpec(name, config_cls, run)
        return run

    return wrap


def stage_names() -> list[str]:
    _load_builtin_stages()
    return list(_STAGES)


def get_stage(name: str) -> StageSpec:
    _load_builtin_stages()
    try:
        return _STAGES[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r} (known: {', '.join(_STAGES) or 'none'})") from None


def _load_builtin_stages() -> None:
    import posttrain.stages  # noqa: F401  (its __init__ imports and so registers every stage)
