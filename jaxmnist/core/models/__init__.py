"""The models a run can train, by name (--model), and the one place that builds them.

Each model is a plain flax.linen module in its own file, called as model(images, train=...) on
normalized images [B, 28, 28, 1] and returning logits [B, 10]. Models with BatchNorm keep its
statistics in the "batch_stats" collection; everything else (steps, checkpoints, evaluate,
predict, export, serve) works for any model registered here.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn

from jaxmnist.core.models.lab import CNN
from jaxmnist.core.models.resnet import ResNet

# name -> a function of the run's recipe (its config, or the dict recorded with a checkpoint).
MODELS: dict[str, Callable[[Any], nn.Module]] = {
    "lab": lambda recipe: CNN(dropout=recipe["dropout"]),
    "resnet": lambda recipe: ResNet(dropout=recipe["dropout"]),
}


def build_model(recipe: Any) -> nn.Module:
    """The model a recipe names: a Config, or the config dict a run recorded (older runs: the lab's)."""
    recipe = recipe if isinstance(recipe, dict) else recipe.to_dict()
    return MODELS[recipe.get("model", "lab")]({"dropout": 0.0} | recipe)
