"""Several seeds of one recipe trained in one program (jax.vmap), beside one seed alone.

    python scripts/seeds_together.py --idx-dir ../shared/data/mnist-idx --seeds 0 1 2 3 --out seeds.json

Trains the lab recipe's first --steps steps (default: one epoch) for one seed alone and for all
--seeds together (core.loops.run_steps_of_seeds), each compiled first and then timed, and reports
images per second per model for both, and how far each seed's weights trained together are from
the same seed trained alone (the same arithmetic batched differently: float rounding only). A
script, not a test: it measures; scripts/gpu_check.sh runs it on a GPU, where it is meant to pay.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxmnist.config import Config
from jaxmnist.core.loops import DeviceDataset, TrainTotals, epoch_order, num_batches, run_steps_device, run_steps_of_seeds
from jaxmnist.core.steps import StepOptions, create_train_state, derive_keys
from jaxmnist import data
from jaxmnist.runtime.parallel import configure_jax


def start(config: Config, seed_keys, dataset: DeviceDataset, steps_in_epoch: int):
    """A seed's fresh state, zero totals, epoch 1's order and its augmentation key; vmapped over a
    stack of seeds' keys, the same for each (one optimizer, so the states stack)."""
    order = epoch_order(jax.random.fold_in(seed_keys.shuffle, 1), len(dataset.images), config.batch_size)
    state = create_train_state(config, seed_keys.init, steps_in_epoch)
    return state, jax.tree.map(jnp.asarray, TrainTotals.zeros()), order, seed_keys.augment


def timed(run, *args) -> tuple[float, object]:
    """Seconds of the second call (the first one compiles), and its result."""
    jax.block_until_ready(run(*args))
    start = time.perf_counter()
    result = jax.block_until_ready(run(*args))
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idx-dir", required=True, help="the four MNIST IDX files")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--steps", type=int, help="steps to time (default: one epoch)")
    parser.add_argument("--limit", type=int, help="train on the first N training images only (a quick dry run)")
    parser.add_argument("--out", default="seeds.json")
    args = parser.parse_args()
    config = Config(cache_dir="")
    configure_jax(config)
    mnist = data.load(idx_dir=args.idx_dir)
    images, labels = mnist.train_images[:args.limit], mnist.train_labels[:args.limit]
    dataset = jax.device_put(DeviceDataset(images, labels))
    steps_in_epoch = num_batches(len(images), config.batch_size)
    steps = min(args.steps or steps_in_epoch, steps_in_epoch)
    options = StepOptions.from_config(config)

    keys = [derive_keys(seed) for seed in args.seeds]
    alone = start(config, keys[0], dataset, steps_in_epoch)
    together = jax.vmap(lambda seed_keys: start(config, seed_keys, dataset, steps_in_epoch))(
        jax.tree.map(lambda *leaves: jnp.stack(leaves), *keys))
    copy = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731 - the runs donate their inputs
    alone_seconds, (state, _, _) = timed(lambda s: run_steps_device(*copy(s[:2]), dataset, s[2], steps, s[3], options),
                                         alone)
    together_seconds, (states, _, _) = timed(
        lambda s: run_steps_of_seeds(*copy(s[:2]), dataset, s[2], steps, s[3], options), together)
    first_together = jax.tree.map(lambda leaf: leaf[0], states.params)
    difference = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                     zip(jax.tree.leaves(first_together), jax.tree.leaves(state.params)))
    images_per_step = config.batch_size
    result = {
        "device": f"{jax.devices()[0].platform} ({jax.devices()[0].device_kind})", "jax": jax.__version__,
        "steps": steps, "seeds": len(args.seeds),
        "alone_images_per_second": round(steps * images_per_step / alone_seconds, 1),
        "together_images_per_second_per_model": round(steps * images_per_step / together_seconds, 1),
        "together_over_alone_per_model": round(alone_seconds / together_seconds, 3),
        "max_weight_difference_seed_0": difference,
    }
    print(json.dumps(result, indent=1))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    if not np.isfinite(difference) or difference > 1e-3:
        raise SystemExit(f"seed {args.seeds[0]} trained together differs from it alone by {difference:g}")


if __name__ == "__main__":
    main()
