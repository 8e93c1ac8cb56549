"""Benchmark jaxmnist's default recipe on real MNIST, optionally beside the lab's PyTorch script.

    python scripts/bench.py --idx-dir ../shared/data/mnist-idx --epochs 5 --out bench.json
    python scripts/bench.py --idx-dir ../shared/data/mnist-idx --recipe improved --out improved.json
    python scripts/bench.py --idx-dir ../shared/data/mnist-idx --torch-python venv-torch/bin/python \
        --repeats 3 --out bench.json     # whole runs, start to exit, side by side

Prints and writes as JSON: the device, compile seconds, median training seconds per epoch,
images per second, the training step's floating-point operations per image (XLA's cost analysis)
and the FLOP/s that speed achieves, evaluation seconds, test accuracy and peak memory. The in-process run uses
the persistent compilation cache as training does (--cache-dir; '' for a cold start). --startup
times whole processes from their start to the first step, with a cold and then a warm cache. With --torch-python it
also times complete runs of `python -m jaxmnist.train` and of the lab's script (reference/lab_pytorch.py),
alternating, on the same data, and reports the ratios. A script, not a test: wall times drift with
the machine's load, so compare only ratios taken in one run.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from child_runs import (  # scripts/, on sys.path when run as a script
    ROOT,
    run_or_exit,
    train_command,
)

from jaxmnist.config import RECIPES, Config, parse_config
from jaxmnist.core.loops import evaluate, stack_batches
from jaxmnist.core.steps import Batch, StepOptions, create_train_state, train_step
from jaxmnist import data
from jaxmnist.runtime import parallel
from jaxmnist.runtime.reporting import quiet_libraries
from jaxmnist.runtime.parallel import configure_jax
from jaxmnist.runtime.run import train_and_evaluate

TORCH_SCRIPT = ROOT / "reference" / "lab_pytorch.py"


def train_step_flops(config: Config) -> float:
    """Floating-point operations of one training step on one batch (forward, backward, Adam), from
    XLA's cost analysis of the compiled step: the work the machine must do, whatever the speed."""
    state = create_train_state(config, jax.random.key(0), steps_in_epoch=1)
    batch = Batch(np.zeros((config.batch_size, 28, 28), np.uint8), np.zeros(config.batch_size, np.int32),
                  np.ones(config.batch_size, np.float32))
    step = jax.jit(train_step, static_argnums=3).lower(state, batch, jax.random.key(0), StepOptions.from_config(config))
    analysis = step.compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis  # older JAX: one dict per program
    return float(analysis["flops"])


def measure_in_process(config: Config, dataset: data.MNIST) -> dict:
    """Train with the default recipe and time compile, epochs and evaluation separately."""
    start = time.perf_counter()
    records = train_and_evaluate(config, dataset)
    total = time.perf_counter() - start
    train_seconds = [r["train_seconds"] for r in records]
    steady = train_seconds[1:] or train_seconds  # epoch 1 also pays for compilation
    from jaxmnist.apps.evaluate import restore_model

    model, variables, _, _ = restore_model(config.workdir, "latest")
    batches = jax.device_put(stack_batches(dataset.test_images, dataset.test_labels, config.eval_batch_size))
    jax.block_until_ready(evaluate(model, variables, batches))  # compile
    eval_seconds = []
    for _ in range(5):
        t = time.perf_counter()
        jax.block_until_ready(evaluate(model, variables, batches))
        eval_seconds.append(time.perf_counter() - t)
    device = jax.devices()[0]
    memory = device.memory_stats() if hasattr(device, "memory_stats") else None
    flops_per_image = train_step_flops(config) / config.batch_size
    images_per_second = len(dataset.train_images) / statistics.median(steady)
    return {
        "device": parallel.describe(parallel.make_mesh(config.devices)),
        "jax": jax.__version__, "recipe": config.recipe, "precision": config.precision, "loop": config.loop,
        "deterministic": config.deterministic,
        "training_images": len(dataset.train_images),
        "epochs": len(records),
        "compile_seconds_estimate": round(train_seconds[0] - statistics.median(steady), 3),
        "train_seconds_after_compile": round(sum(train_seconds) - (train_seconds[0] - statistics.median(steady)), 3),
        "median_train_seconds_per_epoch": round(statistics.median(steady), 3),
        "images_per_second": round(images_per_second, 1),
        "train_mflops_per_image": round(flops_per_image / 1e6, 2),  # XLA's count: forward, backward, Adam's share
        "achieved_gflops_per_second": round(flops_per_image * images_per_second / 1e9, 2),
        "eval_seconds_median": round(statistics.median(eval_seconds), 4),
        "test_accuracy_per_epoch": [r["test_accuracy"] for r in records],
        "in_process_total_seconds": round(total, 3),
        "peak_host_memory_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_device_memory_mib": round(memory["peak_bytes_in_use"] / 2**20, 1) if memory else None,
    }


def time_to_first_step(source: list[str], cache_dir: Path, workdir: Path) -> dict:
    """Seconds from starting `python -m jaxmnist.train` to its device line (imports, data, the
    backend) and to its first training line, printed once the first step has run (so: plus
    initialisation and compilation), with the compilation cache in cache_dir. The run is then
    stopped; nothing else is timed."""
    command = train_command(*source, "--workdir", str(workdir), "--cache-dir", str(cache_dir), "--no-progress")
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = {}
    for line in process.stdout:
        if line.startswith("Using device"):
            seconds["to_device_line"] = round(time.perf_counter() - start, 2)
        if line.startswith("Train Epoch"):
            seconds["to_first_step"] = round(time.perf_counter() - start, 2)
            break
    process.send_signal(signal.SIGINT)  # a stop as Ctrl-C: saves and exits
    process.wait(timeout=120)
    return seconds


