"""What the pipeline hands a stage runner."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from posttrain.metrics import MetricsWriter
from posttrain.recipe.schema import Recipe, TrainStageConfig


@dataclass
class StageContext:
    name: str
    """The stage's name in the recipe (``sft``, ``dpo``, ...)."""
    config: TrainStageConfig
    """This stage's validated section of the recipe."""
    recipe: Recipe
    """The whole recipe (model dtype, metrics sinks, ...)."""
    input_model: str
    """Weights to start from: the previous stage's output folder, or the recipe's model."""
    input_revision: str | None
    """Hub revision of ``input_model`` (first stage only)."""
    stage_dir: Path
    """This stage's folder in the run directory."""
    metrics: MetricsWriter
    """The stage's metrics sink (``stage_dir/metrics.jsonl``)."""

    @property
    def model_dir(self) -> Path:
        """Where the runner must leave its final model, as a ``save_pretrained`` folder."""
        return self.stage_dir / "model"

    @property
    def checkpoint_dir(self) -> Path:
        """Where resumable ``stepN-tokensM`` checkpoints go."""
        return self.stage_dir / "checkpoints"
