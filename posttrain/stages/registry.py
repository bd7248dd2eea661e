"""Stage type -> (config class, runner, what it produces). Stage modules register
themselves with ``@register_stage``; the recipe loader validates each ``stages.<name>``
section against the class registered under the section's ``type`` (by default its name).

What a stage produces decides how the pipeline chains it:

- ``policy`` (SFT, DPO, RLVR): writes ``<stage>/model``, the next stage's input; the
  recipe's ``eval:`` runs on it.
- ``model`` (a reward model): writes ``<stage>/model``, which is not a policy. The policy
  passes through to the next stage unchanged; a later stage names the folder with
  ``{from_stage: NAME}`` in a model field (``StageContext.resolve_model``). No policy eval.
- ``data`` (preference pairs sampled from the current policy): writes
  ``<stage>/data.jsonl``. The policy passes through; a later stage's data mixture reads it
  with ``{from_stage: NAME}``. No policy eval.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal, get_args

if TYPE_CHECKING:
    from posttrain.recipe.schema import StageConfig
    from posttrain.stages.context import StageContext

Produces = Literal["policy", "model", "data"]

OUTPUT_NAMES: dict[str, str] = {"policy": "model", "model": "model", "data": "data.jsonl"}
"""Where, inside its folder, a stage of each kind leaves its output."""


@dataclass(frozen=True)
class StageSpec:
    name: str
    """The stage type: what a recipe's ``type:`` (or a stage's key) names."""
    config_cls: type["StageConfig"]
    run: Callable[["StageContext"], None]
    produces: Produces = "policy"
    """``policy``, ``model`` or ``data``; see the module docstring."""

    @property
    def trains_policy(self) -> bool:
        """Its output is the next stage's input model (otherwise the input passes through)."""
        return self.produces == "policy"

    def output(self, stage_dir: Path) -> Path:
        """The file or folder this stage leaves in ``stage_dir`` when it finishes."""
        return Path(stage_dir) / OUTPUT_NAMES[self.produces]


_STAGES: dict[str, StageSpec] = {}


def register_stage(name: str, config_cls: type["StageConfig"], *, produces: Produces = "policy"):
    """Decorator for a stage runner ``run(ctx: StageContext) -> None``. ``config_cls``
    subclasses ``StageConfig`` (``TrainStageConfig`` for a training stage). A runner leaves
    its output at ``ctx.output_path``: the ``model`` folder (``save_pretrained``) for
    ``produces="policy"`` or ``"model"``, ``data.jsonl`` for ``produces="data"``."""
    from posttrain.recipe.schema import StageConfig

    if produces not in get_args(Produces):
        raise ValueError(f"register_stage({name!r}): produces must be one of {get_args(Produces)}, got {produces!r}")
    if not (isinstance(config_cls, type) and issubclass(config_cls, StageConfig)):
        raise TypeError(f"register_stage({name!r}): the config class must subclass posttrain.recipe.schema.StageConfig")

    def wrap(run):
        _STAGES[name] = StageSpec(name, config_cls, run, produces)
        return run

    return wrap


def stage_names() -> list[str]:
    """The registered stage types."""
    _load_builtin_stages()
    return list(_STAGES)


def get_stage(name: str) -> StageSpec:
    """The spec of a stage type."""
    _load_builtin_stages()
    try:
        return _STAGES[name]
    except KeyError:
        raise KeyError(f"unknown stage type {name!r} (known: {', '.join(_STAGES) or 'none'})") from None


def _load_builtin_stages() -> None:
    import posttrain.stages  # noqa: F401  (its __init__ imports and so registers every stage)
