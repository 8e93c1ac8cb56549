"""The models a run can train, by name (--model), and the one place that builds them.

Each model is a plain flax.linen module in its own file, called as model(images, train=...) on
normalized images [B, 28, 28, 1] and returning logits [B, num_classes]. Models with BatchNorm keep its
statistics in the "batch_stats" collection; everything else (steps, checkpoints, evaluate,
predict, export, serve) works for any model registered here.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmnist.core.models.lab import CNN
from jaxmnist.core.models.layers import textbook_forms
from jaxmnist.core.models.resnet import ResNet
from jaxmnist.datasets import num_classes
from jaxmnist.errors import UserError

# name -> a function of the run's recipe (its config, or the dict recorded with a checkpoint), which
# holds "num_classes" too: the class count of its --dataset.
MODELS: dict[str, Callable[[Any], nn.Module]] = {
    "lab": lambda recipe: CNN(num_classes=recipe["num_classes"], dropout=recipe["dropout"]),
    "resnet": lambda recipe: ResNet(num_classes=recipe["num_classes"], dropout=recipe["dropout"]),
}


def build_model(recipe: Any) -> nn.Module:
    """The model a recipe names, with one output per class of its dataset: a Config, or the config
    dict a run recorded."""
    recipe = {"dropout": 0.0, "dataset": "mnist", "model": "lab"} | (recipe if isinstance(recipe, dict) else recipe.to_dict())
    if recipe["model"] not in MODELS:  # a run of a model registered elsewhere: in a notebook, or in another copy
        raise UnknownModel(f"The run's --model {recipe['model']} is not registered in this code (it knows "
                           f"{', '.join(MODELS)}): register it in jaxmnist/core/models/__init__.py, or use the code "
                           "that trained it.")
    return MODELS[recipe["model"]](recipe | {"num_classes": num_classes(recipe["dataset"])})


class UnknownModel(UserError):
    """A recorded recipe names a model this code has not registered."""


def computation_digest(model: nn.Module, color: bool = False) -> str:
    """16 hex digits naming what model computes: its operations and shapes, traced in the layers'
    textbook forms (so every backend agrees) on one abstract image; not its parameters' values. A
    model edited to another activation or order of layers, every shape unchanged, gets another. JAX
    versions may print one model differently: compare digests of one JAX version only. Printed
    without colour (JAX colours it when stdout is a terminal); color=True is a terminal's digest."""
    image = jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32)
    # The recipe's --precision is set process-wide by training and not by evaluate: trace with
    # JAX's default, so both name one model alike. Abstract throughout: nothing is compiled.
    with textbook_forms(), jax.default_matmul_precision(None):
        variables = jax.eval_shape(lambda images: model.init(jax.random.key(0), images), image)
        program = jax.make_jaxpr(lambda variables, images: model.apply(variables, images))(variables, image)
    return hashlib.sha256(program.pretty_print(use_color=color).encode()).hexdigest()[:16]
