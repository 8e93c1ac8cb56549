"""`python -m jaxmnist.summary`: the network's structure, layer by layer (the lab's Figure 3).

    python -m jaxmnist.summary                 # the lab's CNN
    python -m jaxmnist.summary --model resnet

For every layer in the order the model calls it: its name, its output shape for one image, its
parameters and its multiply-adds per image, then the totals. Traced with jax.eval_shape, so
nothing is computed and no device is needed.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

from jaxmnist.config import MODEL_NAMES, OneLineParser
from jaxmnist.apps.console import run_command, setup_console


class Layer(NamedTuple):
    """One row of the table."""

    name: str  # "conv1 (Conv)", "block1/Conv_0 (Conv)", "relu", "max_pool 2x2"
    depth: int  # how deep in the module tree (0: a layer of the model itself)
    output: tuple[int, ...]  # one image's output shape, e.g. (14, 14, 16)
    parameters: int  # trainable parameters the layer owns itself (not its sub-layers')
    statistics: int  # BatchNorm's running means and variances
    multiply_adds: int  # per image


def layers(model) -> list[Layer]:
    """The model's layers in call order, from one abstract forward pass of a 28x28x1 image."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from jaxmnist.core.models.layers import recording_functions

    rows = _Rows()

    def record(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__" or not module.scope.path:  # the model itself: its layers are the rows
            return next_fun(*args, **kwargs)
        entry = {"module": module, "input": args[0].shape}
        rows.append(entry)  # now, and filled in when the call returns: a block precedes its layers
        rows.open.append(module)
        entry["output"] = next_fun(*args, **kwargs)
        rows.open.pop()
        return entry["output"]

    def forward(key, image):
        with nn.intercept_methods(record), recording_functions(rows):
            return model.init(key, image)

    variables = jax.eval_shape(forward, jax.random.key(0), jnp.zeros((1, 28, 28, 1), jnp.float32))
    return [_row(entry, variables) for entry in rows]


class _Rows(list):
    """The rows being recorded; a function's row (relu, max_pool) takes the depth of the modules
    open around it."""

    def __init__(self):
        super().__init__()
        self.open: list = []  # the modules whose __call__ is running

    def append(self, entry) -> None:
        if isinstance(entry, tuple):  # (name, output) from jaxmnist.core.models.layers
            entry = {"function": entry[0], "output": entry[1], "depth": len(self.open)}
        super().append(entry)


def _row(entry, variables) -> Layer:
    if "function" in entry:
        return Layer(entry["function"], entry["depth"], tuple(entry["output"].shape[1:]), 0, 0, 0)
    module, output = entry["module"], entry["output"]
    path = module.scope.path  # ("block1", "Conv_0")
    own = lambda collection: sum(  # noqa: E731 - the module's own arrays, not its children's
        math.prod(leaf.shape) for leaf in _subtree(variables.get(collection, {}), path).values() if hasattr(leaf, "shape"))
    kind = type(module).__name__
    if kind == "Dropout":  # its rate is the recipe's: 0 means it passes the input through
        kind = f"Dropout {module.rate:g}" if module.rate else "Dropout 0: off"
    return Layer(f"{'/'.join(path)} ({kind})", len(path) - 1, tuple(output.shape[1:]),
                 own("params"), own("batch_stats"), _multiply_adds(module, entry["input"], output.shape))


def _subtree(tree, path):
    for name in path:
        tree = tree.get(name, {})
    return tree


def _multiply_adds(module, input_shape, output_shape) -> int:
    """Per image: a convolution's output elements times its kernel's reach; a dense layer's weights."""
    kind = type(module).__name__
    if kind == "Conv":
        return math.prod(output_shape[1:]) * math.prod(module.kernel_size) * input_shape[-1] // module.feature_group_count
    if kind == "Dense":
        return input_shape[-1] * output_shape[-1]
    return 0


def table(rows: list[Layer]) -> str:
    """The rows as an aligned text table with totals."""
    header = ("layer", "output shape", "parameters", "multiply-adds")
    lines = [(("  " * r.depth) + r.name, "x".join(map(str, r.output)), f"{r.parameters:,}" if r.parameters else "",
              f"{r.multiply_adds:,}" if r.multiply_adds else "") for r in rows]
    total_parameters, total_statistics = sum(r.parameters for r in rows), sum(r.statistics for r in rows)
    lines.append(("total", "", f"{total_parameters:,}", f"{sum(r.multiply_adds for r in rows):,}"))
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(4)]
    render = lambda line: "  ".join(  # noqa: E731 - names left-aligned, numbers right-aligned
        cell.ljust(width) if i < 2 else cell.rjust(width) for i, (cell, width) in enumerate(zip(line, widths)))
    text = [render(header), render(tuple("-" * w for w in widths)), *map(render, lines[:-1]),
            render(tuple("-" * w for w in widths)), render(lines[-1])]
    if total_statistics:
        text.append(f"(and {total_statistics:,} BatchNorm running statistics, which are not trained)")
    return "\n".join(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m jaxmnist.summary", description="Print a model's layers: output shapes, "
                           "parameters and multiply-adds per image.")
    parser.add_argument("--model", default="lab", choices=MODEL_NAMES, help="which registered model (default: lab)")
    args = parser.parse_args(argv)
    setup_console()
    return run_command(lambda: _print_table(args.model))


def _print_table(name: str) -> None:
    from jaxmnist.core.models import build_model  # JAX loads here, after the flags

    print(table(layers(build_model({"model": name}))), flush=True)
