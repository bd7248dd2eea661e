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

    @property
    def seed(self) -> int:
        """The stage's seed: its own, else the recipe's."""
        return self.config.seed if self.config.seed is not None else self.recipe.seed

    def load_policy(self, *, trainable: bool = True):
        """The stage's input model on this process's device. ``trainable`` applies the
        stage's LoRA and gradient-checkpointing settings; without it the plain model comes
        back (e.g. a frozen reference)."""
        from posttrain.policy import LoraSettings, Policy
        from posttrain.training import get_accelerator, set_seed

        cfg = self.config
        lora = LoraSettings(**cfg.lora.model_dump()) if trainable and cfg.lora else None
        if lora is not None:
            set_seed(self.seed)  # LoRA initialises its adapters from the global RNG
        return Policy.load(self.input_model, revision=self.input_revision, dtype=self.recipe.model.dtype,
                           device=str(get_accelerator().device), lora=lora,
                           gradient_checkpointing=trainable and cfg.gradient_checkpointing)

