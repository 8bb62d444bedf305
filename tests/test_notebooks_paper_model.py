"""Notebooks 00-07 on a paper model's local directory (issue 16 §4: the notebooks run on a paper model when its
weights directory is given, with no code change). The directory is a tiny random-init PixArt-α copy found
through `QSD_MODELS_DIR` like real weights, with COCO captions, a real-image FID reference folder, FID
Inception weights and a CLIP model beside it. Each notebook's own code cells run in this process, after its
parameters cell and the injected parameters (what papermill does in a kernel), so that the registry entry's
resolution can be shrunk: the tiny VAE has a 2× factor, so at 512 px its latents would be 256×256."""

import dataclasses
from pathlib import Path

import matplotlib
import nbformat
import numpy as np
import pytest
import tiny_fixtures
import torch
from IPython.display import display
from PIL import Image
from test_real_metrics import random_inception

from qsd.models import registry
from qsd.packed.export import read_export
from qsd.stages.final_comparison import plot_grid

MODEL_ID = "pixart_alpha"
CHECKOUT = Path(__file__).parents[1]
NOTEBOOKS = sorted((CHECKOUT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
OVERRIDES = {  # notebook parameters that keep the run small (on top of smoke=True)
    "01": {"damage_options": []},
    "02": {"n_configs": 2, "test_configs": 0, "n_images": 8, "steps": 2},
    "03": {"compare_losses": False, "compare_readout": False},
    "05": {"budgets": [3.4, 4.0], "search_rounds": 0},  # a smoke run builds 3.4 and 4.0
    "06": {"budgets": [3.4], "w3x_budget": 3.4, "baselines": ["rtn", "dmq"], "baseline_a_bits": [6],
           "qsd_a_bits": [6], "dmq_a_bits": [], "variants": [], "conventions": ["released"]},  # the smoke run has them
    "07": {"w3x_budget": 3.4},
}


@pytest.fixture
def paper_weights(tmp_path, monkeypatch):
    """`QSD_MODELS_DIR` laid out as docs/models.md asks for real weights; runs go under `tmp_path`."""
    models = tmp_path / "models"
    tiny_fixtures.tiny_paper_dir(MODEL_ID, models / MODEL_ID)
    (models / "coco_captions.txt").write_text("\n".join(tiny_fixtures.CAPTIONS * 8) + "\n")
    reference = models / "fid_reference" / registry.ENTRIES[MODEL_ID].fid_reference
    reference.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(reference / f"{i}.png")
    torch.save(random_inception().state_dict(), models / "inception.pth")
    monkeypatch.setenv("QSD_MODELS_DIR", str(models))
    monkeypatch.setenv("QSD_INCEPTION_WEIGHTS", str(models / "inception.pth"))
    monkeypatch.setenv("QSD_ROOT", str(tmp_path))
    monkeypatch.setenv("QSD_KERNEL_CACHE", str(CHECKOUT / "build" / "kernels"))  # not a second compile under tmp_path
    entry = registry.ENTRIES[MODEL_ID]
    monkeypatch.setitem(registry.ENTRIES, MODEL_ID,
                        dataclasses.replace(entry, sampler=dataclasses.replace(entry.sampler, resolution=16)))
    matplotlib.use("Agg")
    return tmp_path


def run_notebook(path: Path, parameters: dict) -> dict:
    """Execute the notebook's code cells in order, `parameters` injected after its parameters cell; returns
    the namespace."""
    namespace: dict = {"display": display}
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        exec(compile(cell.source, f"{path.name}", "exec"), namespace)
        if "parameters" in cell.metadata.get("tags", []):
            namespace.update(parameters)
    return namespace


def test_every_notebook_runs_on_a_paper_model_directory(paper_weights):
    clip_dir = tiny_fixtures.tiny_clip_dir(paper_weights / "clip", seed=3)
    results = {}
    for path in NOTEBOOKS:
        number = path.name[:2]
        parameters = {"model_id": MODEL_ID, "run_id": "paper", "smoke": True, **OVERRIDES.get(number, {})}
        if number == "02":
            parameters["clip_dir"] = str(clip_dir)
        results[number] = run_notebook(path, parameters)["result"]
    assert len(results) == 8 and not results["00"].summary["trained"]
    labels = results["02"].labels
    assert labels["clip_score"].notna().all() and labels["fid"].notna().all()
    assert set(results["05"].constructions["budget"].dropna()) >= {3.4, 4.0}
    final = results["06"]
    assert {"float", "baseline", "qsd"} <= set(final.table["family"])
    assert final.table["clip_score"].notna().all() and final.table["fid_mean"].notna().all()
    assert final.summary["best_baseline_w4a6"] in {"RTN", "DMQ"} and (final.directory / "comparison.csv").is_file()
    assert len(final.packed) == 1
    grid = plot_grid(final).axes[0].images[0].get_array()
    assert grid.shape[-1] == 3 and np.ptp(grid[..., 0] - grid[..., 2]) > 0  # RGB samples drawn in colour
    assert final.packed["packed_layers_mib"].iloc[0] < final.packed["fp16_layers_mib"].iloc[0]
    exported = results["07"]
    meta, _ = read_export(exported.directory / f"{MODEL_ID}_packed.safetensors")
    assert meta["model_id"] == MODEL_ID and meta["quant_config"] == exported.config.to_json()
