"""`python -m jaxmnist.export`: a trained model that runs without this package.

    python -m jaxmnist.export --workdir runs/mnist --out exported [--step best] [--onnx]

Writes the chosen checkpoint's forward pass, uint8 images [N, 28, 28] in (white digits on black,
as MNIST's) and probabilities [N, classes] out, the normalization inside; export.json names the classes:
    mnist.jaxexport  a serialized jax.export artifact for CPU and CUDA, any batch size
                     (jax.export.deserialize(...).call(images) with jax alone)
    mnist.onnx       with --onnx: the same function through jax2onnx (pip install -e ".[onnx]"),
                     checked with onnxruntime against JAX's probabilities
    export.json      which run and step they came from, and the versions that made them
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

from jaxmnist.config import checkpoint_parser
from jaxmnist.errors import UserError
from jaxmnist.runtime.reporting import log, package_version
from jaxmnist.apps.console import run_command, setup_console
from jaxmnist.files import check_path_argument
from jaxmnist.files import sync_folder

ARTIFACT = "mnist.jaxexport"
ONNX_FILE = "mnist.onnx"
PLATFORMS = ("cpu", "cuda")
ONNX_TOLERANCE = 1e-5  # largest difference in a probability allowed between onnxruntime and JAX


class ExportError(UserError):
    """The model cannot be exported as asked; the message is one sentence."""


def probabilities_function(model, variables) -> Callable:
    """uint8 images [N, 28, 28] -> probabilities [N, classes], with the variables inside. Traced with
    the layers' textbook forms (not the CPU's fast one), so that one artifact lowers for every
    platform and converters meet plain lax primitives only."""
    import jax

    from jaxmnist.core.augment import normalize
    from jaxmnist.core.models.layers import textbook_forms

    def probabilities(images):
        with textbook_forms():
            return jax.nn.softmax(model.apply(variables, normalize(images)))

    return probabilities


def export_model(workdir: str | Path, out: str | Path, step: str = "best", onnx: bool = False) -> dict[str, Any]:
    """Write the artifacts of one checkpoint into out; returns what export.json records."""
    import jax
    import jax.numpy as jnp
    from jax import export

    from jaxmnist.apps.evaluate import class_names, dataset_name, restore_model

    check_path_argument("--out", str(out))
    _check_out(out)
    out = Path(out)
    model, variables, meta, number = restore_model(workdir, step)
    forward = probabilities_function(model, variables)
    (batch,) = export.symbolic_shape("batch")
    with jax.default_matmul_precision("highest"):  # the float32 arithmetic the model was trained in
        exported = export.export(jax.jit(forward), platforms=PLATFORMS)(jax.ShapeDtypeStruct((batch, 28, 28), jnp.uint8))
    record = {
        "workdir": str(Path(workdir).absolute()), "step": number, "epoch": meta["epoch"],
        "test_accuracy": meta.get("test_accuracy"), "data": meta.get("data"),
        "dataset": dataset_name(meta),
        "input": "uint8 [N, 28, 28], white on black and upright as the run's dataset's images (EMNIST's files store "
                 "them transposed: transpose those first)",
        "output": f"float32 [N, {len(class_names(meta))}] probabilities, one per class in the order of classes "
                  "(label numbers from 0: EMNIST Letters' files number A as 1)",
        "classes": list(class_names(meta)),
        "jax_export": {"file": ARTIFACT, "platforms": list(PLATFORMS), "jax": jax.__version__,
                       "calling_convention_version": exported.calling_convention_version},
    }

    def write(folder: Path) -> None:
        (folder / ARTIFACT).write_bytes(exported.serialize())
        if onnx:
            record["onnx"] = _export_onnx(forward, folder / ONNX_FILE)
        (folder / "export.json").write_text(json.dumps(record, indent=1) + "\n")

    try:
        _write_as_one(out, write)
    except OSError as error:
        raise ExportError(f"--out {out} cannot be written ({error.strerror}); an export there before is "
                          "unchanged.") from None
    return record


def _write_as_one(out: Path, write: Callable[[Path], None]) -> None:
    """Let write fill a new folder beside out, then put that folder in out's place: a failure while
    writing leaves the previous export whole. (A kill between the two renames of a replacement
    leaves the previous export in .<out>.previous beside it.)"""
    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    new, previous = out.with_name(f".{out.name}.partial"), out.with_name(f".{out.name}.previous")
    for leftover in (new, previous):  # of an export killed mid-way: ours by name, never the export itself
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        new.mkdir()
        write(new)
        for file in new.iterdir():
            with file.open("rb") as handle:
                os.fsync(handle.fileno())  # the files are on the disk before they become the export
        if out.is_dir() and any(out.iterdir()):
            out.rename(previous)
            try:
                new.rename(out)
            except OSError:
                previous.rename(out)
                raise
            shutil.rmtree(previous)
        else:
            new.replace(out)  # a new or empty folder: one rename
        sync_folder(out.parent)
    finally:
        shutil.rmtree(new, ignore_errors=True)


def _check_out(out: str | Path) -> None:
    """--out must be a new or empty folder, or one this command wrote before (which it replaces):
    nothing of the user's is overwritten."""
    check_path_argument("--out", str(out), required=True)
    out = Path(out)
    if out.is_symlink():
        raise ExportError(f"--out {out} is a symbolic link; give the folder itself.")
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file, not a folder.")
    if out.is_dir() and any(out.iterdir()):
        try:
            ours = "jax_export" in json.loads((out / "export.json").read_text())
        except (OSError, ValueError, TypeError):
            ours = False
        strangers = [p.name for p in out.iterdir() if p.name not in (ARTIFACT, ONNX_FILE, "export.json")]
        if not ours or strangers:
            raise ExportError(f"--out {out} holds files this command did not write; give an empty or new folder.")


