"""Recipes: the typed schema and the YAML loader."""
from posttrain.recipe.load import RecipeError, load_recipe, validate_recipe
from posttrain.recipe.schema import Recipe

__all__ = ["Recipe", "RecipeError", "load_recipe", "validate_recipe"]
