"""A model soup as a recipe stage: the weighted average of several models of one
architecture, as OLMo 2 made its final checkpoints. The averaging itself is
``posttrain.soup.soup``; this module only names the ingredients from the recipe."""

from __future__ import annotations

from pydantic import model_validator

from posttrain.recipe.schema import ModelFromStage, StageConfig
from posttrain.stages.registry import register_stage


class SoupConfig(StageConfig):
    """Average the stage's input model and/or the listed models into this stage's model,
    which the next stage starts from and the recipe's ``eval:`` scores."""

    models: list[str | ModelFromStage] = []
    """Ingredients besides the input: model folders or hub ids, or ``{from_stage: NAME}``
    for a model an earlier stage of this recipe wrote (e.g. two RLVR runs)."""
    include_input: bool = True
    """Put the stage's input model (the previous policy stage's output) first among the
    ingredients."""
    weights: list[float] | None = None
    """One weight per ingredient, input first when included; normalized to sum 1.
    Uniform when absent."""
    @model_validator(mode="after")
    def _count(self):
        n = len(self.models) + int(self.include_input)
        if n < 2:
            raise ValueError(f"a soup needs at least two ingredients, got {n} (add models, or include_input)")
        if self.weights is not None:
            if len(self.weights) != n:
                raise ValueError(f"weights: {len(self.weights)} weights for {n} ingredients")
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError("weights: must be non-negative with a positive sum")
        return self


@register_stage("soup", SoupConfig)
def run_soup(ctx) -> None:
    from posttrain.errors import PosttrainError
    from posttrain.soup import soup
    from posttrain.training import get_accelerator

    cfg: SoupConfig = ctx.config
    if cfg.include_input and ctx.input_revision is not None:
        raise PosttrainError(f"stages.{ctx.name}: a soup reads model folders, not a hub revision "
                             f"({ctx.input_model}@{ctx.input_revision}); start from a folder")
    ingredients = ([ctx.input_model] if cfg.include_input else []) + [ctx.resolve_model(m) for m in cfg.models]
    accelerator = get_accelerator()
    if accelerator.is_main_process:
        soup(ingredients, ctx.output_path, cfg.weights, overwrite=True)
    accelerator.wait_for_everyone()
