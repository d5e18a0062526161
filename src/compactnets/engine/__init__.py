"""Training engine: optimisation, schedules, recipes, the training loop, evaluation and prediction."""

from .evaluate import evaluate, load_model, predict_images
from .recipes import RecipeError, list_recipes, read_recipe
from .train import add_train_args

__all__ = [
    "RecipeError",
    "add_train_args",
    "evaluate",
    "list_recipes",
    "load_model",
    "predict_images",
    "read_recipe",
]
