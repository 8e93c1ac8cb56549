"""The layers of the package, as docs/architecture.md draws them, hold in the code: the core
imports nothing from the runtime or the apps, the runtime nothing from the apps, and the core
touches no files, signals or processes."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "jaxmnist"
SHARED = {"jaxmnist.config", "jaxmnist.datasets", "jaxmnist.errors", "jaxmnist.files", "jaxmnist.metrics",
          "jaxmnist.ranking"}  # the recipe, the datasets' table, the error type, file helpers, metrics.jsonl, the best-epoch rule
SYSTEM = {"os", "sys", "signal", "subprocess", "multiprocessing", "threading", "pathlib", "shutil", "tempfile",
          "socket", "io", "json"}


def _modules(layer: str, package: Path = PACKAGE) -> list[Path]:
    return sorted((package / layer).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Every module path imports, at its top or inside a function; `from a import b` counts as a.b."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _violations(layer: str, allowed: tuple[str, ...], package: Path = PACKAGE) -> list[str]:
    """Imports of jaxmnist modules by the layer's files that are neither shared nor allowed."""
    out = []
    for path in _modules(layer, package):
        for name in sorted(_imports(path)):
            inside = name == "jaxmnist" or name.startswith("jaxmnist.")
            shared = any(name == module or name.startswith(module + ".") for module in SHARED)
            if inside and not shared and not name.startswith(allowed) and not _is_package_of(name, allowed):
                out.append(f"{path.relative_to(package.parent)} imports {name}")
    return out


def _is_package_of(name: str, allowed: tuple[str, ...]) -> bool:
    """`from jaxmnist.runtime import data` names jaxmnist.runtime itself as well: a package on the way."""
    return any(prefix.startswith(name + ".") for prefix in allowed)


def test_the_core_imports_nothing_above_it():
    assert _modules("core"), "no core package"
    assert _violations("core", ("jaxmnist.core.",)) == []


def test_the_runtime_imports_nothing_from_the_apps():
    assert _modules("runtime"), "no runtime package"
    assert _violations("runtime", ("jaxmnist.core.", "jaxmnist.runtime.", "jaxmnist.data")) == []


def test_the_data_layer_needs_neither_jax_nor_the_runtime():
    """jaxmnist/data.py turns files into uint8 arrays: a new dataset is added there without
    touching the driver, and the sweep's table and the plots read data without starting JAX."""
    imported = _imports(PACKAGE / "data.py")
    ours = {name for name in imported if name.startswith("jaxmnist.")}
    assert not any(name.split(".")[0] in ("jax", "jaxlib", "flax", "optax", "orbax") for name in imported)
    assert all(any(name == m or name.startswith(m + ".") for m in SHARED) for name in ours), ours


def test_the_core_touches_no_files_signals_or_processes():
    offenders = [f"{path.name} imports {name}" for path in _modules("core") for name in _imports(path)
                 if name.split(".")[0] in SYSTEM]
    assert offenders == []


def test_the_checker_sees_a_forbidden_import(tmp_path):
    """The tests above can fail: a core module that imports the runtime inside a function is reported."""
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "bad.py").write_text("from jaxmnist.core import steps\n\n\ndef f():\n"
                                               "    from jaxmnist.runtime import checkpoint\n")
    assert _violations("core", ("jaxmnist.core.",), tmp_path) == [
        f"{tmp_path.name}/core/bad.py imports jaxmnist.runtime", f"{tmp_path.name}/core/bad.py imports jaxmnist.runtime.checkpoint"]


def test_each_command_is_a_thin_entry_point_into_the_apps():
    for command in ("train", "evaluate", "predict", "export", "serve", "plot", "summary", "sweep"):
        text = (PACKAGE / f"{command}.py").read_text()
        assert f"cli.run(\"{command}\")" in text and len(text.splitlines()) <= 10, command


def test_the_architecture_page_names_every_module():
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    missing = [str(path.relative_to(PACKAGE)) for layer in ("core", "runtime", "apps") for path in _modules(layer)
               if path.name != "__init__.py" and str(path.relative_to(PACKAGE)) not in page
               and not (path.parent.name != layer and f"{path.parent.relative_to(PACKAGE)}/" in page)]  # a subpackage
    assert missing == []


CORE_BUDGET = 800  # lines: the core is read in one sitting


def test_the_core_stays_short_enough_to_read_in_one_sitting():
    lines = sum(len(path.read_text().splitlines()) for path in _modules("core"))
    assert lines <= CORE_BUDGET, f"the core has grown to {lines} lines; move what is not maths to the runtime"


RUNTIME_BUDGET = 1000  # non-blank lines: the driver around the core, made of Orbax and jax.distributed


def test_the_runtime_stays_within_its_budget_and_starts_no_process():
    """What is not the driver's (TensorBoard, the bar, metrics.jsonl, file helpers) lives beside it;
    and no runtime module starts a process (to filter its own output, say)."""
    lines = sum(1 for path in _modules("runtime") for line in path.read_text().splitlines() if line.strip())
    assert lines <= RUNTIME_BUDGET, f"the runtime has grown to {lines} non-blank lines"
    offenders = [f"{path.name} imports {name}" for path in _modules("runtime") for name in _imports(path)
                 if name.split(".")[0] in ("subprocess", "multiprocessing")]
    assert offenders == []
