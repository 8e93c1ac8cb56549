"""Write tests/data/golden.json: the numbers a short lab run on the committed fixture computes.

    python scripts/golden.py            # print them
    python scripts/golden.py --write    # and store them, after a deliberate change of the maths

The run: the lab's recipe (rotation, Adam, batch 64) on the first 256 training and 100 test images
of real MNIST (tests/data/mnist_small.npz), 2 epochs of 4 steps, every step's loss logged.
tests/test_golden.py repeats it and fails, saying what moved, when any number leaves its tolerance.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "data" / "mnist_small.npz"
GOLDEN = ROOT / "tests" / "data" / "golden.json"


def golden_run(model: str = "lab") -> dict:
    """Every logged loss, the test count, and each parameter's sum and sum of squares after the run."""
    import jax

    from jaxmnist.config import Config
    from jaxmnist.runtime.checkpoint import Checkpoints
    from jaxmnist.data import MNIST
    from jaxmnist.runtime.run import train_and_evaluate

    arrays = np.load(FIXTURE)
    dataset = MNIST(arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"])
    with tempfile.TemporaryDirectory() as workdir:
        config = Config(model=model, workdir=workdir, epochs=2, log_every=1, eval_batch_size=50, allow_small_data=True,
                        progress=False, cache_dir="")
        records = train_and_evaluate(config, dataset)
        losses = [r["loss"] for r in map(json.loads, (Path(workdir) / "metrics.jsonl").read_text().splitlines())
                  if r["kind"] == "train"]
        checkpoints = Checkpoints(Path(workdir) / "checkpoints", read_only=True)
        params = checkpoints.restore_variables(checkpoints.latest_step())[0]["params"]
    leaves = [(path, np.asarray(leaf)) for path, leaf in jax.tree_util.tree_leaves_with_path(params)]
    return {
        "losses": losses,
        "correct": [r["correct"] for r in records],
        "parameters": {jax.tree_util.keystr(path): [float(np.sum(leaf, dtype=np.float64)),
                                                     float(np.sum(np.square(leaf, dtype=np.float64)))]
                       for path, leaf in leaves},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"store the numbers in {GOLDEN.relative_to(ROOT)}")
    args = parser.parse_args()
    import jax

    numbers = {"lab": golden_run("lab"), "resnet": golden_run("resnet")}
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    numbers["made_with"] = {"jax": jax.__version__, "machine": platform.machine(), "avx512": " avx512f" in flags}
    text = json.dumps(numbers, indent=1)
    print(text)
    if args.write:
        GOLDEN.write_text(text + "\n")


if __name__ == "__main__":
    main()