def measure_startup(args) -> dict:
    """time_to_first_step with an empty compilation cache (cold), then with the one it filled (warm)."""
    source = ["--data-dir", args.data_dir] if args.data_dir else ["--idx-dir", args.idx_dir]
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        cold = time_to_first_step(source, cache, Path(tmp) / "cold")
        warm = time_to_first_step(source, cache, Path(tmp) / "warm")
    return {"startup_cold": cold, "startup_warm": warm}


def _timed(command: list[str], what: str) -> tuple[float, str]:
    start = time.perf_counter()
    result = run_or_exit(command, what)
    return time.perf_counter() - start, result.stdout


def compare_with_torch(args, workdir: Path) -> dict:
    """Whole runs, start to exit, alternating jaxmnist and the PyTorch script on the same data."""
    torch_root = workdir / "torch-data"
    raw = torch_root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for path in Path(args.idx_dir).glob("*-ubyte*"):  # torchvision wants them decompressed
        target = raw / path.name.removesuffix(".gz")
        target.write_bytes(gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes())
    runs = []
    for repeat in range(args.repeats):
        jax_workdir = workdir / f"jax-{repeat}"
        source = ["--data-dir", args.data_dir] if args.data_dir else ["--idx-dir", args.idx_dir]
        # --cold-cache: an empty cache for each run (no compiled programs, no decoded MNIST), as a first run has.
        cache = ["--cache-dir", str(workdir / f"cache-{repeat}")] if args.cold_cache else []
        jax_seconds, _ = _timed(train_command(*source, *cache, "--epochs", str(args.epochs or 5), "--workdir", str(jax_workdir)),
                                "jaxmnist's whole run")
        torch_seconds, torch_out = _timed([args.torch_python, str(TORCH_SCRIPT), "--root", str(torch_root),
                                           "--epochs", str(args.epochs or 5), "--save", str(workdir / "lab_best.pt")],
                                          "the PyTorch script")
        jax_records = [json.loads(line) for line in (jax_workdir / "metrics.jsonl").read_text().splitlines()]
        torch_summary = json.loads(torch_out.strip().splitlines()[-1])
        runs.append({
            "jaxmnist_seconds": round(jax_seconds, 2), "torch_seconds": round(torch_seconds, 2),
            "ratio": round(jax_seconds / torch_seconds, 3),
            "jaxmnist_accuracy": [r["test_accuracy"] for r in jax_records if r["kind"] == "epoch"],
            "torch_accuracy": [e["acc"] for e in torch_summary["epochs"]],
            "torch_train_seconds": sum(e["train_s"] for e in torch_summary["epochs"]),
        })
        print(json.dumps(runs[-1]), flush=True)
    return {"whole_runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idx-dir", help="MNIST IDX files (the PyTorch script reads these)")
    parser.add_argument("--data-dir", help="TFDS data directory: jaxmnist reads this when given")
    parser.add_argument("--recipe", default="lab", choices=tuple(RECIPES), help="the preset to train")
    parser.add_argument("--epochs", type=int, help="override the preset's epochs")
    parser.add_argument("--loop", default="auto", choices=("auto", "python", "device"))
    parser.add_argument("--precision", default="float32", choices=("float32", "tf32"))
    parser.add_argument("--deterministic", default=True, action=argparse.BooleanOptionalAction)
    parser.add_argument("--cache-dir", default="~/.cache/jaxmnist", help="the compilation cache ('' = off)")
    parser.add_argument("--limit", type=int, help="train on the first N training images only (a quick dry run)")
    parser.add_argument("--torch-python", help="a Python with torch + torchvision: also time the lab's script")
    parser.add_argument("--repeats", type=int, default=1, help="whole-run pairs with --torch-python")
    parser.add_argument("--cold-cache", action="store_true", help="with --torch-python: each jaxmnist run starts with an "
                        "empty cache (compiled programs, decoded MNIST), as the first run on a machine does")
    parser.add_argument("--startup", action="store_true", help="also time process start to the first step, cold and "
                        "warm compilation cache")
    parser.add_argument("--out", default="bench.json")
    args = parser.parse_args()
    if args.torch_python and not args.idx_dir:
        parser.error("--torch-python needs --idx-dir: the PyTorch script reads the IDX files.")
    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        flags = ["--recipe", args.recipe, "--loop", args.loop, "--precision", args.precision, "--cache-dir", args.cache_dir,
                 "--deterministic" if args.deterministic else "--no-deterministic",
                 "--workdir", str(workdir / "in-process"), *(["--epochs", str(args.epochs)] if args.epochs else []),
                 *(["--allow-small-data"] if args.limit else [])]
        config = parse_config(flags, prog="bench", description="")
        configure_jax(config)
        try:
            dataset = data.load(args.data_dir) if args.data_dir else data.load(idx_dir=args.idx_dir)
        except data.DataError as error:
            sys.exit(str(error))
        if args.limit:
            dataset = dataset._replace(train_images=dataset.train_images[:args.limit], train_labels=dataset.train_labels[:args.limit])
        result = measure_in_process(config, dataset)
        print(json.dumps(result, indent=1), flush=True)
        if args.startup:
            result |= measure_startup(args)
            print(json.dumps({k: result[k] for k in ("startup_cold", "startup_warm")}), flush=True)
        if args.torch_python:
            result |= compare_with_torch(args, workdir)
        shutil.rmtree(workdir, ignore_errors=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
