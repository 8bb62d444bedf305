"""Notebook rules (DESIGN.md principle 5) and the papermill smoke run of every notebook.

The smoke run writes executed notebooks to build/smoke/, which `make test` then checks with nbval.
"""

import ast
import shutil
from pathlib import Path

import nbformat
import papermill
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SMOKE_DIR = ROOT / "build" / "smoke"
REQUIRED_PARAMETERS = {"model_id", "seed", "smoke"}
SMOKE_RUN_ID = "smoke"


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_there_are_notebooks():
    assert NOTEBOOKS and NOTEBOOKS[0].name.startswith("0")


def test_notebooks_are_numbered_in_sequence():
    numbers = [int(p.name[:2]) for p in NOTEBOOKS]
    assert len(set(numbers)) == len(numbers)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_structure(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), "title cell first"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    names = set()
    for node in ast.parse(tagged[0].source).body:
        assert isinstance(node, ast.AnnAssign) and node.value is not None, (
            "parameters: one `name: type = literal  # help` a line"
        )
        ast.literal_eval(node.value)  # raises on anything but a literal
        names.add(node.target.id)
    assert REQUIRED_PARAMETERS <= names
    for cell in code_cells(nb):
        assert not cell.outputs, "commit notebooks without outputs"
        for node in ast.walk(ast.parse(cell.source)):
            assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)), (
                "no def/class/lambda in notebooks: put code in qsd.stages"
            )
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "savefig":
                pytest.fail("figures are written only by qsd.plotting.savefig (inside qsd.stages)")
        assert "import matplotlib" not in cell.source or "qsd" in cell.source


def parameter_names(nb) -> list[str]:
    """The names the `parameters` cell assigns, in order."""
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    return [node.target.id for node in ast.parse(cell.source).body]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_parameter_has_help(path):
    """`papermill --help-notebook` documents every parameter: each one carries a type and a trailing comment (help),
    and none is lost to papermill's parser (which skips a line with a second `=`, e.g. inside the comment)."""
    inspected = papermill.inspect_notebook(str(path))
    assert list(inspected) == parameter_names(nbformat.read(path, as_version=4)), "papermill must see every parameter"
    untyped = [name for name, parameter in inspected.items() if parameter["inferred_type_name"] == "None"]
    assert not untyped, f"parameters without a type annotation: {untyped}"
    missing = [name for name, parameter in inspected.items() if not parameter["help"].strip()]
    assert not missing, f"parameters without a trailing `# help` comment: {missing}"


def clear_smoke_runs() -> None:
    """Remove earlier smoke outputs (possibly of an older protocol) of every model."""
    for directory in (ROOT / "data" / "runs").glob(f"*/{SMOKE_RUN_ID}"):
        shutil.rmtree(directory)


def execute_smoke(path: Path) -> nbformat.NotebookNode:
    """Execute notebook `path` with smoke=True (tiny sizes) and the run_id 'smoke' into build/smoke/; returns the
    executed notebook. Its stage writes to data/runs/<model_id>/smoke/<NN_stage>/."""
    SMOKE_DIR.mkdir(parents=True, exist_ok=True)
    out = SMOKE_DIR / path.name
    papermill.execute_notebook(
        str(path), str(out), parameters={"smoke": True, "run_id": SMOKE_RUN_ID}, cwd=str(ROOT),
        kernel_name="python3", progress_bar=False,
    )
    return nbformat.read(out, as_version=4)


@pytest.fixture(scope="module")
def fresh_smoke_runs():
    """Smoke runs start from nothing: earlier smoke outputs are removed once, then the notebooks build on each
    other's outputs in order."""
    clear_smoke_runs()


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_smoke_run(path, fresh_smoke_runs):
    """Execute with smoke=True (tiny sizes) into build/smoke/ and the run_id 'smoke'."""
    nb = execute_smoke(path)
    errors = [o for c in code_cells(nb) for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert all(c.execution_count for c in code_cells(nb))
