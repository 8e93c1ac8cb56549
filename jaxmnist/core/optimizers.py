"""The optimizers a run can use (--optimizer): the one place to add one.

Each entry names itself for the figures and the console (label), explains itself for --help, and
builds an optax transformation from the run's learning-rate schedule and --weight-decay. Weight
decay shrinks the kernels only (conv and dense), never the biases or BatchNorm's scales.

optax is imported when an optimizer is built, not when this table is read, so that `--help` and the
flag checks list the names without loading JAX.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple


class Optimizer(NamedTuple):
    label: str  # as figures and the console name it: "Adam"
    help: str  # one phrase for --help
    takes_weight_decay: bool  # --weight-decay above 0 is refused where False
    build: Callable[[Any, float], Any]  # (schedule, weight_decay) -> optax.GradientTransformation


def _kernels_only(params: Any) -> Any:
    """The mask weight decay uses: True for every kernel, False for biases and scales."""
    import jax  # noqa: PLC0415 - see the module's docstring

    return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "kernel", params)


def _adam(schedule: Any, weight_decay: float) -> Any:
    import optax  # noqa: PLC0415

    return optax.adam(schedule, b1=0.9, b2=0.999, eps=1e-8)  # the lab's torch.optim.Adam defaults


def _adamw(schedule: Any, weight_decay: float) -> Any:
    import optax  # noqa: PLC0415

    return optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay, mask=_kernels_only)


def _sgd(schedule: Any, weight_decay: float) -> Any:
    import optax  # noqa: PLC0415

    # PyTorch's SGD(momentum=0.9, weight_decay=W): the decay joins the gradient before the momentum.
    return optax.chain(optax.add_decayed_weights(weight_decay, mask=_kernels_only),
                       optax.sgd(schedule, momentum=0.9))


OPTIMIZERS: dict[str, Optimizer] = {
    "adam": Optimizer("Adam", "Adam with the lab's b1 0.9, b2 0.999, eps 1e-8", False, _adam),
    "adamw": Optimizer("AdamW", "Adam with decoupled --weight-decay (optax.adamw)", True, _adamw),
    "sgd": Optimizer("SGD", "SGD with momentum 0.9 and --weight-decay added to the gradient; it wants a larger --lr, "
                     "such as 0.05", True, _sgd),
}
