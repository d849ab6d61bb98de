"""The notebooks run headless, top to bottom, without error (slow: ``pytest --runslow``).

``IRMX_REFRESH_NOTEBOOKS=1 pytest --runslow tests/test_notebooks.py`` also writes the executed
notebooks (with their outputs) back to notebooks/, as they are committed.

The kernel is ``python3``. jupyter_client starts it with the interpreter running pytest
(``sys.executable``, e.g. ``.venv/bin/python``): both the kernelspec that ipykernel installs into
the venv and ipykernel's built-in one launch ``python -m ipykernel_launcher``, and jupyter_client
replaces a bare ``python`` with ``sys.executable``. The test checks that, so a kernel from another
environment cannot pass (or fail) for the wrong reason.
"""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_DIR = os.path.join(ROOT, "notebooks")
CELL_TIMEOUT_S = 600


def _execute(name: str):
    """Execute ``notebooks/<name>`` in a fresh python3 kernel (cwd = notebooks/); returns the
    executed notebook and the kernel's ``sys.prefix``."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)
    probe = nbformat.v4.new_code_cell("import sys; print(sys.prefix)")
    nb.cells.append(probe)
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        startup_timeout=180,
        kernel_name="python3",
        resources={"metadata": {"path": NOTEBOOK_DIR}},
    )
    client.execute()  # raises CellExecutionError (with the cell and traceback) on any error
    prefix = _text(nb.cells.pop()).strip()
    if os.environ.get("IRMX_REFRESH_NOTEBOOKS"):  # commit the notebooks with their outputs
        nbformat.write(nb, os.path.join(NOTEBOOK_DIR, name))
    return nb, prefix


def _text(cell) -> str:
    """All text a code cell printed or returned (streams, results, display data)."""
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("execute_result", "display_data"):
            parts.append(out.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def _run_checked(name: str):
    """Execute notebook ``name`` in this environment; its code cells and displayed images, after
    checking that every cell ran without error."""
    nb, kernel_prefix = _execute(name)
    assert kernel_prefix == sys.prefix, (
        f"the notebook ran in {kernel_prefix}, not in this environment ({sys.prefix})"
    )
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code_cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    assert all(c.get("execution_count") for c in code_cells), "a cell did not run"
    images = [o for c in code_cells for o in c.get("outputs", [])
              if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    return code_cells, images


@pytest.mark.slow
def test_irm_regression_notebook():
    from irmx.configs.irm.regression import EXPERIMENTS

    code_cells, images = _run_checked("irm_regression.ipynb")
    tables = [c for c in code_cells if "study-table" in c.metadata.get("tags", [])]
    assert len(tables) == 1, "the notebook should have one cell tagged 'study-table'"
    table = _text(tables[0])
    missing = [name for name in EXPERIMENTS if name not in table]
    assert not missing, f"experiments {missing} missing from the study table:\n{table}"
    assert len(images) >= 2, "the study's plots were not displayed"


@pytest.mark.slow
def test_measures_notebook():
    code_cells, images = _run_checked("measures.ipynb")
    text = "".join(_text(c) for c in code_cells)
    for mode in ("per_output", "bigmem", "matrix_free"):
        assert mode in text, f"mode {mode} missing from the comparison:\n{text}"
    assert "jacobian_operator_norm" in text and "corrupted" in text
    assert len(images) >= 3, "the data, label-noise and width plots were not displayed"
    workdirs = [line.split(":", 1)[1].strip() for line in text.splitlines()
                if line.startswith("workdir:")]
    assert len(workdirs) == 1 and not os.path.exists(workdirs[0]), "temp dir not cleaned up"


@pytest.mark.slow
def test_hypergrad_notebook():
    code_cells, images = _run_checked("hypergrad.ipynb")
    text = "".join(_text(c) for c in code_cells)
    assert "closed form" in text and "Neumann, K = 3000" in text
    tables = [c for c in code_cells if "compare-table" in c.metadata.get("tags", [])]
    assert len(tables) == 1
    for name in ("random_3batched", "bayesopt", "lorraine", "baydin", "ours_hdlr_momentum",
                 "diff_through_opt"):
        assert name in _text(tables[0]), name
    assert len(images) >= 3, "the Neumann, trajectory and compare plots were not displayed"
    workdirs = [line.split(":", 1)[1].strip() for line in text.splitlines()
                if line.startswith("workdir:")]
    assert len(workdirs) == 1 and not os.path.exists(workdirs[0]), "temp dir not cleaned up"