def _export_onnx(forward: Callable, path: Path) -> dict[str, Any]:
    """Convert with jax2onnx, then check onnxruntime against JAX on MNIST-like inputs."""
    for noisy in ("jax2onnx", "onnx_ir"):  # warnings about plugins and metadata this model does not use
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        import jax2onnx
        import onnxruntime
    except ImportError:
        raise ExportError("--onnx needs jax2onnx and onnxruntime: pip install -e '.[onnx]' in the jaxmnist checkout.") from None
    import jax
    import jax.numpy as jnp
    import numpy as np

    with jax.default_matmul_precision("highest"), contextlib.redirect_stdout(io.StringIO()):  # its debug prints
        model = jax2onnx.to_onnx(forward, [jax.ShapeDtypeStruct(("N", 28, 28), jnp.uint8)], model_name="jaxmnist",
                                 input_names=["images"], output_names=["probabilities"])
        path.write_bytes(model.SerializeToString())
        images = np.asarray(jax.random.randint(jax.random.key(0), (64, 28, 28), 0, 256), np.uint8)
        expected = np.asarray(forward(images))
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its shape-merging notes about the converted layout are noise here
    runtime = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = runtime.run(None, {runtime.get_inputs()[0].name: images})[0]
    difference = float(np.abs(got - expected).max())
    if difference > ONNX_TOLERANCE:
        raise ExportError(f"The ONNX model differs from JAX by {difference:.2e} in a probability (allowed: "
                          f"{ONNX_TOLERANCE:g}), so it was not written.")
    return {"file": path.name, "jax2onnx": package_version("jax2onnx"), "onnxruntime": onnxruntime.__version__,
            "max_abs_difference_vs_jax": difference, "checked_on": "64 random uint8 images"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = checkpoint_parser(prog="python -m jaxmnist.export", description="Export a trained model to run without "
                           "jaxmnist: a jax.export artifact, and ONNX with --onnx.")
    parser.add_argument("--out", required=True, help="the folder to write the artifacts into")
    parser.add_argument("--onnx", action="store_true", help="also write mnist.onnx (needs jaxmnist[onnx])")
    args = parser.parse_args(argv)
    setup_console()
    return run_command(lambda: _export_and_report(args))


def _export_and_report(args) -> None:
    record = export_model(args.workdir, args.out, args.step, args.onnx)
    # The export is whole on disk now: a Ctrl-C while it is reported would only turn success into
    # "Stopped." and 130, so it waits until the report is out.
    with _sigint_held():
        _report(args, record)


@contextlib.contextmanager
def _sigint_held():
    """Ctrl-C is ignored inside (in the main thread; elsewhere signals never arrive)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _report(args, record) -> None:
    written = [ARTIFACT] + ([ONNX_FILE] if "onnx" in record else []) + ["export.json"]
    log.info("Exported step %d (epoch %d) of %s to %s: %s", record["step"], record["epoch"], args.workdir, args.out,
             ", ".join(written))
    if "onnx" in record:
        log.info("onnxruntime agrees with JAX to %.1e.", record["onnx"]["max_abs_difference_vs_jax"])
