"""What the pipeline hands a stage runner."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from posttrain.errors import PosttrainError
from posttrain.metrics import MetricsWriter
from posttrain.recipe.schema import ModelFromStage, Recipe, StageConfig
from posttrain.stages.registry import StageSpec, get_stage


@dataclass
class StageContext:
    name: str
    """The stage's name in the recipe (``sft``, ``dpo``, ``rlvr_math``, ...): its folder."""
    config: StageConfig
    """This stage's validated section of the recipe, ``{from_stage: ...}`` data sources
    already resolved to the files they name (their ``path`` is set)."""
    recipe: Recipe
    """The whole recipe (model dtype, metrics sinks, the other stages, ...)."""
    input_model: str
    """Weights to start from: the output of the latest earlier stage that trains the policy,
    or the recipe's model."""
    input_revision: str | None
    """Hub revision of ``input_model`` (when it is the recipe's model)."""
    stage_dir: Path
    """This stage's folder in the run directory."""
    metrics: MetricsWriter
    """The stage's metrics sink (``stage_dir/metrics.jsonl``)."""
    type: str | None = None
    """The stage's runner (the section's ``type``); None means the same as ``name``."""
    run_dir: Path | None = None
    """The run directory; None means ``stage_dir``'s parent."""

    @property
    def spec(self) -> StageSpec:
        return get_stage(self.type or self.name)

    @property
    def output_path(self) -> Path:
        """Where the runner must leave its output: the ``model`` folder
        (``save_pretrained``) for a stage that produces a policy or a model, ``data.jsonl``
        for one that produces data."""
        return self.spec.output(self.stage_dir)

    @property
    def model_dir(self) -> Path:
        """Where a model-producing runner leaves its final model, as a ``save_pretrained``
        folder."""
        return self.stage_dir / "model"

    @property
    def data_path(self) -> Path:
        """Where a data-producing runner writes its rows (JSONL); later stages read it with
        ``{from_stage: <this stage's name>}``."""
        return self.stage_dir / "data.jsonl"

    @property
    def checkpoint_dir(self) -> Path:
        """Where resumable ``stepN-tokensM`` checkpoints go."""
        return self.stage_dir / "checkpoints"

    @property
    def seed(self) -> int:
        """The stage's seed: its own, else the recipe's."""
        return self.config.seed if self.config.seed is not None else self.recipe.seed

    def stage_output(self, name: str) -> Path:
        """The output of the earlier stage ``name`` of this recipe (its ``model`` folder or
        its ``data.jsonl``). The recipe loader has already checked that ``name`` runs
        earlier; the pipeline, that it finished."""
        config = self.recipe.stages.get(name)
        if config is None:
            raise PosttrainError(f"stages.{self.name}: no stage {name!r} in this recipe")
        path = get_stage(config.type or name).output((self.run_dir or self.stage_dir.parent) / name)
        if not path.exists():
            raise PosttrainError(f"stages.{self.name}: stage {name!r} has not written {path}")
        return path

    def resolve_model(self, value: str | ModelFromStage | None) -> str | None:
        """A model field's value as something ``from_pretrained`` loads: a hub id or folder
        as written, or the folder of the stage that ``{from_stage: NAME}`` names."""
        if isinstance(value, ModelFromStage):
            return str(self.stage_output(value.from_stage))
        return value

    def load_policy(self, *, trainable: bool = True):
        """The stage's input model on this process's device. ``trainable`` applies the
        stage's LoRA and gradient-checkpointing settings (when its config has them); without
        it the plain model comes back (e.g. a frozen reference)."""
        from posttrain.policy import LoraSettings, Policy
        from posttrain.training import get_accelerator, set_seed

        cfg = self.config
        lora_cfg = getattr(cfg, "lora", None)
        lora = LoraSettings(**lora_cfg.model_dump()) if trainable and lora_cfg else None
        if lora is not None:
            set_seed(self.seed)  # LoRA initialises its adapters from the global RNG
        return Policy.load(self.input_model, revision=self.input_revision, dtype=self.recipe.model.dtype,
                           device=str(get_accelerator().device), lora=lora, trainable=trainable,
                           gradient_checkpointing=trainable and getattr(cfg, "gradient_checkpointing", False))
