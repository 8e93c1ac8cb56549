"""notebooks/lab.ipynb: stored clean, paired with its text form, and run top to bottom as a student
would run it, with its default settings; only where MNIST comes from is given (no network here)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import jupytext
import nbformat
from conftest import COMPILE_CACHE, SHARED_DATA, needs_real_mnist
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _cells(notebook) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]


def test_the_notebook_is_stored_without_outputs_and_matches_its_text_form():
    stored = nbformat.read(NOTEBOOKS / "lab.ipynb", as_version=4)
    for cell in stored.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"a stored output in: {cell.source[:60]}"
    text = jupytext.read(NOTEBOOKS / "lab.py")
    assert _cells(stored) == _cells(text), "lab.ipynb and lab.py differ: run `jupytext --sync notebooks/lab.py`"


@needs_real_mnist
def test_the_notebook_runs_top_to_bottom_and_reaches_98_percent(tmp_path, report):
    notebook = nbformat.read(NOTEBOOKS / "lab.ipynb", as_version=4)
    parameters = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    given = {"idx_dir": str(SHARED_DATA / "mnist-idx"), "cache_dir": str(COMPILE_CACHE)}  # offline, the suite's cache
    notebook.cells.insert(parameters + 1, nbformat.v4.new_code_cell(f"DATA = {given!r}"))
    started = time.perf_counter()
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    seconds = time.perf_counter() - started  # an error in any cell raised CellExecutionError above

    images = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
              if "image/png" in output.get("data", {})]
    assert len(images) >= 4, f"the notebook showed {len(images)} figures"
    epochs = [json.loads(line) for line in (tmp_path / "runs" / "notebook" / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "epoch"]
    assert len(epochs) == 1 and epochs[-1]["test_accuracy"] >= 98.0, epochs
    assert (tmp_path / "runs" / "notebook-hidden" / "metrics.jsonl").is_file()  # the registered copy trained too
    text = "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs)
    assert "read as 7" in text  # the digit drawn in code
    report(f"notebooks/lab.ipynb ran in {seconds:.0f} s, {len(images)} figures, test accuracy "
           f"{epochs[-1]['test_accuracy']:.2f}% after {len(epochs)} epoch")


def test_the_notebook_uses_the_api_and_the_api_page_documents_all_of_it():
    """Every api.X the notebook calls is public (jaxmnist.api.__all__), and docs/python-api.md
    describes every public name."""
    from jaxmnist import api

    used = set(re.findall(r"\bapi\.(\w+)", (NOTEBOOKS / "lab.py").read_text()))
    assert used and used <= set(api.__all__), used - set(api.__all__)
    page = (NOTEBOOKS.parent / "docs" / "python-api.md").read_text()
    assert [name for name in api.__all__ if f"api.{name}" not in page] == []
